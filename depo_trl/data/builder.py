"""RULER-style construction of DePO rows: short and long contexts around the same question (docs/design.md, "Data").

Token budgets are counted on the fully rendered chat prompt with the target tokenizer. To stay fast at 15K-token
budgets, each paragraph's token cost is counted once, the per-question template overhead once, and the selection adds
them up; then every built prompt is rendered and counted exactly once, and trimmed in the rare case the sum was short.
"""

import random
import statistics
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from .sources import Paragraph, QAExample
from .template import PASSAGE_FRAME, format_passages, render_prompt, user_messages


SKIP_GOLD_TOO_LONG = "gold paragraphs exceed the short budget"


class PromptTokenCounter:
    """Counts tokens of prompts rendered with the tokenizer's chat template (generation prompt included)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                f"The tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat template; DePO prompts are "
                "conversational and their budgets are counted on the rendered chat prompt. Use an instruct model's "
                "tokenizer or set `tokenizer.chat_template`."
            )
        self.tokenizer = tokenizer

    def render(self, messages: list[dict[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def count(self, contents: Sequence[str]) -> list[int]:
        texts = [self.render(user_messages(content)) for content in contents]
        return [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def count_plain(self, texts: Sequence[str]) -> list[int]:
        return [len(ids) for ids in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


def _lazy_permutation(size: int, rng: random.Random) -> Iterator[int]:
    """A uniformly random permutation of range(size), produced lazily (Fisher-Yates with a sparse swap table)."""
    swapped: dict[int, int] = {}
    for position in range(size):
        pick = rng.randrange(position, size)
        yield swapped.get(pick, pick)
        swapped[pick] = swapped.get(position, position)


@dataclass
class BuiltContexts:
    """The paragraphs of a question's short and long contexts, in prompt order, and the rendered user messages."""

    short: list[Paragraph]
    long: list[Paragraph]
    short_content: str
    long_content: str
    short_tokens: int
    long_tokens: int


@dataclass
class BuildReport:
    built: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


class ContextBuilder:
    """Builds (short, long) prompt pairs for `QAExample`s, with distractors from a shared paragraph pool.

    Short context: the gold paragraphs, then the row's own non-supporting paragraphs, then paragraphs of other rows,
    until the next one would exceed `short_budget`. Long context: every short paragraph plus more paragraphs of other
    rows until `long_budget`. Both are shuffled (independently). A paragraph whose title equals a gold title is never a
    distractor. Everything is a function of `seed` and the row id.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        pool: Sequence[QAExample],
        short_budget: int = 1536,
        long_budget: int = 15360,
        seed: int = 0,
    ):
        if not 0 < short_budget <= long_budget:
            raise ValueError(f"Need 0 < short_budget <= long_budget, got {short_budget} and {long_budget}.")
        self.counter = PromptTokenCounter(tokenizer)
        self.short_budget, self.long_budget, self.seed = short_budget, long_budget, seed
        unique: dict[Paragraph, None] = {}
        for example in pool:
            for paragraph in (*example.gold, *example.own_distractors):
                unique.setdefault(paragraph, None)
        self.pool = list(unique)
        self._cost = self._paragraph_costs(self.pool)

    def _paragraph_costs(self, paragraphs: Sequence[Paragraph], batch_size: int = 1024) -> dict[Paragraph, int]:
        costs = {}
        for start in range(0, len(paragraphs), batch_size):
            batch = paragraphs[start : start + batch_size]
            framed = [PASSAGE_FRAME.format(title=p.title, text=p.text) for p in batch]
            costs.update(zip(batch, self.counter.count_plain(framed)))
        return costs

    def cost(self, paragraph: Paragraph) -> int:
        if paragraph not in self._cost:
            self._cost.update(self._paragraph_costs([paragraph]))
        return self._cost[paragraph]

    def build(
        self, examples: Sequence[QAExample], show_progress: bool = True
    ) -> tuple[list[dict[str, Any]], BuildReport]:
        """Build one DePO row per usable example; the report counts the skipped ones by reason."""
        rows, report = [], BuildReport()
        for example in tqdm(examples, desc="Building DePO rows", unit="row", disable=not show_progress):
            row = self.build_row(example)
            if isinstance(row, str):
                report.skip(row)
            else:
                rows.append(row)
        report.built = len(rows)
        return rows, report

    def build_row(self, example: QAExample) -> dict[str, Any] | str:
        """A DePO row, or the reason the example was skipped."""
        contexts = self.build_contexts(example)
        if isinstance(contexts, str):
            return contexts
        return {
            "id": example.id,
            "prompt": user_messages(contexts.short_content),
            "long_prompt": user_messages(contexts.long_content),
            "answer": list(example.answers),
            "question": example.question,
            "short_tokens": contexts.short_tokens,
            "long_tokens": contexts.long_tokens,
            "gold_titles": [p.title for p in example.gold],
        }

    def build_contexts(self, example: QAExample) -> BuiltContexts | str:
        """The short and long contexts of `example` within their budgets, or the reason it was skipped."""
        rng = random.Random(f"{self.seed}:{example.id}")
        gold_titles = {p.title for p in example.gold}
        own = set(example.gold) | set(example.own_distractors)
        overhead = self.counter.count([render_prompt("", example.question)])[0]

        short = list(example.gold)
        room = self.short_budget - overhead - sum(self.cost(p) for p in short)
        if room < 0:
            return SKIP_GOLD_TOO_LONG
        hard_negatives = [p for p in dict.fromkeys(example.own_distractors) if p.title not in gold_titles]
        rng.shuffle(hard_negatives)
        pool_order = (
            self.pool[index]
            for index in _lazy_permutation(len(self.pool), rng)
            if self.pool[index] not in own and self.pool[index].title not in gold_titles
        )
        short_fill = self._fill(hard_negatives, room)
        room -= sum(self.cost(p) for p in short_fill)
        if len(short_fill) == len(hard_negatives):  # all hard negatives fit: continue with other rows' paragraphs
            short_fill += self._fill(pool_order, room)
        short += short_fill

        long_room = self.long_budget - overhead - sum(self.cost(p) for p in short)
        long_fill = self._fill(pool_order, long_room)

        short_order, long_order = list(short), short + long_fill
        rng.shuffle(short_order)
        rng.shuffle(long_order)
        return self._fit_budgets(
            example, short_order, long_order, removable_short=short_fill, removable_long=long_fill
        )

    def _fill(self, candidates, room: int) -> list[Paragraph]:
        """Take candidates in order until the next one would not fit in `room` tokens."""
        taken = []
        for paragraph in candidates:
            cost = self.cost(paragraph)
            if cost > room:
                break
            taken.append(paragraph)
            room -= cost
        return taken

    def _fit_budgets(self, example, short, long, removable_short, removable_long) -> BuiltContexts | str:
        """Count the rendered prompts exactly; drop the last-added distractors while a prompt is over its budget."""
        removable_short, removable_long = list(removable_short), list(removable_long)
        while True:
            short_content = render_prompt(format_passages(short), example.question)
            long_content = render_prompt(format_passages(long), example.question)
            short_tokens, long_tokens = self.counter.count([short_content, long_content])
            if short_tokens <= self.short_budget and long_tokens <= self.long_budget:
                break
            if short_tokens > self.short_budget:
                if not removable_short:
                    return SKIP_GOLD_TOO_LONG
                dropped = removable_short.pop()
                short.remove(dropped)
                long.remove(dropped)  # keeps short a subset of long; the freed room stays unused
            elif removable_long:
                long.remove(removable_long.pop())
            else:  # only short paragraphs left in the long prompt and it still does not fit
                return SKIP_GOLD_TOO_LONG
        return BuiltContexts(short, long, short_content, long_content, short_tokens, long_tokens)


def length_statistics(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The paper's Table 1 for built rows: count, average and max tokens of short and long prompts."""
    if not rows:
        return {"count": 0}
    short = [row["short_tokens"] for row in rows]
    long = [row["long_tokens"] for row in rows]
    return {
        "count": len(rows),
        "short_avg_tokens": round(statistics.fmean(short), 1),
        "short_max_tokens": max(short),
        "long_avg_tokens": round(statistics.fmean(long), 1),
        "long_max_tokens": max(long),
    }


def format_statistics(stats: dict[str, float], skipped: dict[str, int]) -> str:
    """A Markdown table of `length_statistics`, followed by the skipped rows by reason."""
    lines = [
        "| context | rows | avg tokens | max tokens |",
        "|---|---:|---:|---:|",
    ]
    if stats.get("count"):
        lines.append(f"| short | {stats['count']} | {stats['short_avg_tokens']} | {stats['short_max_tokens']} |")
        lines.append(f"| long | {stats['count']} | {stats['long_avg_tokens']} | {stats['long_max_tokens']} |")
    skipped_lines = [f"- {reason}: {count}" for reason, count in sorted(skipped.items())] or ["- none"]
    return "\n".join([*lines, "", "Skipped rows:", *skipped_lines])
