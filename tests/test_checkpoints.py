"""depo_trl/checkpoints.py: which checkpoint a run resumes from. A checkpoint is complete or names what is missing; a
saved model is not a checkpoint; processes whose disks hold different checkpoints agree on one or stop alike; and the
generation-batch boundaries where a checkpoint resumes exactly. The files a kill leaves are written by hand (fast
tests); two processes with a disk each are simulated by showing process 1 a copy of output_dir (the slow test)."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import save_file

from depo_trl import DePOConfig
from depo_trl.checkpoints import (
    agree_on_checkpoint,
    check_resume_from_checkpoint,
    checkpoint_problems,
    last_complete_checkpoint,
)
from depo_trl.scripts.depo import main
from depo_trl.scripts.recipe import parse_recipe

from .helpers import BACKENDS, ROOT, free_port, run_environment, saved_weights


TINY_RECIPE = os.path.join(ROOT, "recipes", "tiny", "depo.yaml")


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


# ---- Complete checkpoints ------------------------------------------------------------------------------------------

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
    "optimizer missing": (lambda c: os.remove(c / "optimizer.pt"), "no optimizer state"),
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


def test_a_saved_model_is_not_a_checkpoint(tmp_path):
    # What save_model and save_state leave in output_dir at the end of a run: weights and trainer_state.json, no
    # optimizer state, so a run resumed from it would start a new optimizer
    write_checkpoint(tmp_path / "checkpoint-4", 4)
    for name in ("model.safetensors", "trainer_state.json"):
        shutil.copy(tmp_path / "checkpoint-4" / name, tmp_path / name)
    args = DePOConfig(output_dir=str(tmp_path), use_cpu=True, resume_from_checkpoint=str(tmp_path))
    with pytest.raises(ValueError, match=r"an incomplete checkpoint \(no optimizer state \(a saved model, not a "):
        check_resume_from_checkpoint(args)
    # A run with save_only_model saves checkpoints without one, and resumes from them
    os.remove(tmp_path / "checkpoint-4" / "optimizer.pt")
    os.remove(tmp_path / "checkpoint-4" / "scheduler.pt")
    assert checkpoint_problems(str(tmp_path / "checkpoint-4"), model_only=True) == []
    assert checkpoint_problems(str(tmp_path / "checkpoint-4")) == [
        "no optimizer state (a saved model, not a checkpoint)"
    ]


def test_with_save_only_model_an_incomplete_checkpoint_names_the_complete_model_only_one(tmp_path):
    for step in (2, 4):
        write_checkpoint(tmp_path / f"checkpoint-{step}", step)
        for name in ("optimizer.pt", "scheduler.pt"):  # what save_only_model leaves out
            os.remove(tmp_path / f"checkpoint-{step}" / name)
    os.remove(tmp_path / "checkpoint-4" / "trainer_state.json")
    args = DePOConfig(
        output_dir=str(tmp_path),
        use_cpu=True,
        save_only_model=True,
        resume_from_checkpoint=str(tmp_path / "checkpoint-4"),
    )
    with pytest.raises(ValueError) as error:
        check_resume_from_checkpoint(args)
    assert str(error.value).startswith(
        f"resume_from_checkpoint {tmp_path / 'checkpoint-4'}: an incomplete checkpoint (no trainer_state.json); "
        f"pass a complete one such as {tmp_path / 'checkpoint-2'}, "
    )


# ---- One checkpoint for every process ------------------------------------------------------------------------------

TRUNCATED = ["model.safetensors is truncated (100 of 200 bytes)"]


def views(*processes: dict[str, list[str]]) -> list[tuple[str, dict[str, list[str]]]]:
    """The views of processes 0, 1, ..., on nodes a, b, ...: checkpoint name -> what makes it incomplete there."""
    return [(f"node-{'abcd'[index]}", folders) for index, folders in enumerate(processes)]


def test_one_process_resumes_from_its_newest_complete_checkpoint():
    args = DePOConfig(output_dir="runs/x", use_cpu=True)
    assert agree_on_checkpoint(views({}), args) == (None, [])
    assert agree_on_checkpoint(views({"checkpoint-2": [], "checkpoint-3": TRUNCATED}), args) == (
        os.path.join("runs/x", "checkpoint-2"),
        [
            "output_dir runs/x: skipping checkpoint-3, an incomplete checkpoint (model.safetensors is truncated (100 "
            "of 200 bytes)); resuming from checkpoint-2."
        ],
    )
    assert agree_on_checkpoint(views({"checkpoint-3": TRUNCATED}), args)[1] == [
        "output_dir runs/x: skipping checkpoint-3, an incomplete checkpoint (model.safetensors is truncated (100 of "
        "200 bytes)); training starts from step 0."
    ]


def test_processes_resume_from_the_newest_checkpoint_complete_for_all_of_them():
    args = DePOConfig(output_dir="runs/x", use_cpu=True)
    main_process = {"checkpoint-100": [], "checkpoint-200": [], "checkpoint-300": []}
    # Process 2's save of checkpoint-300 was cut off, process 3 never started it, process 1 holds a newer one
    others = [
        {"checkpoint-100": [], "checkpoint-200": [], "checkpoint-300": [], "checkpoint-400": []},
        {"checkpoint-100": [], "checkpoint-200": [], "checkpoint-300": TRUNCATED},
        {"checkpoint-100": [], "checkpoint-200": []},
    ]
    checkpoint, warnings = agree_on_checkpoint(views(main_process, *others), args)
    assert checkpoint == os.path.join("runs/x", "checkpoint-200")
    assert warnings == [
        "output_dir runs/x: skipping checkpoint-400, an incomplete checkpoint for process 0 on node-a and 2 more (no "
        "such folder); resuming from checkpoint-200.",
        "output_dir runs/x: skipping checkpoint-300, an incomplete checkpoint for process 2 on node-c and 1 more "
        "(model.safetensors is truncated (100 of 200 bytes)); resuming from checkpoint-200.",
    ]


def test_processes_with_no_checkpoint_in_common_stop_with_one_line():
    args = DePOConfig(output_dir="runs/x", use_cpu=True)
    # Node b's disk has none: with disks local to each node, only the main process saved (save_on_each_node unset)
    with pytest.raises(ValueError) as error:
        agree_on_checkpoint(views({"checkpoint-300": []}, {"checkpoint-300": ["no trainer_state.json"]}), args)
    assert str(error.value) == (
        "output_dir runs/x: no checkpoint is complete for every process: checkpoint-300 is complete for process 0 on "
        "node-a but not for process 1 on node-b (no trainer_state.json); copy checkpoint-300 to that node's "
        "output_dir (with disks local to each node, set save_on_each_node: true so that every node saves each "
        "checkpoint), or empty output_dir to start over."
    )
    with pytest.raises(ValueError, match="checkpoint-300 is complete for process 1 on node-b but not for process 0"):
        agree_on_checkpoint(views({}, {"checkpoint-300": []}), args)
    given = DePOConfig(output_dir="runs/x", use_cpu=True, resume_from_checkpoint="runs/x/checkpoint-300")
    assert agree_on_checkpoint(views(*[{"runs/x/checkpoint-300": []}] * 2), given) == ("runs/x/checkpoint-300", [])
    with pytest.raises(ValueError) as error:
        agree_on_checkpoint(views({"runs/x/checkpoint-300": []}, {"runs/x/checkpoint-300": ["no such folder"]}), given)
    assert str(error.value) == (
        "resume_from_checkpoint runs/x/checkpoint-300: an incomplete checkpoint for process 1 on node-b (no such "
        "folder); pass a complete one, or leave it unset to resume from the last complete one in output_dir."
    )


def run_with_node_local_disks() -> None:
    """The training entry point, on a process 1 whose disk holds `<output_dir>-node1` where the other processes' holds
    output_dir: it judges the checkpoints there (and loads the one agreed on from output_dir, an identical copy).

    `accelerate launch ... --module tests.test_checkpoints ARGS...`: ARGS are depo-train's.
    """
    from depo_trl import checkpoints
    from depo_trl.scripts.depo import cli

    view = checkpoints.checkpoint_view

    def node_1_view(args):
        output_dir, args.output_dir = args.output_dir, f"{args.output_dir}-node1"
        try:
            return view(args)
        finally:
            args.output_dir = output_dir

    if os.environ.get("RANK") == "1":
        checkpoints.checkpoint_view = node_1_view
    cli()


def launch_with_node_local_disks(arguments: list[str]) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "accelerate.commands.launch", *BACKENDS["ddp"], "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()), "--module", "tests.test_checkpoints", *arguments,
    ]  # fmt: skip
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=run_environment())


@pytest.mark.slow
def test_processes_whose_disks_hold_different_checkpoints_resume_alike_or_stop(tmp_path):
    arguments = ["--config", TINY_RECIPE, "--save_steps", "1"]
    reference = tmp_path / "uninterrupted"
    result = launch_with_node_local_disks([*arguments, "--output_dir", str(reference)])
    assert result.returncode == 0, result.stderr[-4000:]

    # Killed after its second checkpoint, whose save was cut off on process 1's node only
    run, node_1 = tmp_path / "run", tmp_path / "run-node1"
    for disk in (run, node_1):
        for step in (1, 2):
            shutil.copytree(reference / f"checkpoint-{step}", disk / f"checkpoint-{step}")
    cut_in_half(node_1 / "checkpoint-2" / "model.safetensors")
    resumed = launch_with_node_local_disks([*arguments, "--output_dir", str(run)])
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    [warning] = [line for line in resumed.stderr.splitlines() if "skipping checkpoint-" in line]
    assert warning.startswith(f"output_dir {run}: skipping checkpoint-2, an incomplete checkpoint for process 1 on ")
    assert "(model.safetensors is truncated (" in warning and warning.endswith("; resuming from checkpoint-1.")
    assert resumed.stdout.count(f"Resuming from {run / 'checkpoint-1'}.") == 1
    expected = saved_weights(reference)
    assert all(torch.equal(tensor, expected[name]) for name, tensor in saved_weights(run).items())

    # Process 1's disk holds no checkpoint at all: both stop at once, with the same line
    shutil.rmtree(node_1)
    started = time.monotonic()
    stopped = launch_with_node_local_disks([*arguments, "--output_dir", str(run)])
    assert time.monotonic() - started < 120
    assert stopped.returncode != 0
    errors = [line for line in stopped.stderr.splitlines() if line.startswith("depo-train: error:")]
    assert len(errors) == 2 and errors[0] == errors[1], stopped.stderr[-4000:]
    assert errors[0].startswith(
        f"depo-train: error: output_dir {run}: no checkpoint is complete for every process: checkpoint-4 is complete "
        "for process 0 on "
    )


if __name__ == "__main__":
    run_with_node_local_disks()
