"""Evaluation harness: the paper's Table 2 (DocMath, Frames, multi-hop QA, LongBench v1 QA), LongBench v2 and RULER-QA.

    python -m depo_trl.evaluation --model runs/qwen2.5-7b-instruct/depo-grpo --tasks all --backend vllm \
        --max-length 32768 --output-dir eval
"""

from .runner import EvalSettings, evaluate_model, parse_tasks, results_table, run, score_prediction
from .tasks import ALL_TASKS, EvalExample, build_prompt, load_task, truncate_middle


__all__ = [
    "ALL_TASKS",
    "EvalExample",
    "EvalSettings",
    "build_prompt",
    "evaluate_model",
    "load_task",
    "parse_tasks",
    "results_table",
    "run",
    "score_prediction",
    "truncate_middle",
]
