"""Fetch the evaluation tasks' data into `--data-dir`, where each task's loader reads it.

    python -m depo_trl.evaluation.fetch --data-dir data/eval [--tasks table2,longbench_v2]

Each file comes from the source its task names (`EvalTask.data`; docs/evaluation.md has the table): the Hub through
`huggingface_hub` and `datasets`, a published URL otherwise (one member of a zip archive for 2WikiMultihopQA and
MuSiQue), FRAMES through `python -m depo_trl.evaluation.frames`'s builder. A file already there is kept, and each one
appears under its name only once it is whole (a download from a URL is resumed from `<name>.download`), so a run
stopped at any point is finished by running it again.

What cannot be fetched is named in one line with its source once the rest is fetched, and the exit status is 2. In
offline mode (`HF_HUB_OFFLINE=1`) the command stays off the network: it copies what the local Hub cache holds and names
the rest.
"""

import os
from collections.abc import Callable, Sequence

from ..user_errors import ArgumentParser, UsageError, hub_offline, reports_usage_errors, writable_folder
from .sources import DataFile
from .tasks import get_task, parse_tasks


PROG = "python -m depo_trl.evaluation.fetch"


def data_files(tasks: Sequence[str]) -> list[DataFile]:
    """The files `tasks` read, each once, in the order of the tasks."""
    return list(dict.fromkeys(data for task in tasks for data in get_task(task).data))


def fetch_data(
    data_dir: str, files: Sequence[DataFile], log: Callable[[str], None] = print
) -> list[tuple[DataFile, str]]:
    """Fetch every file of `files` that is not yet under `data_dir`; returns those that could not be, with why."""
    failed = []
    for data in files:
        path = os.path.join(data_dir, data.name)
        if os.path.isfile(path):
            log(f"{path}: already there")
            continue
        if hub_offline() and not data.fetchable_offline():
            failed.append((data, "offline mode, HF_HUB_OFFLINE=1"))
            continue
        log(f"{path}: fetching {data.origin}")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            data.fetch(path)
        except Exception as error:  # network, HTTP, Hub and archive errors: each file's own, the others go on
            failed.append((data, " ".join(str(error).split())[:200] or type(error).__name__))
        else:
            log(f"{path}: done")
    return failed


def failure_report(failed: Sequence[tuple[DataFile, str]], total: int) -> str:
    """What could not be fetched, from where and why (said once when it is the same for all), and what to do."""
    reasons = {reason for _, reason in failed}
    if len(reasons) == 1:
        what = f"could not fetch {len(failed)} of {total} files ({reasons.pop()}): "
        what += "; ".join(f"{data.name} from {data.origin}" for data, _ in failed)
    else:
        what = f"could not fetch {len(failed)} of {total} files: "
        what += "; ".join(f"{data.name} from {data.origin} ({reason})" for data, reason in failed)
    rerun = "unset HF_HUB_OFFLINE and run again" if hub_offline() else "run again"
    return (
        f"{what}; {rerun} where those sources are reachable (what is there is kept), or put the files there "
        "yourself (docs/evaluation.md, Data)."
    )


@reports_usage_errors(PROG)
def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog=PROG, description=__doc__)
    parser.add_argument("--data-dir", required=True, help="The folder to fetch into; pass it to the evaluation.")
    parser.add_argument(
        "--tasks",
        default="all",
        help="Comma-separated tasks or groups, as python -m depo_trl.evaluation takes them (default: all).",
    )
    args = parser.parse_args(argv)
    writable_folder("--data-dir", args.data_dir)
    files = data_files(parse_tasks(args.tasks))
    os.makedirs(args.data_dir, exist_ok=True)
    failed = fetch_data(args.data_dir, files)
    if failed:
        raise UsageError(f"--data-dir {args.data_dir}: {failure_report(failed, len(files))}")
    print(f"{args.data_dir}: all {len(files)} files of {args.tasks} are there.")


if __name__ == "__main__":
    main()
