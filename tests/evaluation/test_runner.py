"""`runner.py`, through the command line: end-to-end CPU runs with the hf backend that a second run leaves alone,
re-scoring without generation, and the one-line errors of its options and data."""

import json
import os

import pytest

from depo_trl.evaluation.__main__ import main as evaluation_main
from depo_trl.evaluation.runner import EvalSettings
from depo_trl.evaluation.tasks import TASKS, parse_tasks

from . import FIXTURES


def test_an_unknown_scoring_mode_is_one_line(capsys):
    with pytest.raises(SystemExit) as stopped:
        evaluation_main(["--model", "m", "--tasks", "hotpotqa", "--output-dir", "o", "--scoring", "strict"])
    message = capsys.readouterr().err.strip()
    assert stopped.value.code == 2 and "\n" not in message
    assert "argument --scoring: invalid choice: 'strict'" in message and "official" in message and "lenient" in message
    with pytest.raises(ValueError, match="--scoring strict: unknown mode; use one of \\['official', 'lenient'\\]"):
        EvalSettings(tasks=["hotpotqa"], scoring="strict")


def test_end_to_end_writes_every_output_and_resumes(eval_model_dir, fixture_data_dir, tmp_path, monkeypatch):
    output = tmp_path / "eval"
    model_name = os.path.basename(eval_model_dir)
    evaluation_main([
        "--model", eval_model_dir, "--tasks", "all", "--backend", "hf", "--max-length", "4096", "--output-dir",
        str(output), "--limit", "2", "--data-dir", fixture_data_dir, "--max-new-tokens", "4",
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
        str(output), "--limit", "2", "--data-dir", fixture_data_dir, "--max-new-tokens", "4",
    ])  # fmt: skip
    assert {task: (folder / f"{task}.jsonl").read_text() for task in parse_tasks("all")} == before


def test_end_to_end_table2_and_longbench_v2_then_nothing_new(eval_model_dir, fixture_data_dir, tmp_path, monkeypatch):
    output = tmp_path / "eval"
    argv = [
        "--model", eval_model_dir, "--tasks", "table2,longbench_v2", "--backend", "hf", "--max-length", "2048",
        "--output-dir", str(output), "--limit", "2", "--data-dir", fixture_data_dir, "--max-new-tokens", "4",
    ]  # fmt: skip
    evaluation_main(argv)
    folder = output / os.path.basename(eval_model_dir)
    tasks = parse_tasks("table2,longbench_v2")
    for task in tasks:
        rows = [json.loads(line) for line in (folder / f"{task}.jsonl").read_text().splitlines()]
        assert len(rows) == 2, task
        metrics = {"accuracy"} if task in ("docmath", "longbench_v2") else {"f1", "em"}
        assert set(rows[0]) == {"id", "prompt_tokens", "raw", "answers", "official", "lenient"}, task
        assert set(rows[0]["lenient"]) == {"pred", *metrics}, task
    scores = json.loads((folder / "scores.json").read_text())
    assert scores["scoring"] == "official"
    assert scores["longbench_v2"]["decoding"] == {"do_sample": True, "temperature": 0.1, "seed": 0}
    assert scores["docmath"]["decoding"] == scores["frames"]["decoding"] == {"do_sample": False}
    assert scores["docmath"]["official_code"].endswith("eval/docmath.py")
    assert scores["longbench_v2"]["official_code"].endswith("pred.py")
    for task in tasks:
        rows = [json.loads(line) for line in (folder / f"{task}.jsonl").read_text().splitlines()]
        official = [row["official"] for row in rows if row["official"] is not None]
        metric = TASKS[task].metric
        assert scores[task]["count"] == len(official) and scores[task]["outputs"] == 2, task
        assert scores[task]["empty_outputs"] == sum(row["raw"] == "" for row in rows), task
        assert scores[task]["unparsed"] == sum(record["pred"] is None for record in official), task
        assert scores[task][metric] == scores[task]["official"][metric], task
        assert scores[task]["lenient"][metric] == pytest.approx(sum(row["lenient"][metric] for row in rows) / 2)
    headline = [scores["docmath"]["accuracy"], *(scores[task]["f1"] for task in tasks[1:10])]
    assert scores["avg"] == pytest.approx(sum(headline) / 10, abs=0.01)
    table = (output / "results.md").read_text()
    assert "| Model | DocMath | Frames | 2Wiki | HotpotQA | MuSiQue | LB-2Wiki | LB-HotpotQA | LB-MuSiQue | " in table
    assert "NarrativeQA | Qasper | Avg. |" in table and "| Model | LongBench v2 | unparsed | questions |" in table

    def no_generation(*args, **kwargs):
        raise AssertionError("the second run must not generate anything")

    monkeypatch.setattr("depo_trl.evaluation.runner.make_backend", no_generation)
    before = {task: (folder / f"{task}.jsonl").read_text() for task in tasks}
    evaluation_main(argv)
    assert {task: (folder / f"{task}.jsonl").read_text() for task in tasks} == before
    assert json.loads((folder / "scores.json").read_text()) == scores

    # Another scoring mode re-scores the predictions on disk: nothing generated, the files untouched
    evaluation_main([*argv, "--scoring", "lenient"])
    assert {task: (folder / f"{task}.jsonl").read_text() for task in tasks} == before
    lenient = json.loads((folder / "scores.json").read_text())
    assert lenient["scoring"] == "lenient"
    for task in tasks:
        assert {key: lenient[task][key] for key in lenient[task]["lenient"]} == scores[task]["lenient"], task
    headline = [lenient["docmath"]["accuracy"], *(lenient[task]["f1"] for task in tasks[1:10])]
    assert lenient["avg"] == pytest.approx(sum(headline) / 10, abs=0.01)
    assert f"| {os.path.basename(eval_model_dir)} (lenient) |" in (output / "results.md").read_text()


def test_predictions_from_before_the_scoring_modes_are_rescored_not_regenerated(eval_model_dir, tmp_path, monkeypatch):
    """Rows in the old layout (`pred`, `accuracy`) get both readings from their raw output, without generation."""
    model_folder = tmp_path / "eval" / os.path.basename(eval_model_dir)
    model_folder.mkdir(parents=True)
    raws = {  # the fixture's gold letters are B, C, A
        "lbv2-written-0001": "The correct answer is (B). The answer A is wrong because the log says so.",
        "lbv2-written-0002": "the correct answer is (C)",  # pred.py matches "The correct answer is" as written
        "lbv2-written-0003": "",  # pred.py does not write an empty output
    }
    old_rows = [
        {"id": key, "prompt_tokens": 10, "raw": raw, "pred": "A", "answers": [gold], "accuracy": 0.0}
        for (key, raw), gold in zip(raws.items(), "BCA")
    ]
    (model_folder / "longbench_v2.jsonl").write_text("".join(json.dumps(row) + "\n" for row in old_rows))

    def no_generation(*args, **kwargs):
        raise AssertionError("rows on disk must not be generated again")

    monkeypatch.setattr("depo_trl.evaluation.runner.make_backend", no_generation)
    evaluation_main([
        "--model", eval_model_dir, "--tasks", "longbench_v2", "--backend", "hf", "--output-dir",
        str(tmp_path / "eval"), "--data-dir", FIXTURES,
    ])  # fmt: skip
    rows = [json.loads(line) for line in (model_folder / "longbench_v2.jsonl").read_text().splitlines()]
    assert [row["official"] for row in rows] == [
        {"pred": "B", "accuracy": 100.0},
        {"pred": None, "accuracy": 0.0},
        None,
    ]
    assert [row["lenient"] for row in rows] == [
        {"pred": "B", "accuracy": 100.0},
        {"pred": "C", "accuracy": 100.0},
        {"pred": None, "accuracy": 0.0},
    ]
    v2 = json.loads((model_folder / "scores.json").read_text())["longbench_v2"]
    assert v2["official"] == {"accuracy": 50.0, "count": 2, "unparsed": 1}  # the empty output left out
    assert v2["lenient"] == {"accuracy": 66.67, "count": 3, "unparsed": 1}
    assert v2["accuracy"] == 50.0 and v2["outputs"] == 3 and v2["empty_outputs"] == 1


def test_a_missing_frames_file_is_one_line_naming_data_dir(eval_model_dir, tmp_path, capsys):
    argv = [
        "--model",
        eval_model_dir,
        "--tasks",
        "frames",
        "--backend",
        "hf",
        "--output-dir",
        str(tmp_path / "eval"),
    ]
    with pytest.raises(SystemExit) as stopped:
        evaluation_main([*argv, "--data-dir", str(tmp_path)])
    message = capsys.readouterr().err.strip()
    assert stopped.value.code == 2 and "\n" not in message
    assert f"--data-dir {tmp_path}: no frames.jsonl there" in message and "depo_trl.evaluation.frames" in message
