"""The evaluation harness: LongBench scoring by hand, task loaders, and an end-to-end CPU run with the hf backend."""

import json
import os

import pytest

from depo_trl.data.builder import ContextBuilder
from depo_trl.data.template import render_prompt
from depo_trl.evaluation.__main__ import main as evaluation_main
from depo_trl.evaluation.runner import EvalSettings, parse_tasks
from depo_trl.evaluation.scoring import longbench_lenient, template_lenient
from depo_trl.evaluation.tasks import TASKS, load_ruler, moderate_examples, truncate_middle
from depo_trl.model_utils import load_tokenizer
from depo_trl.models.tiny import build_tiny_qwen2, build_word_level_tokenizer, save_model_and_tokenizer


FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
LONGBENCH_DIR = os.path.join(FIXTURES, "longbench")


@pytest.mark.parametrize(
    ("raw", "answers", "scorer", "pred", "f1", "em"),
    [
        (
            "Therefore, the answer is The Eiffel Tower.",
            ["Eiffel Tower"],
            template_lenient,
            "The Eiffel Tower",
            100,
            100,
        ),
        # "new york city" vs "new york": precision 2/3, recall 1 -> F1 0.8
        ("so the answer is New York City", ["New York"], template_lenient, "New York City", 80.0, 0.0),
        # max over gold answers: "tomas" matches the second answer exactly
        ("the answer is Tomas.", ["her brother Tomas", "Tomas"], template_lenient, "Tomas", 100.0, 100.0),
        ("", ["anything"], template_lenient, "", 0.0, 0.0),
        # LongBench prompts are answered directly: the first line is the prediction, punctuation and case ignored
        ("Zürich!\nIt is in Switzerland.", ["zürich"], longbench_lenient, "Zürich!", 100.0, 100.0),
        ("a cat, an owl", ["the owl"], longbench_lenient, "a cat, an owl", 2 * 0.5 * 1 / 1.5 * 100, 0.0),
    ],
)
def test_lenient_scoring_by_hand(raw, answers, scorer, pred, f1, em):
    score = scorer(raw, answers)
    assert score.pred == pred
    assert score.metrics["f1"] == pytest.approx(f1)
    assert score.metrics["em"] == em


def test_an_unknown_scoring_mode_is_one_line(capsys):
    with pytest.raises(SystemExit) as stopped:
        evaluation_main(["--model", "m", "--tasks", "hotpotqa", "--output-dir", "o", "--scoring", "strict"])
    message = capsys.readouterr().err.strip()
    assert stopped.value.code == 2 and "\n" not in message
    assert "argument --scoring: invalid choice: 'strict'" in message and "official" in message and "lenient" in message
    with pytest.raises(ValueError, match="--scoring strict: unknown mode; use one of \\['official', 'lenient'\\]"):
        EvalSettings(tasks=["hotpotqa"], scoring="strict")


def test_task_groups_and_errors():
    moderate = ["docmath", "frames", "2wikimqa", "hotpotqa", "musique"]
    assert parse_tasks("moderate,longbench_qasper") == [*moderate, "longbench_qasper"]
    assert len(parse_tasks("all")) == 15
    with pytest.raises(ValueError, match="--tasks squad: unknown task"):
        parse_tasks("squad")


@pytest.fixture(scope="module")
def eval_model_dir(tmp_path_factory):
    texts = []
    for name in os.listdir(LONGBENCH_DIR):
        with open(os.path.join(LONGBENCH_DIR, name)) as handle:
            for record in map(json.loads, handle):
                texts += [record["context"], record["input"], *record["answers"]]
    for name in ("hotpotqa_distractor_sample.json", "2wikimultihopqa_sample.json"):
        texts.append(open(os.path.join(FIXTURES, name)).read())
    texts.append(open(os.path.join(FIXTURES, "musique_sample.jsonl")).read())
    texts.append(render_prompt("", ""))
    tokenizer = build_word_level_tokenizer(texts)
    model = build_tiny_qwen2(tokenizer, max_position_embeddings=8192)
    return save_model_and_tokenizer(model, tokenizer, tmp_path_factory.mktemp("eval-model"))


def test_truncate_middle_keeps_both_ends(eval_model_dir):
    tokenizer = load_tokenizer(eval_model_dir)
    text = " ".join(["Passage"] * 5 + ["Question"] * 5)
    kept, length = truncate_middle(text, tokenizer, 4)
    assert kept.split() == ["Passage", "Passage", "Question", "Question"] and length == 4
    assert truncate_middle(text, tokenizer, 100) == (text, 10)


@pytest.mark.parametrize("target", [4096, 8192])
def test_ruler_builder_invariants(eval_model_dir, target):
    tokenizer = load_tokenizer(eval_model_dir)
    first = load_ruler(target, FIXTURES, tokenizer)
    assert [e.context for e in first] == [e.context for e in load_ruler(target, FIXTURES, tokenizer)]
    gold = {e.id: e.gold for e in moderate_examples("hotpotqa", FIXTURES)}
    for example in first:
        assert all(f"{p.title}\n{p.text}" in example.context for p in gold[example.id])
        messages = [{"role": "user", "content": f"<text>\n{example.context}\n</text>"}]
        rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert len(tokenizer(rendered)["input_ids"]) <= target
        assert len(tokenizer(rendered)["input_ids"]) > target // 4  # filled with distractors, not just the gold


def test_evaluation_prompts_are_the_training_prompts(eval_model_dir):
    """A RULER-QA question is asked in exactly the words of the training row the builder makes at that length."""
    tokenizer = load_tokenizer(eval_model_dir)
    examples = moderate_examples("hotpotqa", FIXTURES)
    builder = ContextBuilder(tokenizer, examples, short_budget=4096, long_budget=4096, seed=0)
    for evaluated in TASKS["ruler_qa_4k"].load(FIXTURES, tokenizer)[:3]:
        row = builder.build_row(next(e for e in examples if e.id == evaluated.id))
        assert TASKS["ruler_qa_4k"].prompt(evaluated, "depo") == row["prompt"][0]["content"]


def test_end_to_end_writes_every_output_and_resumes(eval_model_dir, tmp_path, monkeypatch):
    import shutil

    for name in os.listdir(LONGBENCH_DIR):
        shutil.copy(os.path.join(LONGBENCH_DIR, name), tmp_path / name)
    for name in ("hotpotqa_distractor_sample.json", "2wikimultihopqa_sample.json", "musique_sample.jsonl"):
        shutil.copy(os.path.join(FIXTURES, name), tmp_path / name)
    shutil.copytree(os.path.join(FIXTURES, "docmath"), tmp_path / "docmath")
    shutil.copy(os.path.join(FIXTURES, "frames", "frames.jsonl"), tmp_path / "frames.jsonl")
    shutil.copy(os.path.join(FIXTURES, "longbench_v2", "longbench_v2.json"), tmp_path / "longbench_v2.json")
    output = tmp_path / "eval"
    model_name = os.path.basename(eval_model_dir)
    evaluation_main([
        "--model", eval_model_dir, "--tasks", "all", "--backend", "hf", "--max-length", "4096", "--output-dir",
        str(output), "--limit", "2", "--data-dir", str(tmp_path), "--max-new-tokens", "4",
    ])  # fmt: skip
    folder = output / model_name
    for task in parse_tasks("all"):
        rows = [json.loads(line) for line in (folder / f"{task}.jsonl").read_text().splitlines()]
        assert len(rows) == 2, task
        assert set(rows[0]) == {"id", "prompt_tokens", "raw", "answers", "official", "lenient"}
        assert set(rows[0]["lenient"]) == {"pred", *TASKS[task].metrics}
        assert all(row["prompt_tokens"] <= 4096 for row in rows)
    scores = json.loads((folder / "scores.json").read_text())
    assert scores["longbench_qasper"]["outputs"] == 2 and "avg" in scores
    table = (output / "results.md").read_text()
    assert "| Model | DocMath | Frames | 2Wiki | HotpotQA | MuSiQue | LB-2Wiki" in table and model_name in table
    assert (output / "ruler_qa.png").stat().st_size > 0

    def no_generation(*args, **kwargs):
        raise AssertionError("the second run must not generate anything")

    monkeypatch.setattr("depo_trl.evaluation.runner.make_backend", no_generation)
    before = {task: (folder / f"{task}.jsonl").read_text() for task in parse_tasks("all")}
    evaluation_main([
        "--model", eval_model_dir, "--tasks", "all", "--backend", "hf", "--max-length", "4096", "--output-dir",
        str(output), "--limit", "2", "--data-dir", str(tmp_path), "--max-new-tokens", "4",
    ])  # fmt: skip
    assert {task: (folder / f"{task}.jsonl").read_text() for task in parse_tasks("all")} == before
