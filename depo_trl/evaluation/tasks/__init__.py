"""The evaluation tasks: the paper's Table 2 (moderate context: DocMath, Frames and multi-hop QA; extended context:
LongBench v1 QA), LongBench v2, and RULER-QA by length.

A task is one `EvalTask` (as lighteval's `LightevalTaskConfig`): its data files and where each comes from, its loader,
its table column and group, how it is asked and read under each `--prompt-style` (prompt, answer budget, scoring
rules), its metric and its decoding. One module per benchmark family holds its tasks, whole:

- `docmath.py`: DocMath-Eval; `frames.py`: FRAMES; `multihop_qa.py`: 2WikiMultihopQA, HotpotQA and MuSiQue with their
  own paragraphs (Table 2's moderate-context half);
- `longbench.py`: LongBench v1's QA sets (the extended-context half) and LongBench's prompts;
- `longbench_v2.py`: LongBench v2; `ruler_qa.py`: RULER-style QA at 4K to 32K tokens;
- `base.py`: the task object and what the modules share.

A new benchmark is a module with its task(s), listed in `TASKS` below; `docs/evaluation.md`'s tables of the tasks and
of their files are `tasks_table()` and `data_table()`.
"""

from ...user_errors import UsageError
from ..sources import DataFile
from . import docmath, frames, longbench, longbench_v2, multihop_qa, ruler_qa
from .base import (
    GREEDY,
    PROMPT_STYLES,
    TEMPLATE_MAX_NEW_TOKENS,
    Decoding,
    EvalExample,
    EvalTask,
    PromptFormat,
    truncate_middle,
)


__all__ = [
    "ALL_TASKS",
    "GREEDY",
    "PROMPT_STYLES",
    "TASKS",
    "TASK_GROUPS",
    "TEMPLATE_MAX_NEW_TOKENS",
    "Decoding",
    "EvalExample",
    "EvalTask",
    "PromptFormat",
    "get_task",
    "parse_tasks",
    "data_table",
    "tasks_table",
    "truncate_middle",
]

# Table 2's columns in QwenLong-L1's order (DocMath, Frames, 2Wiki, HotpotQA, MuSiQue, ...), moderate then extended;
# then LongBench v2 and RULER-QA
TASKS: dict[str, EvalTask] = {
    task.name: task
    for task in [
        docmath.TASK,
        frames.TASK,
        *multihop_qa.TASKS,
        *longbench.TASKS,
        longbench_v2.TASK,
        *ruler_qa.TASKS,
    ]
}
ALL_TASKS = list(TASKS)
TASK_GROUPS = {
    group: [task.name for task in TASKS.values() if task.group == group] for group in ("moderate", "extended", "ruler")
}
TASK_GROUPS["table2"] = TASK_GROUPS["moderate"] + TASK_GROUPS["extended"]
_GROUP_NAMES = {"moderate": "Table 2, moderate", "extended": "Table 2, extended", "ruler": "RULER-QA", None: "its own"}


def get_task(name: str) -> EvalTask:
    """The task `--tasks` names; a [`UsageError`] listing the tasks and groups for an unknown name."""
    if name not in TASKS:
        raise UsageError(f"--tasks {name}: unknown task; use {ALL_TASKS} or a group {[*TASK_GROUPS, 'all']}.")
    return TASKS[name]


def parse_tasks(spec: str) -> list[str]:
    """Comma-separated task names; `moderate`, `extended`, `table2`, `ruler` and `all` expand to their tasks."""
    tasks: list[str] = []
    for name in (part.strip() for part in spec.split(",") if part.strip()):
        for task in ALL_TASKS if name == "all" else TASK_GROUPS.get(name, [name]):
            if get_task(task).name not in tasks:
                tasks.append(task)
    return tasks


def tasks_table() -> str:
    """The Markdown table of the tasks, as docs/evaluation.md shows it."""
    lines = ["| task | column | table | metric | files under `--data-dir` |", "|---|---|---|---|---|"]
    for task in TASKS.values():
        files = ", ".join(f"`{data.name}`" for data in task.data)
        lines.append(f"| `{task.name}` | {task.label} | {_GROUP_NAMES[task.group]} | {task.metric} | {files} |")
    return "\n".join(lines)


def data_table() -> str:
    """The Markdown table of the files the tasks read and where each comes from, as docs/evaluation.md shows it."""
    lines = ["| file under `--data-dir` | where it comes from | tasks | also read in its place |", "|---|---|---|---|"]
    users: dict[DataFile, list[str]] = {}
    for task in TASKS.values():
        for data in task.data:
            users.setdefault(data, []).append(f"`{task.name}`")
    for data, tasks in users.items():
        also = ", ".join(f"`{name}`" for name in data.also)
        lines.append(f"| `{data.name}` | {data.origin} | {', '.join(tasks)} | {also} |")
    return "\n".join(lines)
