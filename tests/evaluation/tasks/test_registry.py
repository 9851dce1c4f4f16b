"""`tasks/__init__.py`, the registry: groups and names, the scoring rules of each task's formats, and where each
task's data comes from (its missing-file error names the source)."""

import huggingface_hub
import pytest

from depo_trl.evaluation.scoring import SCORING_MODES
from depo_trl.evaluation.sources import HubFile, HubSplit, WebFile
from depo_trl.evaluation.tasks import ALL_TASKS, TASK_GROUPS, TASKS, get_task, parse_tasks
from depo_trl.model_utils import load_tokenizer
from depo_trl.user_errors import UsageError


def test_task_groups_and_errors():
    moderate = ["docmath", "frames", "2wikimqa", "hotpotqa", "musique"]
    assert parse_tasks("moderate,longbench_qasper") == [*moderate, "longbench_qasper"]
    assert len(parse_tasks("all")) == len(ALL_TASKS) == 15
    assert parse_tasks("table2") == TASK_GROUPS["table2"]
    assert [TASKS[task].label for task in TASK_GROUPS["table2"]] == [
        "DocMath", "Frames", "2Wiki", "HotpotQA", "MuSiQue",
        "LB-2Wiki", "LB-HotpotQA", "LB-MuSiQue", "NarrativeQA", "Qasper",
    ]  # fmt: skip
    assert "longbench_v2" in parse_tasks("all") and "longbench_v2" not in parse_tasks("table2")
    assert parse_tasks("ruler") == ["ruler_qa_4k", "ruler_qa_8k", "ruler_qa_16k", "ruler_qa_32k"]
    with pytest.raises(ValueError, match="--tasks squad: unknown task"):
        parse_tasks("squad")


def test_each_task_is_scored_by_the_code_of_the_format_it_was_asked_in():
    raw = "Paris\n\nThe passage states that Lyon is larger."
    for task in ("hotpotqa", "longbench_hotpotqa", "longbench_qasper", "ruler_qa_4k"):
        # LongBench's prompt: LongBench's eval.py (the whole output); the template: QwenLong-L1 (no marker, 0)
        assert TASKS[task].score("official", raw, ["Paris"], "longbench").metrics["f1"] == pytest.approx(25.0)
        assert TASKS[task].score("official", raw, ["Paris"], "depo").metrics["f1"] == 0.0
        assert TASKS[task].score("lenient", raw, ["Paris"], "longbench").metrics["f1"] == 100.0
    for style in ("depo", "longbench"):  # asked one way whatever the style
        assert TASKS["frames"].score("official", "", ["Paris"], style).metrics is None
        assert TASKS["docmath"].score("official", "Therefore, the answer is 0.7", ["0.07"], style).metrics == {
            "accuracy": 0.0
        }
        assert TASKS["longbench_v2"].score("official", "Answer: B", ["B"], style).pred is None
    assert set(SCORING_MODES) == {"official", "lenient"}


@pytest.mark.parametrize("name", ALL_TASKS)
def test_every_task_names_where_its_data_comes_from(name):
    for data in get_task(name).data:
        if isinstance(data, HubFile):  # a file of a repository: at a revision
            assert len(data.revision) == 40 or data.revision == "main", data
            assert data.repo_id in data.origin and data.revision in data.origin and data.filename in data.origin
            assert data.member is None or data.member in data.origin
        if isinstance(data, HubSplit):
            assert data.repo_id in data.origin and data.split in data.origin
        if isinstance(data, WebFile):  # a URL, and the page (at a commit) that links it
            assert data.url.startswith("https://") and data.url in data.origin and data.published_by in data.origin
            assert data.member is None or data.member in data.origin


@pytest.mark.parametrize("name", ALL_TASKS)
def test_a_missing_file_names_its_source_and_the_fetch_command(name, tmp_path, eval_model_dir, monkeypatch):
    """Offline, with nothing under --data-dir nor in the Hub cache: one line naming the file, where it comes from,
    and the command that fetches it."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    task = get_task(name)
    with pytest.raises(UsageError) as error:
        task.load(str(tmp_path), load_tokenizer(eval_model_dir))
    message = str(error.value)
    first = task.data[0]
    assert f"--data-dir {tmp_path}: no {first.name} there" in message, message
    assert first.origin in message and "python -m depo_trl.evaluation.fetch" in message, message
    assert "\n" not in message
