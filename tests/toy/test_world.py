"""The toy world (`depo_trl/toy/world.py`): the generator's invariants, its tokenizer, the chance baseline and the
warm start's curriculum."""

import re

import pytest

from depo_trl.toy.world import (
    CITIES,
    COMPANIES,
    PEOPLE,
    ToyWorldConfig,
    build_toy_tokenizer,
    chance_em,
    generate_row,
    generate_rows,
    warm_start_rows,
)
from depo_trl.user_errors import UsageError


def documents(prompt: list[dict]) -> list[tuple[str, str, str]]:
    """(person, city, company) of each document of a toy prompt, parsed independently of the generator."""
    content = prompt[-1]["content"].split(" Question : ")[0]
    return [tuple(line.split()) for line in content.split(" .") if line.strip()]


def answer_from(docs: list[tuple[str, str, str]], question: str) -> str:
    """Answer a toy question using `docs` only; fails unless exactly one document is about the person asked."""
    person = re.search(r"(?:was|employs) (\w+)", question).group(1)
    (facts,) = [doc for doc in docs if doc[0] == person]
    return facts[1] if question.startswith("Where") else facts[2]


def test_name_pools_are_disjoint_and_large_enough_for_the_longest_sweep():
    assert not (set(PEOPLE) & set(CITIES) or set(PEOPLE) & set(COMPANIES) or set(CITIES) & set(COMPANIES))
    assert generate_row(0, 0, ToyWorldConfig(short_distractors=3, long_distractors=60))


@pytest.mark.parametrize("seed", [0, 7])
def test_generator_invariants(seed):
    rows = generate_rows(300, seed=seed)
    assert {row["question_type"] for row in rows} == {"born", "employer"}
    for row in rows:
        short, long = documents(row["prompt"]), documents(row["long_prompt"])
        assert set(short) <= set(long) and len(short) == 1 + 3 and len(long) == 1 + 24
        for docs in (short, long):  # one document per person, one person per city: nothing to contradict the gold
            assert len({doc[0] for doc in docs}) == len({doc[1] for doc in docs}) == len(docs)
            assert all(len(doc) == 3 for doc in docs)
        gold = [doc for doc in short if doc[0] in row["gold_titles"]]
        assert len(gold) == 1 and answer_from(gold, row["question"]) == row["answer"][0]
        assert answer_from(long, row["question"]) == row["answer"][0]
        distractors = [doc for doc in long if doc not in gold]
        with pytest.raises(ValueError):  # the distractors alone do not answer it
            answer_from(distractors, row["question"])
        assert row["solution"].endswith(f"Therefore , the answer is {row['answer'][0]} .")
    assert generate_rows(300, seed=seed) == rows
    assert generate_rows(300, seed=seed + 1) != rows


def test_reasoning_chains_copy_the_subjects_document():
    for row in generate_rows(50):
        person, city, company = next(doc for doc in documents(row["prompt"]) if doc[0] in row["gold_titles"])
        expected = f"{person} {city} ." if row["question_type"] == "born" else f"{person} {city} {company} ."
        assert row["solution"].startswith(expected)


@pytest.mark.parametrize(("short", "long"), [(-1, 3), (4, 3), (3, 64)])
def test_impossible_distractor_counts_are_refused(short, long):
    with pytest.raises(UsageError, match="need 0 <= short <= long <= 63"):
        ToyWorldConfig(short_distractors=short, long_distractors=long)


def test_rows_tokenize_without_unknown_words():
    tokenizer = build_toy_tokenizer()
    for row in generate_rows(100) + [generate_row(0, 0, ToyWorldConfig(long_distractors=63))]:
        for key in ("prompt", "long_prompt"):
            text = tokenizer.apply_chat_template(row[key], tokenize=False, add_generation_prompt=True)
            assert tokenizer.unk_token_id not in tokenizer(text)["input_ids"]
        assert tokenizer.unk_token_id not in tokenizer(row["solution"])["input_ids"]


def test_chance_baseline_on_a_hand_made_row():
    (city_a, city_b, city_c), (company_a, company_b) = CITIES[:3], COMPANIES[:2]
    content = (
        f"Rala {city_a} {company_a} . Vonus {city_b} {company_a} . Kemi {city_c} {company_b} . "
        "Question : Where was Rala born ?"
    )
    row = {"prompt": [{"role": "user", "content": content}], "answer": [city_a], "answer_type": "city"}
    assert chance_em(row) == pytest.approx(1 / 3)  # three cities in the context
    employer = {**row, "answer": [company_a], "answer_type": "company"}
    assert chance_em(employer) == pytest.approx(1 / 2)  # two distinct companies
    long_content = content.replace("Question", f"Tomen {CITIES[3]} {COMPANIES[2]} . Question")
    assert chance_em({**employer, "long_prompt": [{"role": "user", "content": long_content}]}, "long") == 1 / 3
    assert chance_em({**row, "answer": ["Nowhere"]}) == 0.0


def test_warm_start_rows_are_a_distractor_curriculum():
    rows = warm_start_rows(300, seed=0, max_distractors=4)
    assert {len(documents(row["prompt"])) - 1 for row in rows} == {0, 1, 2, 3, 4}
    assert all("Therefore , the answer is" in row["completion"][0]["content"] for row in rows)
