"""Evaluation tasks: LongBench v1 QA (extended context), moderate-context multi-hop QA, and RULER-QA by length.

Every task yields `EvalExample`s: an id, the passages-and-question text pieces, and the gold answers. Prompts are
built by `build_prompt` in the training template (what DePO models are trained on) or in LongBench's own wording.
"""

import os
from collections.abc import Callable
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from ..data.builder import ContextBuilder
from ..data.sources import QAExample, adapt, read_records
from ..data.template import format_passages, render_prompt
from ..user_errors import UsageError, hub_offline, in_hub_cache


@dataclass
class EvalExample:
    id: str
    context: str
    question: str
    answers: list[str]


LONGBENCH_TASKS = {
    "longbench_hotpotqa": "hotpotqa",
    "longbench_2wikimqa": "2wikimqa",
    "longbench_musique": "musique",
    "longbench_narrativeqa": "narrativeqa",
    "longbench_qasper": "qasper",
}
MODERATE_TASKS = {"hotpotqa": "hotpotqa", "2wikimqa": "2wikimqa", "musique": "musique"}
RULER_TASKS = {"ruler_qa_4k": 4096, "ruler_qa_8k": 8192, "ruler_qa_16k": 16384, "ruler_qa_32k": 32768}
ALL_TASKS = [*MODERATE_TASKS, *LONGBENCH_TASKS, *RULER_TASKS]
TASK_GROUPS = {"moderate": list(MODERATE_TASKS), "extended": list(LONGBENCH_TASKS), "ruler": list(RULER_TASKS)}

# LongBench's own instructions (THUDM/LongBench config/dataset2prompt.json) and answer lengths (dataset2maxlen.json).
_MULTIHOP_PROMPT = (
    "Answer the question based on the given passages. Only give me the answer and do not output any other words.\n\n"
    "The following are given passages.\n{context}\n\nAnswer the question based on the given passages. Only give me "
    "the answer and do not output any other words.\n\nQuestion: {input}\nAnswer:"
)
LONGBENCH_PROMPTS = {
    "hotpotqa": _MULTIHOP_PROMPT,
    "2wikimqa": _MULTIHOP_PROMPT,
    "musique": _MULTIHOP_PROMPT,
    "narrativeqa": (
        "You are given a story, which can be either a novel or a movie script, and a question. Answer the question "
        "asconcisely as you can, using a single phrase if possible. Do not provide any explanation.\n\nStory: "
        "{context}\n\nNow, answer the question based on the story asconcisely as you can, using a single phrase if "
        "possible. Do not provide any explanation.\n\nQuestion: {input}\n\nAnswer:"
    ),
    "qasper": (
        "You are given a scientific article and a question. Answer the question as concisely as you can, using a "
        "single phrase or sentence if possible. If the question cannot be answered based on the information in the "
        'article, write "unanswerable". If the question is a yes/no question, answer "yes", "no", or '
        '"unanswerable". Do not provide any explanation.\n\nArticle: {context}\n\n Answer the question based on the '
        "above article as concisely as you can, using a single phrase or sentence if possible. If the question "
        'cannot be answered based on the information in the article, write "unanswerable". If the question is a '
        'yes/no question, answer "yes", "no", or "unanswerable". Do not provide any explanation.\n\n'
        "Question: {input}\n\nAnswer:"
    ),
}
LONGBENCH_MAX_NEW_TOKENS = {"hotpotqa": 32, "2wikimqa": 32, "musique": 32, "narrativeqa": 128, "qasper": 128}
TEMPLATE_MAX_NEW_TOKENS = 1024  # room for reasoning before "Therefore, the answer is ..."


def default_max_new_tokens(task: str, prompt_style: str) -> int:
    if prompt_style == "longbench":
        return LONGBENCH_MAX_NEW_TOKENS.get(LONGBENCH_TASKS.get(task, task), 32)
    return TEMPLATE_MAX_NEW_TOKENS


def truncate_middle(text: str, tokenizer: PreTrainedTokenizerBase, max_tokens: int) -> tuple[str, int]:
    """LongBench's truncation: keep the first and last `max_tokens / 2` tokens. Returns the text and its length."""
    if max_tokens < 1:
        raise ValueError(f"A prompt must keep at least one token, got a budget of {max_tokens}.")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_tokens:
        return text, len(ids)
    half = max_tokens // 2
    # One decode of the joined ids: the same text as LongBench's two decodes for BPE tokenizers, and word-level ones
    # keep the space between the halves.
    return tokenizer.decode(ids[:half] + ids[-(max_tokens - half) :], skip_special_tokens=True), max_tokens


def build_prompt(task: str, example: EvalExample, prompt_style: str) -> str:
    """The user message for `example`: the training template, or LongBench's prompt for the task's dataset."""
    if prompt_style == "longbench":
        dataset = LONGBENCH_TASKS.get(task, MODERATE_TASKS.get(task, "hotpotqa"))
        return LONGBENCH_PROMPTS[dataset].format(context=example.context, input=example.question)
    return render_prompt(example.context, example.question)


def hub_records(hub_id: str, config: str | None, split: str, data_dir: str | None, local_name: str) -> list[dict]:
    """A benchmark split from the Hub, for a task whose file is not under `--data-dir`; a [`UsageError`] that names
    both places when neither has it."""
    missing = (
        f"--data-dir {data_dir}: no {local_name} there" if data_dir else f"--data-dir not given (for {local_name})"
    )
    fix = f"put {local_name} under --data-dir, or run where the Hub is reachable"
    if hub_offline() and not in_hub_cache(hub_id, "dataset"):
        raise UsageError(f"{missing}, and the Hub is unreachable (offline mode) for {hub_id}; {fix}.")
    from datasets import load_dataset

    try:
        return list(load_dataset(hub_id, config, split=split))
    except Exception as error:  # the Hub client raises many types; all mean the same thing to the user
        reason = " ".join(str(error).split())[:200]
        raise UsageError(f"{missing}, and loading {hub_id} from the Hub failed ({reason}); {fix}.") from None


def _longbench_file(data_dir: str | None, dataset: str) -> str | None:
    if data_dir is None:
        return None
    path = os.path.join(data_dir, f"{dataset}.jsonl")
    return path if os.path.isfile(path) else None


def load_longbench(task: str, data_dir: str | None) -> list[EvalExample]:
    """LongBench v1 records (`input, context, answers, _id`) from `data_dir/<dataset>.jsonl` or the Hub."""
    dataset = LONGBENCH_TASKS[task]
    path = _longbench_file(data_dir, dataset)
    if path is not None:
        records = list(read_records(path, argument="--data-dir"))
    else:
        records = hub_records("THUDM/LongBench", dataset, "test", data_dir, f"{dataset}.jsonl")
    return [EvalExample(str(r["_id"]), r["context"], r["input"], list(r["answers"])) for r in records]


_MODERATE_FILES = {
    "hotpotqa": ["hotpotqa_dev.json", "hotpotqa_dev.jsonl", "hotpotqa_distractor_sample.json"],
    "2wikimqa": ["2wikimqa_dev.json", "2wikimqa_dev.jsonl", "2wikimultihopqa_sample.json"],
    "musique": ["musique_dev.jsonl", "musique_dev.json", "musique_sample.jsonl"],
}
_MODERATE_HUB = {"hotpotqa": ("hotpotqa/hotpot_qa", "distractor", "validation")}


def moderate_examples(task: str, data_dir: str | None) -> list[QAExample]:
    """Dev rows of a multi-hop QA dataset through the data builder's source adapters."""
    source = MODERATE_TASKS[task]
    for name in _MODERATE_FILES[source]:
        if data_dir is not None and os.path.isfile(os.path.join(data_dir, name)):
            records = read_records(os.path.join(data_dir, name), argument="--data-dir")
            break
    else:
        if source not in _MODERATE_HUB:
            raise UsageError(
                f"--data-dir {data_dir}: task {task} reads its dev rows from there "
                f"({' or '.join(_MODERATE_FILES[source][:2])}), which are not there; download them into it."
            )
        hub_id, config, split = _MODERATE_HUB[source]
        records = hub_records(hub_id, config, split, data_dir, _MODERATE_FILES[source][0])
    examples, _ = adapt(source, records)
    return examples


def load_moderate(task: str, data_dir: str | None) -> list[EvalExample]:
    """Each question with only its own paragraphs (gold and the dataset's distractors), in the dataset's order."""
    return [
        EvalExample(e.id, format_passages([*e.gold, *e.own_distractors]), e.question, e.answers)
        for e in moderate_examples(task, data_dir)
    ]


def load_ruler(
    task: str, data_dir: str | None, tokenizer: PreTrainedTokenizerBase, seed: int = 0
) -> list[EvalExample]:
    """RULER-style QA at a target length: gold paragraphs plus distractors from the pool (the training data's
    `ContextBuilder`, HotpotQA dev rows), filling the rendered prompt up to the task's token length."""
    target = RULER_TASKS[task]
    examples = moderate_examples("hotpotqa", data_dir)
    builder = ContextBuilder(tokenizer, examples, short_budget=target, long_budget=target, seed=seed)
    built = ((example, builder.build_contexts(example)) for example in examples)
    return [
        EvalExample(example.id, format_passages(contexts.short), example.question, example.answers)
        for example, contexts in built
        if not isinstance(contexts, str)
    ]


def load_task(task: str, data_dir: str | None, tokenizer: PreTrainedTokenizerBase) -> list[EvalExample]:
    loaders: dict[str, Callable[[], list[EvalExample]]] = {
        **{name: (lambda name=name: load_longbench(name, data_dir)) for name in LONGBENCH_TASKS},
        **{name: (lambda name=name: load_moderate(name, data_dir)) for name in MODERATE_TASKS},
        **{name: (lambda name=name: load_ruler(name, data_dir, tokenizer)) for name in RULER_TASKS},
    }
    if task not in loaders:
        raise UsageError(f"--tasks {task}: unknown task; use one of {ALL_TASKS}.")
    return loaders[task]()
