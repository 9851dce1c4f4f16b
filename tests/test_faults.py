"""Faults lose nothing: a run killed while it saves a checkpoint resumes exactly; an interrupted data build leaves no
dataset behind; an interrupted evaluation completes from its cached predictions. The faults are injected as they
happen: a process SIGKILLed in the middle of writing a file (the slow tests), and the files such kills leave (cut
short, missing, garbled), written by hand (the fast ones)."""

import json
import os
import signal
import subprocess
import sys

import pytest
from datasets import DatasetDict, load_from_disk
from safetensors.torch import load_file

from depo_trl.data.build import main as build_main
from depo_trl.evaluation import runner
from depo_trl.evaluation.__main__ import main as evaluation_main
from depo_trl.evaluation.judge import JudgeCache
from depo_trl.models.tiny import build_word_level_tokenizer

from .helpers import ROOT, run_environment


TINY_RECIPE = os.path.join(ROOT, "recipes", "tiny", "depo.yaml")
FIXTURES = os.path.join(ROOT, "tests", "fixtures")


# ---- Checkpoints (how complete ones are told apart: tests/test_checkpoints.py) -------------------------------------


def run_killed_while_saving() -> None:
    """The training entry point, SIGKILLed in the middle of writing one file of one checkpoint, as a preemption does.

    `python -c "from tests.test_faults import run_killed_while_saving; run_killed_while_saving()" FOLDER FILE ARGS...`:
    FOLDER is the checkpoint folder to kill in (e.g. checkpoint-3), FILE `weights` or `trainer_state`; the file is
    cut to half its size on disk, then the process kills itself. ARGS are depo-train's.
    """
    import transformers.modeling_utils
    from transformers.trainer_callback import TrainerState

    from depo_trl.scripts.depo import cli

    folder, victim = sys.argv[1:3]

    def half_written_then_killed(path: str) -> None:
        if os.path.basename(os.path.dirname(path)) == folder:
            os.truncate(path, os.path.getsize(path) // 2)
            os.kill(os.getpid(), signal.SIGKILL)

    save_weights, save_state = transformers.modeling_utils.safe_save_file, TrainerState.save_to_json

    def save_weights_or_die(tensors, filename, *args, **kwargs):
        save_weights(tensors, filename, *args, **kwargs)
        if victim == "weights":
            half_written_then_killed(filename)

    def save_state_or_die(self, json_path):
        save_state(self, json_path)
        if victim == "trainer_state":
            half_written_then_killed(json_path)

    transformers.modeling_utils.safe_save_file = save_weights_or_die
    TrainerState.save_to_json = save_state_or_die
    cli(sys.argv[3:])


def train_tiny(output_dir, kill_in: tuple[str, str] | None = None) -> subprocess.CompletedProcess:
    """The tiny recipe (4 steps), a checkpoint at every step, in a process of its own; `kill_in` = (checkpoint
    folder, file) kills it while it writes that file."""
    arguments = ["--config", TINY_RECIPE, "--output_dir", str(output_dir), "--save_steps", "1"]
    if kill_in is None:
        command = [sys.executable, "-m", "depo_trl.scripts.depo", *arguments]
    else:
        runner = "from tests.test_faults import run_killed_while_saving; run_killed_while_saving()"
        command = [sys.executable, "-c", runner, *kill_in, *arguments]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=run_environment())


def losses(output_dir) -> list[float]:
    with open(os.path.join(output_dir, "trainer_state.json")) as handle:
        return [log["loss"] for log in json.load(handle)["log_history"] if "loss" in log]


def skip_warnings(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ": skipping checkpoint-" in line]


@pytest.mark.slow
def test_a_run_killed_while_saving_resumes_exactly_where_it_was(tmp_path):
    reference = tmp_path / "uninterrupted"
    assert train_tiny(reference).returncode == 0
    run = tmp_path / "run"

    # Killed while writing checkpoint-3's weights: half a weights file, no trainer state
    assert train_tiny(run, kill_in=("checkpoint-3", "weights")).returncode == -signal.SIGKILL
    assert (
        0
        < (run / "checkpoint-3" / "model.safetensors").stat().st_size
        < (reference / "model.safetensors").stat().st_size
    )
    # The same command again resumes from checkpoint-2, and is killed while writing checkpoint-4's trainer state
    killed_again = train_tiny(run, kill_in=("checkpoint-4", "trainer_state"))
    assert killed_again.returncode == -signal.SIGKILL, killed_again.stderr[-3000:]
    [warning] = skip_warnings(killed_again.stderr)
    assert "checkpoint-3" in warning and "model.safetensors" in warning
    assert f"Resuming from {run / 'checkpoint-2'}." in killed_again.stdout
    # And once more: from checkpoint-3, which the second run wrote again in full, to the end
    resumed = train_tiny(run)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    [warning] = skip_warnings(resumed.stderr)
    assert "checkpoint-4" in warning and "trainer_state.json" in warning
    assert f"Resuming from {run / 'checkpoint-3'}." in resumed.stdout

    final, expected = load_file(run / "model.safetensors"), load_file(reference / "model.safetensors")
    assert final.keys() == expected.keys()
    assert all(final[name].equal(expected[name]) for name in expected)
    assert losses(run) == losses(reference) and len(losses(run)) == 4


# ---- Data builds ---------------------------------------------------------------------------------------------------


def fixture_lines(source: str) -> list[str]:
    """The fixture records of a source as JSON lines."""
    if source == "musique":
        with open(os.path.join(FIXTURES, "musique_sample.jsonl"), encoding="utf-8") as handle:
            return handle.read().splitlines()
    name = {"hotpotqa": "hotpotqa_distractor_sample.json", "2wikimqa": "2wikimultihopqa_sample.json"}[source]
    with open(os.path.join(FIXTURES, name), encoding="utf-8") as handle:
        return [json.dumps(record) for record in json.load(handle)]


def without(field: str, line: str) -> str:
    return json.dumps({key: value for key, value in json.loads(line).items() if key != field})


def musique_paragraph_without_text(line: str) -> str:
    record = json.loads(line)
    del record["paragraphs"][0]["paragraph_text"]
    return json.dumps(record)


# (source, the line number to break, how, the start of what the error says about that line)
MALFORMED_LINES = {
    "musique line cut short": ("musique", 3, lambda line: line[: len(line) // 2], "not valid JSON ("),
    "musique without answer": ("musique", 2, lambda line: without("answer", line), "not a musique record (no field"),
    "musique paragraph without text": (
        "musique",
        5,
        musique_paragraph_without_text,
        "not a musique record (no field `paragraphs[0].paragraph_text`)",
    ),
    "hotpotqa without supporting_facts": (
        "hotpotqa",
        2,
        lambda line: without("supporting_facts", line),
        "not a hotpotqa record (no field `supporting_facts`)",
    ),
    "hotpotqa line that is a list": ("hotpotqa", 1, lambda line: "[1, 2]", "not a hotpotqa record (a JSON list"),
    "2wikimqa without _id": (
        "2wikimqa",
        2,
        lambda line: without("_id", line),
        "not a 2wikimqa record (no field `_id`",
    ),
}


def build_arguments(tokenizer_dir, input_path, output_dir, source: str = "musique", seed: int = 0) -> list[str]:
    return [
        "--source", source, "--input", str(input_path), "--tokenizer", tokenizer_dir, "--short-budget", "700",
        "--long-budget", "2500", "--seed", str(seed), "--output-dir", str(output_dir), "--no-progress",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> str:
    """A tokenizer with a chat template over the fixtures' words, saved where a builder in another process finds it."""
    folder = str(tmp_path_factory.mktemp("tokenizer"))
    texts = [line for source in ("musique", "hotpotqa", "2wikimqa") for line in fixture_lines(source)]
    build_word_level_tokenizer(texts).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("fault", sorted(MALFORMED_LINES))
def test_a_malformed_input_line_stops_the_build_naming_the_file_and_line(tmp_path, tokenizer_dir, capsys, fault):
    source, number, breaks, says = MALFORMED_LINES[fault]
    lines = fixture_lines(source)
    lines[number - 1] = breaks(lines[number - 1])
    input_path = tmp_path / f"{source}.jsonl"
    input_path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SystemExit) as stopped:
        build_main(build_arguments(tokenizer_dir, input_path, tmp_path / "out", source))
    error = capsys.readouterr().err
    assert stopped.value.code == 2 and error.count("\n") == 1
    assert error.startswith(f"python -m depo_trl.data.build: error: --input {input_path}: line {number}: {says}")
    assert "; " in error.split(says, 1)[1]  # then what to do
    assert not (tmp_path / "out").exists()


def test_a_malformed_record_of_a_json_array_is_named_by_its_number(tmp_path, tokenizer_dir, capsys):
    records = [json.loads(line) for line in fixture_lines("hotpotqa")]
    del records[3]["context"]
    input_path = tmp_path / "hotpotqa.json"
    input_path.write_text(json.dumps(records))
    with pytest.raises(SystemExit):
        build_main(build_arguments(tokenizer_dir, input_path, tmp_path / "out", "hotpotqa"))
    assert f"--input {input_path}: record 4: not a hotpotqa record (no field `context`)" in capsys.readouterr().err


def run_build_killed_while_saving() -> None:
    """The data builder, SIGKILLed while `save_to_disk` writes the dataset's first Arrow table.

    `python -c "from tests.test_faults import run_build_killed_while_saving; run_build_killed_while_saving()" ARGS...`
    """
    from datasets.arrow_writer import ArrowWriter

    write_table = ArrowWriter.write_table

    def write_then_die(self, *args, **kwargs):
        write_table(self, *args, **kwargs)
        self.stream.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    ArrowWriter.write_table = write_then_die
    build_main(sys.argv[1:])


def built(output_dir) -> tuple[list[dict], dict]:
    with open(os.path.join(output_dir, "stats.json"), encoding="utf-8") as handle:
        return load_from_disk(str(output_dir))["train"].to_list(), json.load(handle)


@pytest.mark.slow
def test_a_build_killed_while_saving_leaves_no_dataset_and_keeps_the_previous_one(tmp_path, tokenizer_dir):
    musique = os.path.join(FIXTURES, "musique_sample.jsonl")
    fresh, previous = tmp_path / "fresh", tmp_path / "previous"
    build_main(build_arguments(tokenizer_dir, musique, previous, seed=0))
    before = built(previous)
    for output_dir in (fresh, previous):
        runner = "from tests.test_faults import run_build_killed_while_saving; run_build_killed_while_saving()"
        command = [sys.executable, "-c", runner, *build_arguments(tokenizer_dir, musique, output_dir, seed=1)]
        killed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=run_environment())
        assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not fresh.exists()
    with pytest.raises(FileNotFoundError):
        load_from_disk(str(fresh))
    assert built(previous) == before
    # The same commands again, not killed: both complete, and nothing of the killed ones is left beside them
    build_main(build_arguments(tokenizer_dir, musique, fresh, seed=1))
    build_main(build_arguments(tokenizer_dir, musique, previous, seed=1))
    assert built(fresh) == built(previous) and built(fresh)[0] != before[0]
    assert sorted(os.listdir(tmp_path)) == ["fresh", "previous"]


def test_a_build_whose_save_fails_keeps_the_previous_one(tmp_path, tokenizer_dir, monkeypatch):
    musique = os.path.join(FIXTURES, "musique_sample.jsonl")
    output_dir = tmp_path / "data"
    build_main(build_arguments(tokenizer_dir, musique, output_dir, seed=0))
    before = built(output_dir)
    save = DatasetDict.save_to_disk

    def disk_full(self, path, *args, **kwargs):
        save(self, path, *args, **kwargs)
        os.truncate(os.path.join(path, "train", "data-00000-of-00001.arrow"), 100)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(DatasetDict, "save_to_disk", disk_full)
    with pytest.raises(OSError, match="No space left on device"):
        build_main(build_arguments(tokenizer_dir, musique, output_dir, seed=1))
    assert built(output_dir) == before
    assert os.listdir(tmp_path) == ["data"]


def test_an_output_folder_holding_other_files_is_not_replaced(tmp_path, tokenizer_dir, capsys):
    output_dir = tmp_path / "data"
    output_dir.mkdir()
    (output_dir / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit):
        build_main(build_arguments(tokenizer_dir, os.path.join(FIXTURES, "musique_sample.jsonl"), output_dir))
    error = capsys.readouterr().err
    assert (
        error.startswith(f"python -m depo_trl.data.build: error: --output-dir {output_dir}: ") and "notes.txt" in error
    )
    assert os.listdir(output_dir) == ["notes.txt"]


# ---- Evaluations ---------------------------------------------------------------------------------------------------

EVAL_TASKS = {"hotpotqa": 6, "musique": 6}  # with --limit 6: 12 items, 6 generation calls of 2


def evaluation_arguments(model_dir, output_dir) -> list[str]:
    """Batches of one: an item's greedy answer does not depend on which items share its batch."""
    return [
        "--model", model_dir, "--tasks", ",".join(EVAL_TASKS), "--backend", "hf", "--max-length", "1024",
        "--max-new-tokens", "4", "--batch-size", "1", "--limit", "6", "--data-dir", FIXTURES, "--output-dir",
        str(output_dir),
    ]  # fmt: skip


def run_evaluation_killed_while_generating() -> None:
    """The evaluation, predicting 2 items per generation call, SIGKILLed in its Nth call (after N - 1 calls' items
    were written).

    `python -c "from tests.test_faults import run_evaluation_killed_while_generating as run; run()" N ARGS...`
    """
    make_backend = runner.make_backend
    calls = 0

    def backend_that_dies(*args, **kwargs):
        backend = make_backend(*args, **kwargs)
        generate = backend.generate

        def generate_or_die(*args, **kwargs):
            nonlocal calls
            calls += 1
            if calls == int(sys.argv[1]):
                os.kill(os.getpid(), signal.SIGKILL)
            return generate(*args, **kwargs)

        backend.generate = generate_or_die
        return backend

    runner.GENERATION_CHUNK = 2
    runner.make_backend = backend_that_dies
    evaluation_main(sys.argv[2:])


def predictions(folder, task: str) -> list[dict]:
    with open(os.path.join(folder, f"{task}.jsonl"), encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def counting_generations(monkeypatch) -> list[int]:
    """Count the items every backend made from now on generates."""
    counted = []
    make_backend = runner.make_backend

    def counting_backend(*args, **kwargs):
        backend = make_backend(*args, **kwargs)
        generate = backend.generate

        def generate_and_count(conversations, *args, **kwargs):
            counted.append(len(conversations))
            return generate(conversations, *args, **kwargs)

        backend.generate = generate_and_count
        return backend

    monkeypatch.setattr(runner, "make_backend", counting_backend)
    return counted


@pytest.mark.slow
@pytest.mark.parametrize("last_line", ["written whole", "cut short"])
def test_an_evaluation_killed_halfway_completes_from_its_predictions(tmp_path, tiny_model_dir, monkeypatch, last_line):
    reference = tmp_path / "uninterrupted"
    evaluation_main(evaluation_arguments(tiny_model_dir, reference))
    folder_name = os.path.basename(tiny_model_dir)
    output = tmp_path / "killed"
    runner_code = "from tests.test_faults import run_evaluation_killed_while_generating as run; run()"
    command = [sys.executable, "-c", runner_code, "3", *evaluation_arguments(tiny_model_dir, output)]
    killed = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=run_environment())
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    hotpotqa_file = output / folder_name / "hotpotqa.jsonl"
    assert len(predictions(output / folder_name, "hotpotqa")) == 4  # two calls' items were written
    if last_line == "cut short":  # as a kill in the middle of writing it leaves it
        last = hotpotqa_file.read_bytes().splitlines()[-1]
        os.truncate(hotpotqa_file, os.path.getsize(hotpotqa_file) - len(last) // 2)
    kept = 4 if last_line == "written whole" else 3

    generated = counting_generations(monkeypatch)
    evaluation_main(evaluation_arguments(tiny_model_dir, output))  # the same command again
    assert sum(generated) == sum(EVAL_TASKS.values()) - kept  # nothing written whole is predicted again
    for task in EVAL_TASKS:
        rows = predictions(output / folder_name, task)
        assert len({row["id"] for row in rows}) == len(rows) == EVAL_TASKS[task]  # none twice, none lost
        expected = {row["id"]: row for row in predictions(reference / folder_name, task)}
        assert {row["id"]: row for row in rows} == expected  # the same answers, read the same way
    scores = json.loads((output / folder_name / "scores.json").read_text())
    assert scores == json.loads((reference / folder_name / "scores.json").read_text())


def test_scores_json_is_never_left_half_written(tmp_path, tiny_model_dir, monkeypatch):
    evaluation_main(evaluation_arguments(tiny_model_dir, tmp_path))
    scores_path = tmp_path / os.path.basename(tiny_model_dir) / "scores.json"
    before = scores_path.read_text()

    def interrupted_dump(value, handle, **kwargs):  # a full disk, or a kill, in the middle of the write
        handle.write(json.dumps(value, **kwargs)[:50])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(json, "dump", interrupted_dump)
    with pytest.raises(OSError):
        evaluation_main([*evaluation_arguments(tiny_model_dir, tmp_path), "--scoring", "lenient"])
    assert scores_path.read_text() == before


def test_a_judge_cache_cut_short_keeps_every_whole_reply(tmp_path, capsys):
    path = str(tmp_path / "judge_cache.jsonl")
    cache = JudgeCache(path)
    for number in range(3):
        cache.put("judge", f"prompt {number}", f"Verdict: A {number}")
    os.truncate(path, os.path.getsize(path) - 20)  # a kill in the middle of writing the third reply
    cache = JudgeCache(path)
    assert [cache.get("judge", f"prompt {number}") for number in range(3)] == ["Verdict: A 0", "Verdict: A 1", None]
    assert "cut short" in capsys.readouterr().err
    cache.put("judge", "prompt 2", "Verdict: B")
    again = JudgeCache(path)
    assert [again.get("judge", f"prompt {number}") for number in range(3)] == [
        "Verdict: A 0",
        "Verdict: A 1",
        "Verdict: B",
    ]
