"""What every evaluation task is made of: its examples, its decoding, the ways it is asked and read; and what the task
modules share: the prompts several tasks use, LongBench's truncation, and the errors for data that is not there.
"""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from ...data.template import ANSWER_FORMAT, INSTRUCTION, render_prompt
from ...user_errors import UsageError, hub_offline
from ..scoring import Score, ScoringRules
from ..sources import DataFile, HubFile, HubSplit


@dataclass
class EvalExample:
    """One question of a benchmark: its id, the context and question texts, and the gold answers."""

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


def every_style(prompt_format: PromptFormat) -> dict[str, PromptFormat]:
    """A task asked one way whatever `--prompt-style` says."""
    return dict.fromkeys(PROMPT_STYLES, prompt_format)


Loader = Callable[[str | None, PreTrainedTokenizerBase], list[EvalExample]]


@dataclass(frozen=True)
class EvalTask:
    """Everything the harness knows about one benchmark.

    Attributes:
        name: what `--tasks` calls it, and its file names under `--output-dir`.
        label: its column in `results.md`.
        group: `moderate` or `extended` (Table 2's two halves), `ruler`, or None (a table of its own).
        data: the files it reads under `--data-dir`, each with its source (what `python -m
            depo_trl.evaluation.fetch` fetches).
        load: its examples, from `--data-dir` (or the Hub) with the evaluated model's tokenizer.
        formats: how it is asked and read under each `--prompt-style`.
        metric: the metric its table cell shows: `f1` (EM is in scores.json beside it) or `accuracy`.
        decoding: greedy, or the sampling the benchmark's own evaluation uses.
    """

    name: str
    label: str
    group: str | None
    data: tuple[DataFile, ...]
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


# --- Prompts several tasks share -------------------------------------------------------------------------------------


def template_prompt(example: EvalExample) -> str:
    """The training template (`depo_trl/data/template.py`)."""
    return render_prompt(example.context, example.question)


def qwenlong_prompt(example: EvalExample) -> str:
    """QwenLong-L1's DocMath and Frames prompt (`template_0shot` in its eval/docmath.py and eval/frames.py): the
    training template with the question unlabelled."""
    return f"{INSTRUCTION}\n\n<text>\n{example.context}\n</text>\n\n{example.question}\n\n{ANSWER_FORMAT}"


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


# --- Data that is not under --data-dir ------------------------------------------------------------------------------


def not_in_data_dir(data_dir: str | None, name: str) -> str:
    """The start of the message for a file that is not under `--data-dir`."""
    return f"--data-dir {data_dir}: no {name} there" if data_dir else f"--data-dir not given (for {name})"


def fetch_hint(data_dir: str | None, task: str) -> str:
    """The command that puts `task`'s files under `--data-dir`."""
    return f"python -m depo_trl.evaluation.fetch --data-dir {data_dir or 'DATA_DIR'} --tasks {task}"


def missing_data(data: DataFile, data_dir: str | None, task: str) -> UsageError:
    """The error for a file `task` reads only from `--data-dir`, naming its source and the command that fetches it."""
    return UsageError(
        f"{not_in_data_dir(data_dir, data.name)} (task {task}); fetch it with {fetch_hint(data_dir, task)}, or put it "
        f"there yourself ({data.name}: {data.origin})."
    )


def hub_records(data: HubFile | HubSplit, data_dir: str | None, task: str) -> list[dict]:
    """The records of a file that is not under `--data-dir`, read from the Hub where it lives (or the local Hub
    cache); a [`UsageError`] that names both places when neither has it."""
    missing = not_in_data_dir(data_dir, data.name)
    fix = f"fetch it with {fetch_hint(data_dir, task)} where the Hub is reachable, or put {data.name} under --data-dir"
    if hub_offline() and not data.fetchable_offline():
        raise UsageError(f"{missing}, and the Hub is unreachable (offline mode) for {data.origin}; {fix}.")
    try:
        return data.records()
    except Exception as error:  # the Hub clients raise many types; all mean the same thing to the user
        reason = " ".join(str(error).split())[:200] or type(error).__name__
        raise UsageError(f"{missing}, and loading {data.origin} failed ({reason}); {fix}.") from None
