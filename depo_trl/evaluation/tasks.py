"""Evaluation tasks: the paper's Table 2 (moderate context: DocMath, Frames and multi-hop QA; extended context:
LongBench v1 QA), LongBench v2, and RULER-QA by length.

A task is one `EvalTask` in `TASKS` (as lighteval's `LightevalTaskConfig`): its loader, its table column and group,
how it is asked and read under each `--prompt-style` (`PromptFormat`: prompt, answer budget, scoring rules), its
metric and its decoding. Adding a benchmark is adding one entry there.

Every loader yields `EvalExample`s: an id, the context and question text, and the gold answers. The QA tasks are asked
in the training template (what DePO models are trained on) or in LongBench's own wording; DocMath and Frames always in
QwenLong-L1's words, which the paper took them from; LongBench v2 always in its own 0-shot prompt, the only answer
format its `pred.py` reads.
"""

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from ..data.builder import ContextBuilder
from ..data.sources import QAExample, adapt, adapt_numbered, numbered_records, read_records
from ..data.template import ANSWER_FORMAT, INSTRUCTION, format_passages, render_prompt
from ..user_errors import UsageError, hub_offline, in_hub_cache
from .scoring import DOCMATH, LONGBENCH_QA, LONGBENCH_V2, TEMPLATE_QA, Score, ScoringRules


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


GREEDY = Decoding()
PROMPT_STYLES = ("depo", "longbench")
TEMPLATE_MAX_NEW_TOKENS = 1024  # room for reasoning before "Therefore, the answer is ..."


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


def qwenlong_prompt(example: EvalExample) -> str:
    """QwenLong-L1's DocMath and Frames prompt (`template_0shot` in its eval/docmath.py and eval/frames.py): the
    training template with the question unlabelled."""
    return f"{INSTRUCTION}\n\n<text>\n{example.context}\n</text>\n\n{example.question}\n\n{ANSWER_FORMAT}"


def template_prompt(example: EvalExample) -> str:
    """The training template (`depo_trl/data/template.py`)."""
    return render_prompt(example.context, example.question)


def longbench_v2_prompt(example: EvalExample) -> str:
    """LongBench v2's 0-shot prompt (THUDM/LongBench prompts/0shot.txt); the question carries the four choices."""
    return (
        f"{INSTRUCTION}\n\n<text>\n{example.context}\n</text>\n\nWhat is the correct answer to this question: "
        f'{example.question}\n\nFormat your response as follows: "The correct answer is (insert answer here)".'
    )


# LongBench v1's own instructions (THUDM/LongBench LongBench/config/dataset2prompt.json) and answer lengths
# (dataset2maxlen.json)
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


@dataclass(frozen=True)
class PromptFormat:
    """One way of asking a task's questions and reading the answers.

    Attributes:
        build: the user message for an example.
        max_new_tokens: the answer budget in new tokens, unless `--max-new-tokens` says otherwise.
        scoring: how an answer in this format is read, in each scoring mode.
    """

    build: Callable[[EvalExample], str]
    max_new_tokens: int
    scoring: ScoringRules


def _every_style(prompt_format: PromptFormat) -> dict[str, PromptFormat]:
    """A task asked one way whatever `--prompt-style` says."""
    return dict.fromkeys(PROMPT_STYLES, prompt_format)


def qa_formats(longbench_dataset: str) -> dict[str, PromptFormat]:
    """A QA task's two styles: the training template, scored as QwenLong-L1 scores answers in that format; and
    LongBench's prompt for `longbench_dataset`, scored as LongBench's eval.py does."""
    longbench = LONGBENCH_PROMPTS[longbench_dataset]
    return {
        "depo": PromptFormat(template_prompt, TEMPLATE_MAX_NEW_TOKENS, TEMPLATE_QA),
        "longbench": PromptFormat(
            lambda example: longbench.format(context=example.context, input=example.question),
            LONGBENCH_MAX_NEW_TOKENS[longbench_dataset],
            LONGBENCH_QA,
        ),
    }


Loader = Callable[[str | None, PreTrainedTokenizerBase], list[EvalExample]]


@dataclass(frozen=True)
class EvalTask:
    """Everything the harness knows about one benchmark.

    Attributes:
        name: what `--tasks` calls it, and its file names under `--output-dir`.
        label: its column in `results.md`.
        group: `moderate` or `extended` (Table 2's two halves), `ruler`, or None (a table of its own).
        load: its examples, from `--data-dir` (or the Hub) with the evaluated model's tokenizer.
        formats: how it is asked and read under each `--prompt-style`.
        metric: the metric its table cell shows: `f1` (EM is in scores.json beside it) or `accuracy`.
        decoding: greedy, or the sampling the benchmark's own evaluation uses.
    """

    name: str
    label: str
    group: str | None
    load: Loader
    formats: Mapping[str, PromptFormat]
    metric: str = "f1"
    decoding: Decoding = GREEDY

    @property
    def metrics(self) -> tuple[str, ...]:
        """The metrics (x100) every answer gets; the first is the table's."""
        return ("accuracy",) if self.metric == "accuracy" else ("f1", "em")

    def prompt(self, example: EvalExample, prompt_style: str) -> str:
        return self.formats[prompt_style].build(example)

    def max_new_tokens(self, prompt_style: str) -> int:
        return self.formats[prompt_style].max_new_tokens

    def score(self, mode: str, raw: str, answers: Sequence[str], prompt_style: str) -> Score:
        """One answer read by scoring `mode` (`official` or `lenient`) for the format `prompt_style` asked it in."""
        return self.formats[prompt_style].scoring.score(mode, raw, answers)


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


def load_longbench(dataset: str, data_dir: str | None) -> list[EvalExample]:
    """LongBench v1 records (`input, context, answers, _id`) from `data_dir/<dataset>.jsonl` or the Hub."""
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


def moderate_examples(source: str, data_dir: str | None) -> list[QAExample]:
    """Dev rows of a multi-hop QA dataset (`hotpotqa`, `2wikimqa`, `musique`) through the data builder's source
    adapters."""
    path = _data_file(data_dir, *_MODERATE_FILES[source])
    if path is not None:
        examples, _ = adapt_numbered(source, numbered_records(path, argument="--data-dir"), f"--data-dir {path}")
        return examples
    if source not in _MODERATE_HUB:
        raise UsageError(
            f"--data-dir {data_dir}: task {source} reads its dev rows from there "
            f"({' or '.join(_MODERATE_FILES[source][:2])}), which are not there; download them into it."
        )
    hub_id, config, split = _MODERATE_HUB[source]
    examples, _ = adapt(source, hub_records(hub_id, config, split, data_dir, _MODERATE_FILES[source][0]), hub_id)
    return examples


def load_moderate(source: str, data_dir: str | None) -> list[EvalExample]:
    """Each question with only its own paragraphs (gold and the dataset's distractors), in the dataset's order."""
    return [
        EvalExample(e.id, format_passages([*e.gold, *e.own_distractors]), e.question, e.answers)
        for e in moderate_examples(source, data_dir)
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
    path = _data_file(data_dir, "longbench_v2.json", "longbench_v2.jsonl")
    if path is not None:
        records = list(read_records(path, argument="--data-dir"))
    else:
        records = hub_records("THUDM/LongBench-v2", None, "train", data_dir, "longbench_v2.json")
    return [EvalExample(str(r["_id"]), r["context"].strip(), longbench_v2_question(r), [r["answer"]]) for r in records]


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


def _moderate(source: str, label: str) -> EvalTask:
    return EvalTask(source, label, "moderate", lambda data_dir, _: load_moderate(source, data_dir), qa_formats(source))


def _longbench(dataset: str, label: str) -> EvalTask:
    return EvalTask(
        f"longbench_{dataset}",
        label,
        "extended",
        lambda data_dir, _: load_longbench(dataset, data_dir),
        qa_formats(dataset),
    )


def _ruler(target: int) -> EvalTask:
    """RULER-QA at `target` tokens; its questions are HotpotQA's, asked and read as HotpotQA's are."""
    label = f"{target // 1024}K"
    return EvalTask(
        f"ruler_qa_{label.lower()}",
        label,
        "ruler",
        lambda data_dir, tokenizer: load_ruler(target, data_dir, tokenizer),
        qa_formats("hotpotqa"),
    )


# Table 2's columns in QwenLong-L1's order (DocMath, Frames, 2Wiki, HotpotQA, MuSiQue, ...), moderate then extended;
# then LongBench v2 and RULER-QA
TASKS: dict[str, EvalTask] = {
    task.name: task
    for task in [
        EvalTask(
            "docmath",
            "DocMath",
            "moderate",
            lambda data_dir, _: load_docmath(data_dir),
            _every_style(PromptFormat(qwenlong_prompt, TEMPLATE_MAX_NEW_TOKENS, DOCMATH)),
            metric="accuracy",
        ),
        EvalTask(
            "frames",
            "Frames",
            "moderate",
            lambda data_dir, _: load_frames(data_dir),
            _every_style(PromptFormat(qwenlong_prompt, TEMPLATE_MAX_NEW_TOKENS, TEMPLATE_QA)),
        ),
        _moderate("2wikimqa", "2Wiki"),
        _moderate("hotpotqa", "HotpotQA"),
        _moderate("musique", "MuSiQue"),
        _longbench("2wikimqa", "LB-2Wiki"),
        _longbench("hotpotqa", "LB-HotpotQA"),
        _longbench("musique", "LB-MuSiQue"),
        _longbench("narrativeqa", "NarrativeQA"),
        _longbench("qasper", "Qasper"),
        EvalTask(
            "longbench_v2",
            "LongBench v2",
            None,
            lambda data_dir, _: load_longbench_v2(data_dir),
            _every_style(PromptFormat(longbench_v2_prompt, 128, LONGBENCH_V2)),  # pred.py without chain of thought
            metric="accuracy",
            decoding=Decoding(temperature=0.1),  # as its pred.py and the paper's appendix C.3 sample
        ),
        *(_ruler(target) for target in (4096, 8192, 16384, 32768)),
    ]
}
ALL_TASKS = list(TASKS)
TASK_GROUPS = {
    group: [task.name for task in TASKS.values() if task.group == group] for group in ("moderate", "extended", "ruler")
}
TASK_GROUPS["table2"] = TASK_GROUPS["moderate"] + TASK_GROUPS["extended"]


def get_task(name: str) -> EvalTask:
    """The task `--tasks` names; a [`UsageError`] listing the tasks and groups for an unknown name."""
    if name not in TASKS:
        raise UsageError(f"--tasks {name}: unknown task; use {ALL_TASKS} or a group {[*TASK_GROUPS, 'all']}.")
    return TASKS[name]
