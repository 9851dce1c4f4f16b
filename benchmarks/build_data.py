"""Data-builder throughput at the paper's budgets (short 1536 / long 15360 tokens) with a real BPE tokenizer.

    python benchmarks/build_data.py [--tokenizer DIR] [--input FILE] [--repeat N]

Defaults: the repository's MuSiQue sample (`tests/fixtures/musique_sample.jsonl`) and a byte-level BPE trained here
on it, so it runs anywhere, offline. The figure in docs/training-data.md is the Qwen2 tokenizer on a 100-record
MuSiQue sample: `--tokenizer` a tokenizer folder or Hub id (e.g. Qwen/Qwen2.5-7B-Instruct), `--input` a MuSiQue
JSON-lines file.
`--repeat` builds the rows N times under different ids, to time more rows over the same paragraph pool. Prints rows
per second (a benchmark, not a test).
"""

import os
import time

from tokenizers import ByteLevelBPETokenizer
from transformers import PreTrainedTokenizerFast

from depo_trl.data.builder import ContextBuilder, length_statistics
from depo_trl.data.sources import adapt, read_records
from depo_trl.model_utils import load_tokenizer
from depo_trl.models.tiny import CHATML_TEMPLATE
from depo_trl.user_errors import ArgumentParser, check_model_source, positive_int, reports_usage_errors, require_file


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "tests", "fixtures", "musique_sample.jsonl")


def local_bpe(texts: list[str]) -> PreTrainedTokenizerFast:
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=8000, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


@reports_usage_errors("python benchmarks/build_data.py")
def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python benchmarks/build_data.py", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tokenizer",
        default=None,
        help="A tokenizer folder or Hub id. Default: a byte-level BPE trained on the input.",
    )
    parser.add_argument("--input", default=SAMPLE, help="MuSiQue JSON lines. Default: the repository's sample.")
    parser.add_argument("--repeat", type=positive_int, default=3)
    args = parser.parse_args(argv)
    require_file("--input", args.input)
    if args.tokenizer is not None:
        check_model_source("--tokenizer", args.tokenizer, what="tokenizer")
    examples, _ = adapt("musique", read_records(args.input))
    if args.tokenizer is not None:
        tokenizer, tokenizer_name = load_tokenizer(args.tokenizer), args.tokenizer
    else:
        texts = [p.text for example in examples for p in (*example.gold, *example.own_distractors)]
        tokenizer, tokenizer_name = local_bpe(texts), "byte-level BPE trained on the input"

    start = time.perf_counter()
    builder = ContextBuilder(tokenizer, examples, short_budget=1536, long_budget=15360, seed=0)
    pool_seconds = time.perf_counter() - start
    batch = [
        type(example)(f"{example.id}#{copy}", example.question, example.answers, example.gold, example.own_distractors)
        for copy in range(args.repeat)
        for example in examples
    ]
    start = time.perf_counter()
    rows, report = builder.build(batch, show_progress=False)
    build_seconds = time.perf_counter() - start
    print(f"tokenizer: {tokenizer_name}")
    print(f"input: {args.input} ({len(examples)} records, pool of {len(builder.pool)} paragraphs)")
    print(f"pool token counting: {pool_seconds:.2f} s")
    print(f"statistics: {length_statistics(rows)} skipped: {report.skipped}")
    print(f"built {len(rows)} rows in {build_seconds:.2f} s")
    print(f"rows_per_second={len(rows) / build_seconds:.1f}")


if __name__ == "__main__":
    main()
