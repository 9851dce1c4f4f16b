"""Evaluation tasks: the paper's Table 2 (moderate context: DocMath, Frames and multi-hop QA; extended context:
LongBench v1 QA), LongBench v2, and RULER-QA by length.

Every task yields `EvalExample`s: an id, the passages-and-question text pieces, and the gold answers. Prompts are
built by `build_prompt` in the training template (what DePO models are trained on) or in LongBench's own wording;
DocMath and Frames are asked in QwenLong-L1's words, which the paper took them from.
"""

import os
from collections.abc import Callable
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from ..data.builder import ContextBuilder
from ..data.sources import QAExample, adapt, read_records
from ..data.template import ANSWER_FORMAT, INSTRUCTION, format_passages, render_prompt
from ..user_errors import UsageError, hub_offline, in_hub_cache


@dataclass
class EvalExample:
    id: str
    context: str
    question: str
    answers: list[str]


@dataclass(frozen=True)
class Decoding:
    """How a task's answers are decoded: greedy (`temperature` 0), or sampled at `temperature` from `seed`."""

    temperature: float = 0.0
    seed: int = 0

    @property
    def do_sample(self) -> bool:
        return self.temperature > 0

    def as_record(self) -> dict:
        """What `scores.json` says about it."""
        if not self.do_sample:
            return {"do_sample": False}
        return {"do_sample": True, "temperature": self.temperature, "seed": self.seed}


# Table 2's columns in QwenLong-L1's order (DocMath, Frames, 2Wiki, HotpotQA, MuSiQue, ...), moderate then extended
LONGBENCH_TASKS = {
    "longbench_2wikimqa": "2wikimqa",
    "longbench_hotpotqa": "hotpotqa",
    "longbench_musique": "musique",
    "longbench_narrativeqa": "narrativeqa",
    "longbench_qasper": "qasper",
}
MODERATE_TASKS = {"2wikimqa": "2wikimqa", "hotpotqa": "hotpotqa", "musique": "musique"}
QWENLONG_TASKS = ("docmath", "frames")  # asked in QwenLong-L1's words, whatever --prompt-style says
TABLE2_MODERATE = [*QWENLONG_TASKS, *MODERATE_TASKS]
LONGBENCH_V2 = "longbench_v2"
RULER_TASKS = {"ruler_qa_4k": 4096, "ruler_qa_8k": 8192, "ruler_qa_16k": 16384, "ruler_qa_32k": 32768}
ALL_TASKS = [*TABLE2_MODERATE, *LONGBENCH_TASKS, LONGBENCH_V2, *RULER_TASKS]
TASK_GROUPS = {
    "moderate": TABLE2_MODERATE,
    "extended": list(LONGBENCH_TASKS),
    "table2": [*TABLE2_MODERATE, *LONGBENCH_TASKS],
    "ruler": list(RULER_TASKS),
}
GREEDY = Decoding()
# Greedy everywhere the paper is; LongBench v2 samples at 0.1, as its pred.py and the paper's appendix C.3 do
TASK_DECODING = {LONGBENCH_V2: Decoding(temperature=0.1)}


def task_decoding(task: str) -> Decoding:
    return TASK_DECODING.get(task, GREEDY)


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
    # LongBench v2's (THUDM/LongBench prompts/0shot.txt); its question carries the four choices
    LONGBENCH_V2: (
        f"{INSTRUCTION}\n\n<text>\n{{context}}\n</text>\n\nWhat is the correct answer to this question: {{input}}\n\n"
        'Format your response as follows: "The correct answer is (insert answer here)".'
    ),
}
LONGBENCH_MAX_NEW_TOKENS = {
    "hotpotqa": 32,
    "2wikimqa": 32,
    "musique": 32,
    "narrativeqa": 128,
    "qasper": 128,
    LONGBENCH_V2: 128,  # pred.py without chain of thought
}
TEMPLATE_MAX_NEW_TOKENS = 1024  # room for reasoning before "Therefore, the answer is ..."


def task_prompt_style(task: str, prompt_style: str) -> str:
    """The style `task` is asked in: `prompt_style`, but always the training template's answer format ("depo") for
    DocMath and Frames, whose one prompt is QwenLong-L1's."""
    return "depo" if task in QWENLONG_TASKS else prompt_style


def default_max_new_tokens(task: str, prompt_style: str) -> int:
    if task_prompt_style(task, prompt_style) == "longbench":
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


def qwenlong_prompt(context: str, question: str) -> str:
    """QwenLong-L1's DocMath and Frames prompt (`template_0shot` in its eval/docmath.py and eval/frames.py): the
    training template with the question unlabelled."""
    return f"{INSTRUCTION}\n\n<text>\n{context}\n</text>\n\n{question}\n\n{ANSWER_FORMAT}"


def build_prompt(task: str, example: EvalExample, prompt_style: str) -> str:
    """The user message for `example`: the training template, or LongBench's prompt for the task's dataset;
    QwenLong-L1's for DocMath and Frames."""
    if task in QWENLONG_TASKS:
        return qwenlong_prompt(example.context, example.question)
    if prompt_style == "longbench":
        # LongBench v2 has its own prompt; RULER-QA's questions are HotpotQA's
        dataset = LONGBENCH_TASKS.get(
            task, MODERATE_TASKS.get(task, task if task in LONGBENCH_PROMPTS else "hotpotqa")
        )
        return LONGBENCH_PROMPTS[dataset].format(context=example.context, input=example.question)
    return render_prompt(example.context, example.question)


def _not_in_data_dir(data_dir: str | None, local_name: str) -> str:
    return f"--data-dir {data_dir}: no {local_name} there" if data_dir else f"--data-dir not given (for {local_name})"


def hub_records(hub_id: str, config: str | None, split: str, data_dir: str | None, local_name: str) -> list[dict]:
    """A benchmark split from the Hub, for a task whose file is not under `--data-dir`; a [`UsageError`] that names
    both places when neither has it."""
    missing = _not_in_data_dir(data_dir, local_name)
    fix = f"put {local_name} under --data-dir, or run where the Hub is reachable"
    if hub_offline() and not in_hub_cache(hub_id, "dataset"):
        raise UsageError(f"{missing}, and the Hub is unreachable (offline mode) for {hub_id}; {fix}.")
    from datasets import load_dataset

    try:
        return list(load_dataset(hub_id, config, split=split))
    except Exception as error:  # the Hub client raises many types; all mean the same thing to the user
        reason = " ".join(str(error).split())[:200]
        raise UsageError(f"{missing}, and loading {hub_id} from the Hub failed ({reason}); {fix}.") from None


def _data_file(data_dir: str | None, *names: str) -> str | None:
    """The first of `names` that is a file under `data_dir`; None if none is (or no `data_dir`)."""
    paths = (os.path.join(data_dir, name) for name in names) if data_dir is not None else ()
    return next((path for path in paths if os.path.isfile(path)), None)


def load_longbench(task: str, data_dir: str | None) -> list[EvalExample]:
    """LongBench v1 records (`input, context, answers, _id`) from `data_dir/<dataset>.jsonl` or the Hub."""
    dataset = LONGBENCH_TASKS[task]
    path = _data_file(data_dir, f"{dataset}.jsonl")
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
    path = _data_file(data_dir, *_MODERATE_FILES[source])
    if path is not None:
        records = read_records(path, argument="--data-dir")
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


DOCMATH_SUBSETS = ("complong", "compshort", "simplong", "simpshort")
DOCMATH_FOLDER = "docmath"
# QwenLong-L1's held-out quarter of the testmini questions (the Hub's Tongyi-Zhiwen/docmath), as chat prompts
DOCMATH_TEST_PROMPTS = "docmath_all_test_200.jsonl"


def docmath_records(data_dir: str | None) -> list[dict]:
    """DocMath-Eval's four testmini subsets: `data_dir/docmath/<subset>_testmini.jsonl` (QwenLong-L1's layout) or the
    Hub's yale-nlp/DocMath-Eval."""
    folder = os.path.join(data_dir, DOCMATH_FOLDER) if data_dir is not None else None
    records: list[dict] = []
    for subset in DOCMATH_SUBSETS:
        name = f"{subset}_testmini.jsonl"
        if folder is None or not os.path.isdir(folder):
            records += hub_records("yale-nlp/DocMath-Eval", None, f"{subset}_testmini", data_dir, f"docmath/{name}")
        elif os.path.isfile(os.path.join(folder, name)):
            records += read_records(os.path.join(folder, name), argument="--data-dir")
        else:
            raise UsageError(
                f"--data-dir {data_dir}: docmath/ has no {name}; put all four testmini subsets there "
                f"({', '.join(f'{subset}_testmini.jsonl' for subset in DOCMATH_SUBSETS)})."
            )
    return records


def qwenlong_docmath_test(records: list[dict], prompts: list[str]) -> list[dict]:
    """The records QwenLong-L1 evaluates (its `search_item`): question and document both in one of the prompts."""
    # The question follows the document in each prompt: test it on the short tail first, the document only then
    tails = [(prompt.rsplit("</text>", 1)[-1], prompt) for prompt in prompts]
    return [
        record
        for record in records
        if any(
            record["question"].strip() in tail and "\n".join(record["paragraphs"]).strip() in prompt
            for tail, prompt in tails
        )
    ]


def load_docmath(data_dir: str | None) -> list[EvalExample]:
    """DocMath-Eval testmini (`question_id, question, paragraphs, ground_truth`), only QwenLong-L1's 200 test
    questions when `docmath/docmath_all_test_200.jsonl` is there; the gold is the number `ground_truth`."""
    records = docmath_records(data_dir)
    test_prompts = _data_file(data_dir, os.path.join(DOCMATH_FOLDER, DOCMATH_TEST_PROMPTS))
    if test_prompts is not None:
        rows = read_records(test_prompts, argument="--data-dir")
        records = qwenlong_docmath_test(records, [row["prompt"][0]["content"] for row in rows])
    examples = []
    for record in records:
        gold = record.get("ground_truth")
        if isinstance(gold, bool) or not isinstance(gold, (int, float)):
            raise UsageError(
                f"--data-dir {data_dir}: DocMath question {record.get('question_id')} has ground_truth "
                f"{gold!r}, not a number; use the testmini subsets (the test split hides it)."
            )
        document = "\n".join(record["paragraphs"]).strip()  # QwenLong-L1 joins paragraphs and tables with newlines
        examples.append(EvalExample(str(record["question_id"]), document, record["question"].strip(), [str(gold)]))
    return examples


FRAMES_FILE = "frames.jsonl"


def load_frames(data_dir: str | None) -> list[EvalExample]:
    """FRAMES questions with the Wikipedia articles they link to, from `data_dir/frames.jsonl`: google/frames-benchmark
    rows (`Prompt`, `Answer`, ...) plus `wiki_items: [{title, text}]`, what `python -m depo_trl.evaluation.frames`
    writes (and QwenLong-L1's Tongyi-Zhiwen/frames holds). The articles are the context, as QwenLong-L1 joins them."""
    path = _data_file(data_dir, FRAMES_FILE)
    if path is None:
        raise UsageError(
            f"{_not_in_data_dir(data_dir, FRAMES_FILE)}, and the Hub's copy of FRAMES has no article texts; build "
            f"it with python -m depo_trl.evaluation.frames --output DATA_DIR/{FRAMES_FILE} where the Hub and "
            "Wikipedia are reachable."
        )
    return [
        EvalExample(
            str(index),
            "\n".join(f"{article['title']}\n{article['text']}" for article in record["wiki_items"]).strip(),
            record["Prompt"].strip(),
            [record["Answer"]],
        )
        for index, record in enumerate(read_records(path, argument="--data-dir"))
    ]


def longbench_v2_question(record: dict) -> str:
    """The question and its four choices, as LongBench v2's prompt lays them out."""
    choices = "\n".join(f"({letter}) {record[f'choice_{letter}'].strip()}" for letter in "ABCD")
    return f"{record['question'].strip()}\nChoices:\n{choices}"


def load_longbench_v2(data_dir: str | None) -> list[EvalExample]:
    """LongBench v2 (`_id, question, choice_A..D, answer, context`, ...) from `data_dir/longbench_v2.json` (the
    benchmark's data.json) or `.jsonl`, or the Hub; the gold answer is the option letter."""
    path = _data_file(data_dir, f"{LONGBENCH_V2}.json", f"{LONGBENCH_V2}.jsonl")
    if path is not None:
        records = list(read_records(path, argument="--data-dir"))
    else:
        records = hub_records("THUDM/LongBench-v2", None, "train", data_dir, f"{LONGBENCH_V2}.json")
    return [EvalExample(str(r["_id"]), r["context"].strip(), longbench_v2_question(r), [r["answer"]]) for r in records]


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
        "docmath": lambda: load_docmath(data_dir),
        "frames": lambda: load_frames(data_dir),
        LONGBENCH_V2: lambda: load_longbench_v2(data_dir),
    }
    if task not in loaders:
        raise UsageError(f"--tasks {task}: unknown task; use one of {ALL_TASKS}.")
    return loaders[task]()
