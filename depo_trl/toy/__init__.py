"""The toy world: DePO end to end on a laptop CPU, small enough to see the method work before renting GPUs.

- `world`: seeded synthetic long-context QA rows (short and long contexts around one question), the word-level
  tokenizer, the chance baseline (`python -m depo_trl.toy.world`);
- `warm_start`: the SFT warm start, good on short contexts and poor on long ones, shipped in `shipped_warm_start/`
  with its settings and figures (`make toy-warm-start` remakes it);
- `training`: the paper's arms through `DePOTrainer`, exact-match evaluation (also during a run);
- `demo`: `make demo` (`python -m depo_trl.toy.demo`), one arm from the warm start, EM before and after;
- `comparison`: `make toy-compare` (`python -m depo_trl.toy.comparison`), the paper's comparisons at toy scale, with
  confidence intervals, and its length and lambda sweeps;
- `assets`: the rows `recipes/tiny/` trains the warm start on (`make tiny-assets`).
"""
