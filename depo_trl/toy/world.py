"""The toy world: seeded synthetic long-context QA small enough for a laptop CPU.

Each row draws its own small world from closed name pools: people (born in a city, employed by a company) and cities
(in a country). Documents are key-value-like passages, one entity each, so binding a fact to its entity is an easy
pattern for a tiny transformer. Questions are 1-hop (birthplace, employer) or 2-hop (country of birth). The short
context holds the gold documents and a few distractor documents; the long context adds many more, re-shuffled. Rows
have the real builder's columns (`prompt`, `long_prompt`, `answer`, ...) and the same passage layout; the instruction
lines of the real template are left out, which keeps a CPU step about 1.5x cheaper. Completions end the same way:
"Therefore , the answer is X .".

    python -m depo_trl.toy.world --output-dir data/toy --num-rows 2000
"""

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from transformers import PreTrainedTokenizerFast

from ..data.sources import Paragraph
from ..data.template import user_messages
from ..model_utils import build_word_level_tokenizer
from ..user_errors import ArgumentParser, positive_int, reports_usage_errors, writable_folder


def _names(onsets: str, vowels: str, codas: str, count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    names: set[str] = set()
    while len(names) < count:
        names.add((rng.choice(onsets) + rng.choice(vowels) + rng.choice(onsets).lower() + rng.choice(codas)).title())
    return sorted(names)


PEOPLE = _names("BDFGKLMNPRSTVZ", "aeiou", ["a", "o", "i", "en", "us"], 48, seed=1)
CITIES = _names("BCDHLMNRSTV", "aeiouy", ["ton", "via", "mar", "dor", "ix"], 32, seed=2)
COUNTRIES = _names("ADEFGIKOPU", "aeiou", ["land", "stan", "ria", "ca"], 12, seed=3)
COMPANIES = _names("QXZJWKV", "aeiou", ["corp", "tek", "ware", "lab"], 20, seed=4)
ANSWER_TYPES = {"city": CITIES, "company": COMPANIES, "country": COUNTRIES}
QUESTIONS = {
    "born": ("Where was {person} born ?", "city"),
    "employer": ("Who employs {person} ?", "company"),
    "country": ("In which country was {person} born ?", "country"),
}
# Every other word the toy prompts and answers use.
TEMPLATE_WORDS = (
    "user assistant system Passage : Question Therefore , the answer is . born employer "
    f"country {' '.join(QUESTIONS[kind][0] for kind in QUESTIONS)} " + " ".join(str(i) for i in range(1, 100))
)


def build_toy_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer over the toy world's closed vocabulary, with a ChatML chat template."""
    return build_word_level_tokenizer([TEMPLATE_WORDS, *PEOPLE, *CITIES, *COUNTRIES, *COMPANIES])


@dataclass
class ToyWorldConfig:
    short_distractors: int = 3
    long_distractors: int = 24
    two_hop_fraction: float = 0.3


def render_toy_prompt(paragraphs: Sequence[Paragraph], question: str) -> str:
    """`Passage 1 : Rala born : Dyvmar . employer : Wextek . Passage 2 : ... Question : Where was Rala born ?`"""
    passages = " ".join(f"Passage {i} : {p.title} {p.text}" for i, p in enumerate(paragraphs, start=1))
    return f"{passages} Question : {question}"


def person_doc(person: str, city: str, company: str) -> Paragraph:
    return Paragraph(person, f"born : {city} . employer : {company} .")


def city_doc(city: str, country: str) -> Paragraph:
    return Paragraph(city, f"country : {country} .")


def reasoning_chain(kind: str, person: str, city: str, company: str, country: str) -> str:
    """The target completion: the facts used, then the answer in the trained format."""
    if kind == "born":
        steps, answer = f"{person} born : {city} .", city
    elif kind == "employer":
        steps, answer = f"{person} employer : {company} .", company
    else:
        steps, answer = f"{person} born : {city} . {city} country : {country} .", country
    return f"{steps} Therefore , the answer is {answer} ."


def generate_row(index: int, seed: int, config: ToyWorldConfig | None = None) -> dict[str, Any]:
    """One toy row, a pure function of `(seed, index)` and the config (default: `ToyWorldConfig()`)."""
    config = config or ToyWorldConfig()
    rng = random.Random(f"toy:{seed}:{index}")
    total = config.short_distractors + config.long_distractors
    people = rng.sample(PEOPLE, min(len(PEOPLE), total + 1))
    cities = rng.sample(CITIES, min(len(CITIES), total + 1))
    city_of = {person: rng.choice(cities) for person in people}
    company_of = {person: rng.choice(COMPANIES) for person in people}
    country_of = {city: rng.choice(COUNTRIES) for city in cities}

    subject = people[0]
    kind = "country" if rng.random() < config.two_hop_fraction else rng.choice(["born", "employer"])
    city, company, country = city_of[subject], company_of[subject], country_of[city_of[subject]]
    gold = [person_doc(subject, city, company)] + ([city_doc(city, country)] if kind == "country" else [])

    # Distractors: documents about other people and other cities; never one about a gold entity.
    candidates = [person_doc(p, city_of[p], company_of[p]) for p in people[1:]]
    candidates += [city_doc(c, country_of[c]) for c in cities if c != city]
    rng.shuffle(candidates)
    short = gold + candidates[: config.short_distractors]
    long = short + candidates[config.short_distractors : total]
    short_order, long_order = list(short), list(long)
    rng.shuffle(short_order)
    rng.shuffle(long_order)

    question_template, answer_type = QUESTIONS[kind]
    question = question_template.format(person=subject)
    return {
        "id": f"toy-{seed}-{index}",
        "prompt": user_messages(render_toy_prompt(short_order, question)),
        "long_prompt": user_messages(render_toy_prompt(long_order, question)),
        "answer": [{"born": city, "employer": company, "country": country}[kind]],
        "question": question,
        "question_type": kind,
        "answer_type": answer_type,
        "gold_titles": [p.title for p in gold],
        "solution": reasoning_chain(kind, subject, city, company, country),
    }


def generate_rows(num_rows: int, seed: int = 0, config: ToyWorldConfig | None = None) -> list[dict[str, Any]]:
    return [generate_row(index, seed, config) for index in range(num_rows)]


def warm_start_rows(num_rows: int, seed: int, max_distractors: int) -> list[dict[str, Any]]:
    """Supervised rows for the warm start: prompt + reasoning chain, with 0..`max_distractors` distractor documents
    (uniformly), a curriculum in one pass: gold-only rows teach where facts live, the others to pick the right one."""
    rows = []
    for index in range(num_rows):
        distractors = random.Random(f"warm:{seed}:{index}").randint(0, max_distractors)
        row = generate_row(index, seed, ToyWorldConfig(short_distractors=distractors, long_distractors=0))
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
        f"Saved {len(dataset)} toy rows to {args.output_dir}; short-context chance EM {mean_chance_em(dataset):.3f}."
    )


if __name__ == "__main__":
    main()
