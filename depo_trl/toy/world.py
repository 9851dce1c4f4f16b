"""The toy world: seeded synthetic long-context QA small enough for a laptop CPU.

Each row draws its own small world from closed name pools: people, each born in a city (no two people of a row share
one) and employed by a company. A document states one person's facts as a key-value line, `Rala Dyvmar Wextek .`
(the person, the city, the employer). Questions ask for a person's city or employer. The completion copies its way to
the answer, each step a copy from the context that a small transformer learns: the person, the city that follows the
person in the documents, then (for the employer) the company that follows the city, then the answer:
`Rala Dyvmar Wextek . Therefore , the answer is Wextek .`. The short context holds the subject's document and a few
others; the long context holds more, re-shuffled. A model warmed up on short contexts answers them well and loses
track as the context grows: the regime DePO is for. Rows have the real builder's columns (`prompt`, `long_prompt`,
`answer`, ...); the instruction lines of the real template are left out, which keeps a CPU step cheap.

    python -m depo_trl.toy.world --output-dir data/toy --num-rows 2000
"""

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerFast

from ..data.template import user_messages
from ..models.tiny import build_word_level_tokenizer
from ..user_errors import ArgumentParser, UsageError, positive_int, reports_usage_errors, writable_folder


def _names(onsets: str, vowels: str, codas: Sequence[str], count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    names: set[str] = set()
    while len(names) < count:
        names.add((rng.choice(onsets) + rng.choice(vowels) + rng.choice(onsets).lower() + rng.choice(codas)).title())
    return sorted(names)


# Disjoint pools (their endings differ), so a name says which pool it is from
PEOPLE = _names("BDFGKLMNPRSTVZ", "aeiou", ["a", "o", "i", "en", "us"], 64, seed=1)
CITIES = _names("BCDHLMNRSTV", "aeiouy", ["ton", "via", "mar", "dor", "ix"], 64, seed=2)
COMPANIES = _names("QXZJWKV", "aeiou", ["corp", "tek", "ware", "lab"], 24, seed=4)
ANSWER_TYPES = {"city": CITIES, "company": COMPANIES}
QUESTIONS = {"born": ("Where was {person} born ?", "city"), "employer": ("Who employs {person} ?", "company")}
# Every other word the toy prompts and answers use (the warm start's vocabulary: changing it needs a new warm start)
TEMPLATE_WORDS = "Question : Where was born ? Who employs Therefore , the answer is . user assistant system"
# Every person of a row has a city of their own, so a context holds at most this many documents
MAX_DOCUMENTS = min(len(PEOPLE), len(CITIES))


def build_toy_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer over the toy world's closed vocabulary, with a ChatML chat template."""
    return build_word_level_tokenizer([TEMPLATE_WORDS, *PEOPLE, *CITIES, *COMPANIES])


@dataclass
class ToyWorldConfig:
    """Distractor documents beside the subject's own: `short_distractors` in the short context, `long_distractors`
    (a superset) in the long one."""

    short_distractors: int = 3
    long_distractors: int = 24

    def __post_init__(self):
        if not 0 <= self.short_distractors <= self.long_distractors <= MAX_DOCUMENTS - 1:
            raise UsageError(
                f"short_distractors {self.short_distractors}, long_distractors {self.long_distractors}: need "
                f"0 <= short <= long <= {MAX_DOCUMENTS - 1} (the name pools give each row {MAX_DOCUMENTS} people)."
            )


def render_toy_prompt(documents: Sequence[str], question: str) -> str:
    """`Rala Dyvmar Wextek . Vonus Bexmar Zaqcorp . Question : Who employs Rala ?`"""
    return f"{' '.join(documents)} Question : {question}"


def reasoning_chain(kind: str, person: str, city: str, company: str) -> str:
    """The target completion: the facts copied from the subject's document, then the answer in the trained format."""
    if kind == "born":
        return f"{person} {city} . Therefore , the answer is {city} ."
    return f"{person} {city} {company} . Therefore , the answer is {company} ."


def generate_row(index: int, seed: int, config: ToyWorldConfig | None = None) -> dict[str, Any]:
    """One toy row, a pure function of `(seed, index)` and the config (default: `ToyWorldConfig()`)."""
    config = config or ToyWorldConfig()
    rng = random.Random(f"toy:{seed}:{index}")
    people = rng.sample(PEOPLE, config.long_distractors + 1)
    city_of = dict(zip(people, rng.sample(CITIES, len(people))))
    company_of = {person: rng.choice(COMPANIES) for person in people}
    document = {person: f"{person} {city_of[person]} {company_of[person]} ." for person in people}

    subject = people[0]
    kind = rng.choice(sorted(QUESTIONS))
    # people[1:] is a random order already: the short context's distractors are the first few of the long one's
    short = [document[person] for person in people[: config.short_distractors + 1]]
    long = [document[person] for person in people]
    rng.shuffle(short)
    rng.shuffle(long)

    question_template, answer_type = QUESTIONS[kind]
    question = question_template.format(person=subject)
    answer = city_of[subject] if kind == "born" else company_of[subject]
    return {
        "id": f"toy-{seed}-{index}",
        "prompt": user_messages(render_toy_prompt(short, question)),
        "long_prompt": user_messages(render_toy_prompt(long, question)),
        "answer": [answer],
        "question": question,
        "question_type": kind,
        "answer_type": answer_type,
        "gold_titles": [subject],
        "solution": reasoning_chain(kind, subject, city_of[subject], company_of[subject]),
    }


def generate_rows(num_rows: int, seed: int = 0, config: ToyWorldConfig | None = None) -> list[dict[str, Any]]:
    return [generate_row(index, seed, config) for index in range(num_rows)]


def warm_start_rows(num_rows: int, seed: int, max_distractors: int) -> list[dict[str, Any]]:
    """Supervised rows for the warm start: prompt + reasoning chain, with 0..`max_distractors` distractor documents
    (uniformly), a curriculum in one pass: gold-only rows teach where facts live, the others to pick the right one."""
    rows = []
    for index in range(num_rows):
        distractors = random.Random(f"warm:{seed}:{index}").randint(0, max_distractors)
        row = generate_row(index, seed, ToyWorldConfig(short_distractors=distractors, long_distractors=distractors))
        rows.append({"prompt": row["prompt"], "completion": [{"role": "assistant", "content": row["solution"]}]})
    return rows


def chance_em(row: dict[str, Any], context: str = "short") -> float:
    """EM of guessing uniformly among the names of the answer's type that appear in the context.

    The baseline a model reaches if it knows the answer format and type but not which entity a fact belongs to.
    """
    prompt = row["prompt" if context == "short" else "long_prompt"][-1]["content"]
    words = set(prompt.split())
    candidates = [name for name in ANSWER_TYPES[row["answer_type"]] if name in words]
    return 1.0 / len(candidates) if row["answer"][0] in candidates else 0.0


def mean_chance_em(rows: Sequence[dict[str, Any]], context: str = "short") -> float:
    return sum(chance_em(row, context) for row in rows) / max(len(rows), 1)


@reports_usage_errors("python -m depo_trl.toy.world")
def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m depo_trl.toy.world", description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--num-rows", type=positive_int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--short-distractors", type=int, default=ToyWorldConfig.short_distractors)
    parser.add_argument("--long-distractors", type=int, default=ToyWorldConfig.long_distractors)
    args = parser.parse_args(argv)
    writable_folder("--output-dir", args.output_dir)
    from datasets import Dataset, DatasetDict

    config = ToyWorldConfig(args.short_distractors, args.long_distractors)
    dataset = Dataset.from_list(generate_rows(args.num_rows, args.seed, config))
    DatasetDict({"train": dataset}).save_to_disk(args.output_dir)
    print(
        f"Saved {len(dataset)} toy rows to {args.output_dir}; chance EM {mean_chance_em(dataset):.3f} (short), "
        f"{mean_chance_em(dataset, 'long'):.3f} (long)."
    )


if __name__ == "__main__":
    main()
