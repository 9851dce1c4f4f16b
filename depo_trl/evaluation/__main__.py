"""`python -m depo_trl.evaluation --model NAME_OR_PATH [--model ...] --tasks TASKS --backend vllm|hf ...`"""

import argparse
import sys

from .runner import EvalSettings, parse_tasks, run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m depo_trl.evaluation", description=__doc__)
    parser.add_argument("--model", action="append", required=True, help="Hub id or path; repeat for several.")
    parser.add_argument(
        "--tasks",
        required=True,
        help="Comma-separated: hotpotqa, 2wikimqa, musique, longbench_{hotpotqa,2wikimqa,musique,narrativeqa,qasper}, "
        "ruler_qa_{4k,8k,16k,32k}, or the groups moderate, extended, ruler, all.",
    )
    parser.add_argument("--backend", choices=["vllm", "hf"], default="vllm")
    parser.add_argument(
        "--max-length",
        type=int,
        default=32768,
        help="Prompt + answer budget; longer prompts are truncated in the middle, as LongBench does.",
    )
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--limit", type=int, default=None, help="Only the first N examples of each task.")
    parser.add_argument("--data-dir", default=None, help="LongBench files (hotpotqa.jsonl, ...) and dev sets.")
    parser.add_argument(
        "--prompt-style",
        choices=["depo", "longbench"],
        default="depo",
        help="'depo': DESIGN.md's template (ends with 'Therefore, the answer is'); 'longbench': "
        "LongBench's own prompts.",
    )
    parser.add_argument("--max-new-tokens", type=int, default=None, help="Default: 1024 (depo) or LongBench's.")
    parser.add_argument("--batch-size", type=int, default=8, help="hf backend batch size.")
    args = parser.parse_args(argv)
    try:
        settings = EvalSettings(
            tasks=parse_tasks(args.tasks),
            backend=args.backend,
            max_length=args.max_length,
            output_dir=args.output_dir,
            limit=args.limit,
            data_dir=args.data_dir,
            prompt_style=args.prompt_style,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
        )
        run(args.model, settings)
    except ValueError as error:
        sys.exit(f"error: {error}")
    with open(f"{args.output_dir}/results.md") as handle:
        print(handle.read())


if __name__ == "__main__":
    main()
