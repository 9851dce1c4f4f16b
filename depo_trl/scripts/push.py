"""Push a finished run to the Hugging Face Hub.

    python -m depo_trl.scripts.push --run-dir runs/tiny/depo --hub-model-id you/tiny-depo --dry-run
    python -m depo_trl.scripts.push --run-dir runs/tiny/depo --hub-model-id you/tiny-depo [--private]

Sends what `depo-train --push_to_hub true` sends at the end of training (`depo_trl.hub`): the model, its tokenizer and
chat template, the model card (DePO's settings and the recipe), the training arguments and state, TRL's completion
logs; not the checkpoints (optimizer states) nor the vLLM weight sync. `--dry-run` lists both sides and sends nothing.
Log in first with `hf auth login` (or set HF_TOKEN).
"""

import fnmatch
import os
from collections import Counter

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from ..hub import LEFT_OUT, check_push, push_run, upload_plan
from ..user_errors import ArgumentParser, UsageError, reports_usage_errors, require_folder


PROG = "python -m depo_trl.scripts.push"
# A saved model (or a PEFT adapter): what `save_model` writes at the end of training
MODEL_CONFIGS = ("config.json", "adapter_config.json")


def size(num_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if num_bytes < 1024 or unit == "GiB":
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024


def describe(run_dir: str, repo_id: str) -> str:
    """What a push of `run_dir` sends (each file with its size) and leaves out (by top-level folder, with why)."""
    sent, left_out = upload_plan(run_dir)
    sizes = {name: os.path.getsize(os.path.join(run_dir, name)) for name in sent}
    width = max(map(len, sent), default=0)
    lines = [f"{run_dir} -> https://huggingface.co/{repo_id}: {len(sent)} files, {size(sum(sizes.values()))}"]
    lines += [f"  {name:<{width}}  {size(sizes[name]):>10}" for name in sent]
    left_out_by_top = Counter(name.split("/")[0] for name in left_out)
    if left_out_by_top:
        lines.append("left out:")
    for top, count in sorted(left_out_by_top.items()):
        why = next(
            (why for pattern, why in LEFT_OUT.items() if fnmatch.fnmatchcase(top, pattern)), "the Hub's own exclusions"
        )
        lines.append(f"  {top}{'' if top in left_out else '/'} ({count} file{'s' if count > 1 else ''}: {why})")
    return "\n".join(lines)


@reports_usage_errors(PROG)
def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True, help="A training output_dir with its saved model.")
    parser.add_argument("--hub-model-id", required=True, help="The model repository: you/name (or name, in yours).")
    parser.add_argument("--private", action="store_true", help="Create the repository private (if it is new).")
    parser.add_argument("--commit-message", default="", help="The commit's message.")
    parser.add_argument("--dry-run", action="store_true", help="List what would be sent and left out; send nothing.")
    args = parser.parse_args(argv)
    run_dir = require_folder("--run-dir", args.run_dir, "pass the output_dir of a finished run")
    if not any(os.path.isfile(os.path.join(run_dir, name)) for name in MODEL_CONFIGS):
        raise UsageError(
            f"--run-dir {run_dir}: no saved model ({' or '.join(MODEL_CONFIGS)}); pass the output_dir of a run that "
            "finished (training saves the model there at the end)."
        )
    try:
        validate_repo_id(args.hub_model_id)
    except HFValidationError as error:
        reason = " ".join(str(error).split())[:200]
        raise UsageError(
            f"--hub-model-id {args.hub_model_id}: not a repository id ({reason}); use you/name."
        ) from None
    if args.dry_run:
        print(describe(run_dir, args.hub_model_id))
        print("Dry run: nothing was sent (a push checks the login first: hf auth login, or HF_TOKEN).")
        return
    user = check_push(f"--hub-model-id {args.hub_model_id}", args.hub_model_id)
    repo_id = args.hub_model_id if "/" in args.hub_model_id else f"{user}/{args.hub_model_id}"
    print(describe(run_dir, repo_id))
    try:
        commit = push_run(run_dir, repo_id, private=args.private or None, message=args.commit_message)
    except Exception as error:  # the Hub's refusal or the network, after the checks passed
        reason = " ".join(str(error).split())[:200] or type(error).__name__
        raise UsageError(f"--hub-model-id {repo_id}: the upload failed ({reason}); run the command again.") from error
    print(f"Pushed to https://huggingface.co/{repo_id} ({commit.commit_url}).")


if __name__ == "__main__":
    main()
