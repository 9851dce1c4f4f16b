"""`python -m depo_trl.evaluation --model NAME_OR_PATH [--model ...] --tasks TASKS --backend vllm|hf ...`"""

from ..user_errors import (
    ArgumentParser,
    check_model_source,
    positive_int,
    reports_usage_errors,
    require_folder,
    writable_folder,
)
from .runner import EvalSettings, run
from .scoring import SCORING_MODES
from .tasks import PROMPT_STYLES, parse_tasks


@reports_usage_errors("python -m depo_trl.evaluation")
def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m depo_trl.evaluation", description=__doc__)
    parser.add_argument("--model", action="append", required=True, help="Hub id or path; repeat for several.")
    parser.add_argument(
        "--tasks",
        required=True,
        help="Comma-separated: docmath, frames, 2wikimqa, hotpotqa, musique, "
        "longbench_{2wikimqa,hotpotqa,musique,narrativeqa,qasper}, longbench_v2, ruler_qa_{4k,8k,16k,32k}, or the "
        "groups moderate, extended, table2 (both: the paper's Table 2), ruler, all.",
    )
    parser.add_argument("--backend", choices=["vllm", "hf"], default="vllm")
    parser.add_argument(
        "--max-length",
        type=int,
        default=32768,
        help="Prompt + answer budget; longer prompts are truncated in the middle, as LongBench does.",
    )
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--limit", type=positive_int, default=None, help="Only the first N examples of each task.")
    parser.add_argument(
        "--data-dir",
        default=None,
        help="The benchmark files (docs/evaluation.md lists them; python -m depo_trl.evaluation.fetch fetches them).",
    )
    parser.add_argument(
        "--prompt-style",
        choices=list(PROMPT_STYLES),
        default="depo",
        help="'depo': the training template (ends with 'Therefore, the answer is'); 'longbench': LongBench's own "
        "prompts. DocMath, Frames and LongBench v2 are asked one way whatever this says.",
    )
    parser.add_argument(
        "--scoring",
        choices=list(SCORING_MODES),
        default="official",
        help="The scores results.md shows: 'official' (each benchmark's own evaluation code, comparable with "
        "published numbers) or 'lenient' (the training rewards' reading). Both are in scores.json; switching "
        "re-scores the predictions on disk without generating.",
    )
    parser.add_argument(
        "--max-new-tokens",
        type=positive_int,
        default=None,
        help="Default: the task's own: 1024 in the template (depo), LongBench's for its prompts, 128 for LongBench "
        "v2.",
    )
    parser.add_argument("--batch-size", type=positive_int, default=8, help="hf backend batch size.")
    args = parser.parse_args(argv)
    if args.data_dir is not None:
        fetch = f"python -m depo_trl.evaluation.fetch --data-dir {args.data_dir}"
        require_folder(
            "--data-dir", args.data_dir, f"pass the folder that holds the benchmark files, or fill it: {fetch}"
        )
    writable_folder("--output-dir", args.output_dir)
    for model in args.model:
        check_model_source("--model", model)
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
        scoring=args.scoring,
    )
    run(args.model, settings)
    with open(f"{args.output_dir}/results.md") as handle:
        print(handle.read())


if __name__ == "__main__":
    main()
