"""The RULER-style context builder (`depo_trl/data/builder.py`) on real-format fixtures, through the build command:
every row keeps its gold passages within the budgets, prefers its own hard negatives, is reproducible, and the
skipped rows are counted by reason."""

import json

import pytest

from depo_trl.data.sources import from_musique, read_records
from depo_trl.model_utils import load_tokenizer

from . import INPUTS, LONG_BUDGET, SHORT_BUDGET, parse_passages, run_build


def rendered_length(tokenizer, messages) -> int:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("source", sorted(INPUTS))
def test_every_built_row_satisfies_the_invariants(tmp_path, fixture_model_dir, source):
    dataset, stats = run_build(tmp_path, fixture_model_dir, source)
    path, adapter = INPUTS[source]
    examples = {example.id: example for example in map(adapter, read_records(path))}
    tokenizer = load_tokenizer(fixture_model_dir)
    assert len(dataset) == len(examples) == stats["count"]
    for row in dataset:
        example = examples[row["id"]]
        short, long = parse_passages(row["prompt"][0]["content"]), parse_passages(row["long_prompt"][0]["content"])
        gold = [(p.title, p.text) for p in example.gold]
        assert set(gold) <= set(short) and set(gold) <= set(long)
        assert set(short) <= set(long) and len(long) > len(short)
        gold_titles = {title for title, _ in gold}
        assert [p for p in long if p[0] in gold_titles and p not in gold] == []  # no distractor with a gold title
        assert row["short_tokens"] == rendered_length(tokenizer, row["prompt"]) <= SHORT_BUDGET
        assert row["long_tokens"] == rendered_length(tokenizer, row["long_prompt"]) <= LONG_BUDGET
        question = f"Question: {example.question}"
        assert question in row["prompt"][0]["content"] and question in row["long_prompt"][0]["content"]
        assert row["prompt"][0]["content"].split("</text>")[1] == row["long_prompt"][0]["content"].split("</text>")[1]
        assert row["answer"] == example.answers and row["gold_titles"] == [p.title for p in example.gold]
    if source != "2wikimqa":  # two records make a pool too small to fill the long budget
        assert stats["long_avg_tokens"] > 0.9 * LONG_BUDGET


def test_musique_short_context_prefers_the_rows_own_hard_negatives(tmp_path, fixture_model_dir):
    dataset, _ = run_build(tmp_path, fixture_model_dir)
    examples = {example.id: example for example in map(from_musique, read_records(INPUTS["musique"][0]))}
    distractor_counts = []
    for row in dataset:
        own = {(p.title, p.text) for p in examples[row["id"]].own_distractors}
        gold = {(p.title, p.text) for p in examples[row["id"]].gold}
        distractors = [p for p in parse_passages(row["prompt"][0]["content"]) if p not in gold]
        assert all(p in own for p in distractors)  # 18 own negatives never all fit in 700 tokens
        distractor_counts.append(len(distractors))
    assert sum(distractor_counts) >= len(dataset)


def test_same_seed_same_rows_and_another_seed_another_order(tmp_path, fixture_model_dir):
    first, _ = run_build(tmp_path / "a", fixture_model_dir, seed=0)
    again, _ = run_build(tmp_path / "b", fixture_model_dir, seed=0)
    other, _ = run_build(tmp_path / "c", fixture_model_dir, seed=1)
    assert first.to_list() == again.to_list()
    assert [r["long_prompt"] for r in first] != [r["long_prompt"] for r in other]


def test_skipped_rows_are_counted_by_reason(tmp_path, fixture_model_dir):
    records = list(read_records(INPUTS["musique"][0]))
    unanswerable = {**records[0], "id": "unanswerable", "answerable": False}
    no_answer = {**records[1], "answer": ""}  # a record without the field at all stops the build (test_faults.py)
    huge_gold = json.loads(json.dumps(records[2]))
    huge_gold["id"] = "huge"
    for paragraph in huge_gold["paragraphs"]:
        if paragraph["is_supporting"]:
            paragraph["paragraph_text"] = " ".join([paragraph["paragraph_text"]] * 20)
    input_path = tmp_path / "mixed.jsonl"
    input_path.write_text("\n".join(json.dumps(r) for r in [*records[3:], unanswerable, no_answer, huge_gold]))
    dataset, stats = run_build(tmp_path, fixture_model_dir, input_path=str(input_path))
    assert len(dataset) == len(records) - 3
    assert stats["skipped"] == {
        "not answerable": 1,
        "empty field `answer`": 1,
        "gold paragraphs exceed the short budget": 1,
    }
