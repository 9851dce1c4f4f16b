"""Faults lose nothing: a run killed while it saves a checkpoint resumes exactly; an interrupted data build leaves no
dataset behind; an interrupted evaluation completes from its cached predictions. Every fault is injected for real:
a SIGKILL in the middle of writing a file, a truncated file, a malformed line."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from depo_trl.scripts.depo import checkpoint_problems, last_complete_checkpoint, main, parse_recipe

from .helpers import ROOT, run_environment


TINY_RECIPE = os.path.join(ROOT, "recipes", "tiny", "depo.yaml")


# ---- Checkpoints ---------------------------------------------------------------------------------------------------


def write_checkpoint(folder, step: int, sharded: bool = False, deepspeed: bool = False) -> None:
    """A checkpoint folder laid out as the Trainer saves one (tiny tensors): weights (one safetensors file, or two
    shards and their index), optimizer, scheduler, RNG state (or DeepSpeed's global_step folder and `latest`), and
    trainer_state.json, written last."""
    folder.mkdir(parents=True)
    weights = {"embed.weight": torch.full((4, 8), float(step)), "head.weight": torch.ones(8, 4)}
    if sharded:
        save_file({"embed.weight": weights["embed.weight"]}, folder / "model-00001-of-00002.safetensors")
        save_file({"head.weight": weights["head.weight"]}, folder / "model-00002-of-00002.safetensors")
        weight_map = {
            "embed.weight": "model-00001-of-00002.safetensors",
            "head.weight": "model-00002-of-00002.safetensors",
        }
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    else:
        save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    if deepspeed:
        (folder / f"global_step{step}").mkdir()
        torch.save({"module": weights}, folder / f"global_step{step}" / "mp_rank_00_model_states.pt")
        (folder / "latest").write_text(f"global_step{step}")
    else:
        torch.save({"state": {0: {"exp_avg": torch.zeros(4, 8)}}}, folder / "optimizer.pt")
        torch.save({"last_epoch": step}, folder / "scheduler.pt")
    torch.save({"cpu": torch.random.get_rng_state()}, folder / "rng_state.pth")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}, indent=2))


def cut_in_half(path) -> None:
    os.truncate(path, os.path.getsize(path) // 2)


# Each fault a kill, a full disk or a lost write leaves in the newest checkpoint, and what the skip names
FAULTS = {
    "weights truncated": (lambda c: cut_in_half(c / "model.safetensors"), "model.safetensors is truncated"),
    "weights header cut": (lambda c: os.truncate(c / "model.safetensors", 20), "model.safetensors is truncated"),
    "weights missing": (lambda c: os.remove(c / "model.safetensors"), "no model weights"),
    "trainer state missing": (lambda c: os.remove(c / "trainer_state.json"), "no trainer_state.json"),
    "trainer state truncated": (lambda c: cut_in_half(c / "trainer_state.json"), "trainer_state.json is not valid"),
    "trainer state garbage": (lambda c: (c / "trainer_state.json").write_text("\x00garbage"), "not valid JSON"),
    "trainer state of another step": (
        lambda c: (c / "trainer_state.json").write_text('{"global_step": 2}'),
        "says global_step 2, not 3",
    ),
    "optimizer truncated": (lambda c: cut_in_half(c / "optimizer.pt"), "optimizer.pt is truncated"),
    "rng state empty": (lambda c: os.truncate(c / "rng_state.pth", 0), "rng_state.pth is truncated"),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_an_incomplete_checkpoint_is_skipped_for_the_last_complete_one(tmp_path, fault):
    for step in (1, 2, 3):
        write_checkpoint(tmp_path / f"checkpoint-{step}", step)
    assert last_complete_checkpoint(str(tmp_path)) == (str(tmp_path / "checkpoint-3"), [])
    inject, reason = FAULTS[fault]
    inject(tmp_path / "checkpoint-3")
    chosen, skipped = last_complete_checkpoint(str(tmp_path))
    assert chosen == str(tmp_path / "checkpoint-2")
    [(folder, why)] = skipped
    assert folder == "checkpoint-3" and reason in why and "\n" not in why


def test_sharded_and_deepspeed_checkpoints_are_checked_without_loading_them(tmp_path):
    write_checkpoint(tmp_path / "checkpoint-9", 9, sharded=True)
    write_checkpoint(tmp_path / "checkpoint-10", 10, deepspeed=True)  # newer by number, not by name
    assert last_complete_checkpoint(str(tmp_path)) == (str(tmp_path / "checkpoint-10"), [])
    os.remove(tmp_path / "checkpoint-10" / "latest")  # DeepSpeed writes it after every rank's files
    os.remove(tmp_path / "checkpoint-9" / "model-00002-of-00002.safetensors")
    assert last_complete_checkpoint(str(tmp_path)) == (
        None,
        [
            ("checkpoint-10", "no DeepSpeed `latest` file (it is written last)"),
            ("checkpoint-9", "model-00002-of-00002.safetensors (named by model.safetensors.index.json) is missing"),
        ],
    )
    assert last_complete_checkpoint(str(tmp_path / "no-run-yet")) == (None, [])


def test_an_incomplete_checkpoint_given_by_hand_is_a_one_line_error(tmp_path):
    run = tmp_path / "run"
    write_checkpoint(run / "checkpoint-2", 2)
    write_checkpoint(run / "checkpoint-4", 4)
    os.remove(run / "checkpoint-4" / "trainer_state.json")
    arguments = ["--config", TINY_RECIPE, "--output_dir", str(run)]
    with pytest.raises(ValueError) as error:
        main(*parse_recipe([*arguments, "--resume_from_checkpoint", str(run / "checkpoint-4")]))
    assert str(error.value) == (
        f"resume_from_checkpoint {run / 'checkpoint-4'}: an incomplete checkpoint (no trainer_state.json); pass a "
        f"complete one such as {run / 'checkpoint-2'}, or leave it unset to resume from the last complete one in "
        "output_dir."
    )
    with pytest.raises(ValueError, match="resume_from_checkpoint .*checkpoint-7: no such folder"):
        main(*parse_recipe([*arguments, "--resume_from_checkpoint", str(run / "checkpoint-7")]))
    assert checkpoint_problems(str(run / "checkpoint-2")) == []


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
    return [line for line in stderr.splitlines() if line.startswith("depo-train: warning:")]


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
