"""Evaluation harness: the paper's Table 2 (DocMath, Frames, multi-hop QA, LongBench v1 QA), LongBench v2 and RULER-QA
(docs/evaluation.md). The data: `python -m depo_trl.evaluation.fetch --data-dir data/eval`; then

    python -m depo_trl.evaluation --model runs/qwen2.5-7b-instruct/depo-grpo --tasks all --backend vllm \
        --max-length 32768 --output-dir eval --data-dir data/eval
"""

from .report import results_table, write_results
from .runner import EvalSettings, evaluate_model, run
from .scoring import SCORING_MODES, Score, ScoringRules
from .tasks import ALL_TASKS, TASKS, EvalExample, EvalTask, PromptFormat, get_task, parse_tasks, truncate_middle


__all__ = [
    "ALL_TASKS",
    "SCORING_MODES",
    "TASKS",
    "EvalExample",
    "EvalSettings",
    "EvalTask",
    "PromptFormat",
    "Score",
    "ScoringRules",
    "evaluate_model",
    "get_task",
    "parse_tasks",
    "results_table",
    "run",
    "truncate_middle",
    "write_results",
]
