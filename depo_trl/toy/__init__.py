"""The toy world: DePO end to end on a laptop CPU, small enough to see the method work before renting GPUs.

- `world`: seeded synthetic long-context QA rows (short and long contexts around one question), the word-level
  tokenizer, the chance baseline (`python -m depo_trl.toy.world`);
- `training`: the warm start (SFT), the paper's arms through `DePOTrainer`, exact-match evaluation;
- `demo`: `make demo` (`python -m depo_trl.toy.demo`), one arm from the warm start, EM before and after;
- `benchmark`: `make toy-benchmark` (`python -m depo_trl.toy.benchmark`), the paper's comparisons at toy scale;
- `assets`: the tiny model and rows `recipes/tiny/` runs on (`make tiny-assets`).
"""
