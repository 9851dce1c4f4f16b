"""The RULER-style builder and its CLI on real-format fixtures (tests/fixtures, see SOURCES.md there)."""

import json
import os
import re

import pytest
from datasets import load_from_disk

from depo_trl import DePOConfig, DePOTrainer
from depo_trl.data.build import main as build_main
from depo_trl.data.sources import Paragraph, from_hotpotqa, from_musique, read_records
from depo_trl.data.template import format_passages, render_prompt
from depo_trl.model_utils import load_tokenizer
from depo_trl.models.tiny import build_tiny_qwen2, build_word_level_tokenizer, save_model_and_tokenizer
from depo_trl.rewards import em_reward


FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
INPUTS = {
    "musique": (os.path.join(FIXTURES, "musique_sample.jsonl"), from_musique),
    "hotpotqa": (os.path.join(FIXTURES, "hotpotqa_distractor_sample.json"), from_hotpotqa),
    "2wikimqa": (os.path.join(FIXTURES, "2wikimultihopqa_sample.json"), from_hotpotqa),
}
SHORT_BUDGET, LONG_BUDGET = 700, 2500


@pytest.fixture(scope="module")
def fixture_model_dir(tmp_path_factory):
    """A tiny model whose word-level tokenizer was trained on every fixture text and the prompt template."""
    texts = [render_prompt(format_passages([Paragraph("", "")]), "")]
    for path, adapter in INPUTS.values():
        for record in read_records(path):
            example = adapter(record)
            texts += [example.question, *example.answers]
            texts += [f"{p.title} {p.text}" for p in (*example.gold, *example.own_distractors)]
    tokenizer = build_word_level_tokenizer(texts)
    model = build_tiny_qwen2(tokenizer)
    return save_model_and_tokenizer(model, tokenizer, tmp_path_factory.mktemp("fixture-model"))


def run_build(tmp_path, model_dir, source="musique", seed=0, input_path=None, **overrides):
    output_dir = str(tmp_path / f"{source}-seed{seed}")
    options = {"--short-budget": SHORT_BUDGET, "--long-budget": LONG_BUDGET, **overrides}
    argv = ["--source", source, "--input", input_path or INPUTS[source][0], "--tokenizer", model_dir]
    argv += ["--seed", str(seed), "--output-dir", output_dir, "--no-progress"]
    for flag, value in options.items():
        argv += [flag, str(value)]
    build_main(argv)
    with open(os.path.join(output_dir, "stats.json")) as handle:
        return load_from_disk(output_dir)["train"], json.load(handle)


def parse_passages(content: str) -> list[tuple[str, str]]:
    """(title, text) of each passage in a rendered prompt, parsed independently of the builder."""
    body = content.split("<text>\n", 1)[1].split("\n</text>", 1)[0]
    blocks = re.split(r"(?:^|\n\n)Passage \d+:\n", body)[1:]
    return [tuple(block.split("\n", 1)) for block in blocks]


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


def test_bad_input_is_a_clear_error(tmp_path, fixture_model_dir, capsys):
    def error_line(**kwargs) -> str:
        with pytest.raises(SystemExit) as exit_info:
            run_build(tmp_path, fixture_model_dir, **kwargs)
        assert exit_info.value.code == 2
        return capsys.readouterr().err

    empty = tmp_path / "none.jsonl"
    empty.write_text(json.dumps({"id": "x", "question": "q", "answerable": False, "answer": "a", "paragraphs": [{}]}))
    assert "no usable row as --source musique (not answerable: 1)" in error_line(input_path=str(empty))
    assert "invalid choice: 'nq'" in error_line(source="nq", input_path=INPUTS["musique"][0])
    tokenizer = load_tokenizer(fixture_model_dir)
    tokenizer.chat_template = None
    no_template_dir = str(tmp_path / "no-template")
    tokenizer.save_pretrained(no_template_dir)
    with pytest.raises(SystemExit):
        run_build(tmp_path, no_template_dir)
    assert f"--tokenizer {no_template_dir}: no chat template" in capsys.readouterr().err


def test_depo_trainer_trains_on_the_built_dataset(tmp_path, fixture_model_dir):
    dataset, _ = run_build(tmp_path, fixture_model_dir)
    args = DePOConfig(
        output_dir=str(tmp_path / "run"),
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=8,
        max_steps=2,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        bf16=False,
    )
    trainer = DePOTrainer(
        model=fixture_model_dir,
        reward_funcs=em_reward,
        args=args,
        train_dataset=dataset,
        processing_class=load_tokenizer(fixture_model_dir),
    )
    trainer.train()
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert len(logs) == 2 and all(log["depo/long_prompt_tokens"] > 1000 for log in logs)
