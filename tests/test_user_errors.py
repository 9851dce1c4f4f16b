"""Every command reports a mistake in its input as one line naming the argument and the fix, with exit status 2."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from depo_trl.data import build
from depo_trl.evaluation.__main__ import main as evaluation
from depo_trl.scripts.depo import cli as depo_train
from depo_trl.scripts.vllm_server import main as vllm_server
from depo_trl.toy import comparison as toy_comparison
from depo_trl.toy import world
from depo_trl.user_errors import looks_like_local_path

from .helpers import make_rows


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
TINY = ["--config", "recipes/tiny/depo.yaml"]


def benchmark(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "benchmarks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture
def files(tmp_path, tiny_model_dir):
    """Bad inputs on disk: an empty file, malformed JSON lines, datasets without the columns DePO reads."""
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "bad.jsonl").write_text('{"id": 1}\n{not json\n')
    (tmp_path / "a_file").write_text("x")
    rows = make_rows(num_rows=4)
    with open(tmp_path / "short_only.jsonl", "w") as handle:
        handle.writelines(json.dumps({k: v for k, v in row.items() if k != "long_prompt"}) + "\n" for row in rows)
    with open(tmp_path / "no_answer.jsonl", "w") as handle:
        handle.writelines(json.dumps({k: v for k, v in row.items() if k != "answer"}) + "\n" for row in rows)
    (tmp_path / "no_model.yaml").write_text("dataset_name: x\n")
    (tmp_path / "misspelt.yaml").write_text((open(os.path.join(ROOT, TINY[1])).read()) + "distilation: kd\n")
    return {"dir": str(tmp_path), "model": tiny_model_dir}


# (command, arguments, words the one-line message must contain). `{dir}` is a scratch folder, `{model}` a tiny model.
CASES = [
    # depo-train
    (depo_train, ["--config", "recipes/tiny/missing.yaml"], ["--config recipes/tiny/missing.yaml", "no such file"]),
    (depo_train, ["--config", "recipes/tiny"], ["--config recipes/tiny", "a folder, not a file"]),
    (depo_train, ["--config", "{dir}/misspelt.yaml"], ["unknown setting distilation", "did you mean distillation"]),
    (depo_train, [*TINY, "--distilation", "kd"], ["command line", "unknown setting distilation"]),
    (depo_train, [*TINY, "--rollout_context", "sideways"], ["--rollout_context", "sideways"]),
    (depo_train, [*TINY, "--rollout_context", "long"], ["rollout_context='long'", "distillation='kd'", "valid"]),
    (depo_train, [*TINY, "--reward_funcs", "exact_match"], ["reward_funcs 'exact_match'", "unknown reward"]),
    (depo_train, [*TINY, "--dataset_name", "./data/missing_depo"], ["dataset_name ./data/missing_depo", "no such"]),
    (depo_train, [*TINY, "--dataset_name", "data/missing.jsonl"], ["dataset_name data/missing.jsonl", "no such"]),
    (depo_train, [*TINY, "--dataset_name", "tests/fixtures"], ["dataset_name tests/fixtures", "not a saved dataset"]),
    (depo_train, [*TINY, "--dataset_name", "{dir}/empty.jsonl"], ["dataset_name", "empty.jsonl", "empty"]),
    (depo_train, [*TINY, "--dataset_name", "someone/no-such-data"], ["dataset_name someone/no-such-data", "offline"]),
    (depo_train, [*TINY, "--model_name_or_path", "someone/no-such-model"], ["model_name_or_path someone/", "offline"]),
    (depo_train, [*TINY, "--model_name_or_path", "recipes/tiny/depo.yaml"], ["model_name_or_path", "a file, not"]),
    (depo_train, [*TINY, "--dataset_name", "{dir}/short_only.jsonl"], ["dataset_name", "no `long_prompt` column"]),
    (depo_train, [*TINY, "--dataset_name", "{dir}/no_answer.jsonl"], ["dataset_name", "no `answer` column"]),
    (depo_train, [*TINY, "--dataset_train_split", "validation"], ["dataset_train_split validation", "no such split"]),
    # python -m depo_trl.data.build
    (build.main, ["--input", "missing.jsonl"], ["--input missing.jsonl", "no such file"]),
    (build.main, ["--input", "tests/fixtures"], ["--input tests/fixtures", "a folder, not a file"]),
    (build.main, ["--input", "{dir}/empty.jsonl"], ["--input", "empty.jsonl", "no usable row"]),
    (build.main, ["--input", "{dir}/bad.jsonl"], ["--input", "bad.jsonl: line 1", "not a musique record"]),
    (build.main, ["--input", "someone/no-such-data"], ["--input someone/no-such-data", "offline"]),
    (build.main, ["--tokenizer", "./no-such-tokenizer"], ["--tokenizer ./no-such-tokenizer", "no such folder"]),
    (build.main, ["--short-budget", "20", "--long-budget", "40"], ["--short-budget 20", "no row fits"]),
    (build.main, ["--short-budget", "2000", "--long-budget", "1000"], ["--short-budget 2000", "--long-budget 1000"]),
    (build.main, ["--source", "squad"], ["--source", "invalid choice: 'squad'"]),
    (build.main, ["--output-dir", "{dir}/a_file"], ["--output-dir", "a_file", "a file is in the way"]),
    # python -m depo_trl.evaluation
    (evaluation, ["--data-dir", "nosuchdir"], ["--data-dir nosuchdir", "no such folder"]),
    (evaluation, ["--data-dir", "{dir}/a_file"], ["--data-dir", "a file, not a folder"]),
    (evaluation, ["--model", "nosuchmodel"], ["--model nosuchmodel", "not a local folder", "offline"]),
    (evaluation, ["--model", "./nosuchmodel"], ["--model ./nosuchmodel", "no such folder"]),
    (evaluation, ["--model", "{dir}/smollm2-135m-instruct"], ["no such folder", "depo_trl.models.smollm2"]),
    (evaluation, ["--tasks", "squad"], ["--tasks squad", "unknown task"]),
    (evaluation, ["--max-length", "512"], ["--max-length 512", "--max-new-tokens 1024"]),
    (evaluation, ["--tasks", "longbench_qasper", "--data-dir", "{dir}"], ["--data-dir", "no qasper.jsonl", "offline"]),
    # python -m depo_trl.scripts.vllm_server, demo, synthetic world, benchmarks
    (vllm_server, ["--config", "missing.yaml"], ["--config missing.yaml", "no such file"]),
    (vllm_server, ["--config", "{dir}/no_model.yaml"], ["--config", "no `model_name_or_path`"]),
    (world.main, ["--output-dir", "{dir}/a_file"], ["--output-dir", "a file is in the way"]),
    (world.main, ["--output-dir", "{dir}/toy", "--num-rows", "0"], ["--num-rows", "'0' is not a positive"]),
    ("long_pass_scaling", ["--device", "cuda"], ["--device cuda", "no CUDA device"]),
    ("step_cost", ["--bogus"], ["unrecognized arguments: --bogus"]),
    (toy_comparison.main, ["--warm-start-dir", "./runs/none"], ["--warm-start-dir ./runs/none", "no such folder"]),
    ("build_data", ["--input", "missing.jsonl"], ["--input missing.jsonl", "no such file"]),
]


def command_arguments(command, arguments: list[str], files: dict) -> list[str]:
    arguments = [argument.format(**files) for argument in arguments]
    if command is build.main:  # the required options, unless the case replaces them
        defaults = {
            "--source": "musique",
            "--input": f"{FIXTURES}/musique_sample.jsonl",
            "--tokenizer": files["model"],
        }
        defaults |= {"--output-dir": f"{files['dir']}/built", "--short-budget": "400", "--long-budget": "800"}
        arguments += [item for key, value in defaults.items() if key not in arguments for item in (key, value)]
    if command is evaluation:
        defaults = {"--model": files["model"], "--tasks": "hotpotqa", "--backend": "hf", "--output-dir": files["dir"]}
        arguments += [item for key, value in defaults.items() if key not in arguments for item in (key, value)]
    return arguments


@pytest.mark.parametrize(
    ("command", "arguments", "words"),
    CASES,
    ids=[f"{getattr(c, '__module__', c)}:{' '.join(a)}"[-70:] for c, a, _ in CASES],
)
def test_bad_input_is_one_line_naming_the_argument(command, arguments, words, files, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("DEPO_TRL_DEBUG", raising=False)
    main = benchmark(command) if isinstance(command, str) else command
    with pytest.raises(SystemExit) as exit_info:
        main(command_arguments(command, arguments, files))
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    lines = [line for line in stderr.splitlines() if ": error: " in line]  # besides progress bars, if any
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.mark.slow
@pytest.mark.parametrize(
    "command",
    [
        ["{bin}/depo-train", "--config", "recipes/tiny/missing.yaml"],
        ["{python}", "depo_trl/scripts/depo.py", "--config", "recipes/tiny/missing.yaml"],
        ["{python}", "-m", "depo_trl.data.build", "--source", "musique", "--input", "missing.jsonl",
         "--tokenizer", "x", "--output-dir", "out"],
        ["{python}", "-m", "depo_trl.evaluation", "--model", "m", "--tasks", "hotpotqa", "--output-dir", "o",
         "--data-dir", "nosuchdir"],
        ["{python}", "-m", "depo_trl.scripts.vllm_server", "--config", "missing.yaml"],
        ["{python}", "-m", "depo_trl.toy.demo", "--steps", "0"],
        ["{python}", "benchmarks/step_cost.py", "--steps", "0"],
    ],
    ids=["depo-train", "depo.py", "data.build", "evaluation", "vllm_server", "demo", "step_cost"],
)  # fmt: skip
def test_each_command_exits_with_status_2_and_no_traceback(command, tmp_path):
    command = [part.format(python=sys.executable, bin=os.path.dirname(sys.executable)) for part in command]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "DEPO_TRL_DEBUG": ""}
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, env=environment)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]


def test_debug_variable_gives_the_traceback(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("DEPO_TRL_DEBUG", "1")
    with pytest.raises(ValueError, match="--config recipes/tiny/missing.yaml"):
        depo_train(["--config", "recipes/tiny/missing.yaml"])


@pytest.mark.parametrize(
    ("value", "local"),
    [
        ("missing.jsonl", True),
        ("./data/x", True),
        ("~/models/m", True),
        ("/abs/folder", True),
        ("Qwen/Qwen2.5-7B-Instruct", False),
        ("meta-llama/Llama-3.1-8B-Instruct", False),
        ("THUDM/LongBench", False),
        ("data/qwen2.5-7b-instruct/musique_depo", True),  # two slashes: no Hub id has them
        ("data/musique_depo", False),  # does not exist: could be a Hub id, so both places are named
    ],
)
def test_which_values_are_local_paths(value, local):
    assert looks_like_local_path(value) == local
