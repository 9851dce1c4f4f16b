"""RULER-style QA by context length (4K to 32K tokens): HotpotQA's dev questions, each with its gold paragraphs and
distractors from the other questions up to the length, built by the training data's `ContextBuilder`.

Data: HotpotQA's, as the moderate-context `hotpotqa` task reads it (`multihop_qa.DATA["hotpotqa"]`). Asked and scored
as HotpotQA's questions are (`longbench.qa_formats("hotpotqa")`).
"""

from transformers import PreTrainedTokenizerBase

from ...data.builder import ContextBuilder
from ...data.template import format_passages
from .base import EvalExample, EvalTask
from .longbench import qa_formats
from .multihop_qa import DATA, moderate_examples


LENGTHS = (4096, 8192, 16384, 32768)


def load_ruler(
    target: int, data_dir: str | None, tokenizer: PreTrainedTokenizerBase, seed: int = 0
) -> list[EvalExample]:
    """RULER-style QA at a target length: gold paragraphs plus distractors from the pool (the training data's
    `ContextBuilder`, HotpotQA dev rows), filling the rendered prompt up to `target` tokens."""
    examples = moderate_examples("hotpotqa", data_dir)
    builder = ContextBuilder(tokenizer, examples, short_budget=target, long_budget=target, seed=seed)
    built = ((example, builder.build_contexts(example)) for example in examples)
    return [
        EvalExample(example.id, format_passages(contexts.short), example.question, example.answers)
        for example, contexts in built
        if not isinstance(contexts, str)
    ]


def _task(target: int) -> EvalTask:
    label = f"{target // 1024}K"
    return EvalTask(
        f"ruler_qa_{label.lower()}",
        label,
        "ruler",
        (DATA["hotpotqa"],),
        lambda data_dir, tokenizer: load_ruler(target, data_dir, tokenizer),
        qa_formats("hotpotqa"),
    )


TASKS = [_task(target) for target in LENGTHS]
