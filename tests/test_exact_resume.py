"""A run killed with SIGKILL at a random point and started again with the same command ends with exactly the
parameters of a run that was never interrupted: one process and two, DePO and DePO-IW, a generation batch spanning
two optimizer steps (`steps_per_generation` 2, as every GSPO recipe spans several), evaluation during training.

Checkpoints sit at generation-batch boundaries (TRL would generate a batch's rollouts again on resume): DePOConfig
refuses a `save_steps` inside one that the user set and rounds up the default; `ExactResumeCallback` defers a save
inside one (a `save_steps` given as a ratio, a step after an epoch that ends inside an optimizer step), refuses a
`save_strategy="best"` whose evaluations fall inside one, and refuses to train on from a checkpoint inside one or at
the end of training. Every path that writes a checkpoint is tested here: resumed exactly, or refused in one line.
"""

import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from depo_trl import DePOConfig
from depo_trl.exact_resume import generation_batch_offset, generation_batch_span, save_steps_at_boundaries
from depo_trl.scripts.depo import main
from depo_trl.scripts.recipe import parse_recipe

from .helpers import BACKENDS, ENTRY_POINT, ROOT, free_port, make_trainer, run_environment, saved_weights


def command(output_dir, distillation: str, processes: int) -> list[str]:
    recipe = "recipes/tiny/depo.yaml" if distillation == "kd" else "recipes/tiny/depo-iw.yaml"
    arguments = [
        "--config", recipe, "--output_dir", str(output_dir), "--steps_per_generation", "2",
        "--gradient_accumulation_steps", "1", "--save_steps", "2", "--max_steps", "8",
        "--eval_strategy", "steps", "--eval_steps", "3", "--dataset_test_split", "train",
        "--per_device_eval_batch_size", "8",
    ]  # fmt: skip
    if processes == 1:
        return [sys.executable, ENTRY_POINT, *arguments]
    return [
        sys.executable, "-m", "accelerate.commands.launch", *BACKENDS["ddp"], "--num_processes", str(processes),
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()), ENTRY_POINT, *arguments,
    ]  # fmt: skip


def run(arguments: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run(arguments, cwd=ROOT, capture_output=True, text=True, timeout=600, env=run_environment())
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def kill_after_first_checkpoint(arguments: list[str], output_dir, seed: int) -> float:
    """Start the run, and SIGKILL it (every process of it) at a random moment after its first checkpoint is complete;
    return when it was killed, in seconds after that checkpoint."""
    process = subprocess.Popen(
        arguments, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=run_environment(),
        start_new_session=True,
    )  # fmt: skip
    try:
        state = output_dir / "checkpoint-2" / "trainer_state.json"
        deadline = time.monotonic() + 300
        while not state.exists():
            assert process.poll() is None, "the run ended before its first checkpoint"
            assert time.monotonic() < deadline, "no first checkpoint in 300 s"
            time.sleep(0.05)
        delay = random.Random(seed).uniform(0.0, 2.0)
        time.sleep(delay)
        assert process.poll() is None, "the run finished before it could be killed"
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    return delay


@pytest.mark.slow
@pytest.mark.parametrize(("processes", "distillation"), [(1, "kd"), (2, "iw")], ids=["1-process-kd", "2-processes-iw"])
def test_a_run_killed_at_a_random_point_resumes_to_the_uninterrupted_parameters(tmp_path, processes, distillation):
    uninterrupted = tmp_path / "uninterrupted"
    run(command(uninterrupted, distillation, processes))
    killed = tmp_path / "killed"
    arguments = command(killed, distillation, processes)
    delay = kill_after_first_checkpoint(arguments, killed, seed=processes)
    assert not (killed / "model.safetensors").exists()  # it did not get to the end
    resumed = run(arguments)
    assert "Resuming from" in resumed.stdout + resumed.stderr, delay
    reference = saved_weights(uninterrupted)
    for name, tensor in saved_weights(killed).items():
        assert torch.equal(tensor, reference[name]), (name, delay)


def test_a_save_steps_inside_a_generation_batch_is_refused_and_the_default_rounded_up(caplog):
    with pytest.raises(ValueError, match="save_steps=3: a generation batch spans 2 optimizer steps"):
        DePOConfig(
            output_dir="unused", use_cpu=True, steps_per_generation=2, gradient_accumulation_steps=1, save_steps=3
        )
    # GSPO recipes: 16 micro-steps per generation, 2 per optimizer step; save_steps left at its default (500)
    args = DePOConfig(output_dir="unused", use_cpu=True, steps_per_generation=16, gradient_accumulation_steps=2)
    assert args.save_steps == 504
    [note] = [record.getMessage() for record in caplog.records if "save_steps" in record.getMessage()]
    assert note == (
        "save_steps is not set, and its default 500 falls inside a generation batch of 8 optimizer steps, where a "
        "checkpoint would not resume exactly: checkpoints are saved every 504 steps."
    )
    # load_best_model_at_end needs the saves on evaluations too
    best = DePOConfig(
        output_dir="unused", use_cpu=True, steps_per_generation=16, gradient_accumulation_steps=2,
        eval_strategy="steps", eval_steps=10, load_best_model_at_end=True,
    )  # fmt: skip
    assert best.save_steps == 520
    assert DePOConfig(output_dir="unused", use_cpu=True, steps_per_generation=16, gradient_accumulation_steps=2,
                      save_steps=24).save_steps == 24  # fmt: skip


def test_save_steps_resolved_at_the_start_are_rounded_like_the_default():
    # What ratios resolve to when training starts (100 steps: saves every 20, evaluations every 10): up to the
    # generation batch (8 optimizer steps), and with load_best_model_at_end to the evaluations too (lcm 40)
    args = DePOConfig(output_dir="unused", use_cpu=True, steps_per_generation=16, gradient_accumulation_steps=2)
    assert save_steps_at_boundaries(args, 20, eval_steps=10) == 24
    best = DePOConfig(
        output_dir="unused", use_cpu=True, steps_per_generation=16, gradient_accumulation_steps=2,
        eval_strategy="steps", eval_steps=0.1, load_best_model_at_end=True, save_steps=0.2,
    )  # fmt: skip
    assert save_steps_at_boundaries(best, 20, eval_steps=10) == 40
    assert save_steps_at_boundaries(best, 20, eval_steps=None) == 24


def test_a_recipe_without_save_steps_trains_with_several_iterations_per_batch(tmp_path):
    # num_iterations 3, common in DAPO/GRPO setups: a generation batch spans 3 of the tiny recipe's optimizer steps
    with open(os.path.join(ROOT, "recipes", "tiny", "depo.yaml"), encoding="utf-8") as handle:
        lines = [line for line in handle if not line.startswith("save_steps:")]
    recipe = tmp_path / "depo.yaml"
    recipe.write_text("".join(lines))  # its paths are relative to the repository, where the tests run
    arguments = ["--config", str(recipe), "--output_dir", str(tmp_path / "run"), "--num_iterations", "3"]
    trainer = main(*parse_recipe([*arguments, "--max_steps", "1"]))
    assert trainer.args.save_steps == 501 and trainer.state.global_step == 1


def train(model_dir, dataset, output_dir, resume_from_checkpoint=None, eval_dataset=None, **settings):
    trainer = make_trainer(model_dir, dataset, output_dir, eval_dataset=eval_dataset, **settings)
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    return trainer


def checkpoints(output_dir) -> list[str]:
    return sorted(
        (name for name in os.listdir(output_dir) if name.startswith("checkpoint-")), key=lambda n: int(n[11:])
    )


def assert_same_parameters(trainer, reference) -> None:
    expected = dict(reference.model.named_parameters())
    for name, parameter in trainer.model.named_parameters():
        assert torch.equal(parameter, expected[name]), name


def test_a_save_steps_ratio_saves_at_the_next_generation_batch_boundary(
    tiny_model_dir, tiny_dataset, tmp_path, caplog
):
    # 2 optimizer steps per generation batch; save_steps 0.5 of 6 steps is 3, inside the second one
    settings = {"steps_per_generation": 2, "gradient_accumulation_steps": 1, "max_steps": 6,
                "save_strategy": "steps", "save_steps": 0.5}  # fmt: skip
    uninterrupted = train(tiny_model_dir, tiny_dataset, tmp_path / "run", **settings)
    assert checkpoints(tmp_path / "run") == ["checkpoint-4", "checkpoint-6"]  # 6: the end of training
    assert any("save_steps=0.5 saves every 3 of 6 optimizer steps" in record.getMessage() for record in caplog.records)
    resumed = train(tiny_model_dir, tiny_dataset, tmp_path / "resumed", tmp_path / "run" / "checkpoint-4", **settings)
    assert resumed.state.global_step == 6
    assert_same_parameters(resumed, uninterrupted)


# One generation batch (2 prompts, 6 micro-batches: steps_per_generation 2 x num_iterations 3) per epoch and 4
# micro-batches per optimizer step: each epoch's second step takes the 2 left, so the boundaries fall on steps 2, 4
# and 6, not on multiples of 3
EPOCH_INSIDE_A_STEP = {"steps_per_generation": 2, "num_iterations": 3, "gradient_accumulation_steps": 4,
                       "max_steps": -1, "num_train_epochs": 3}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(("save", "saved", "resume_from"), [
    ({"save_strategy": "epoch"}, ["checkpoint-2", "checkpoint-4", "checkpoint-6"], "checkpoint-2"),
    ({"save_strategy": "steps", "save_steps": 3}, ["checkpoint-4", "checkpoint-6"], "checkpoint-4"),
], ids=["epoch", "steps-deferred"])  # fmt: skip
def test_saves_after_an_epoch_that_ends_inside_an_optimizer_step_resume_exactly(
    tiny_model_dir, tiny_dataset, tmp_path, save, saved, resume_from
):
    dataset = tiny_dataset.select(range(2))
    uninterrupted = train(tiny_model_dir, dataset, tmp_path / "run", **EPOCH_INSIDE_A_STEP, **save)
    assert uninterrupted.state.global_step == 6 and checkpoints(tmp_path / "run") == saved
    checkpoint = tmp_path / "run" / resume_from
    resumed = train(tiny_model_dir, dataset, tmp_path / "resumed", checkpoint, **EPOCH_INSIDE_A_STEP, **save)
    assert_same_parameters(resumed, uninterrupted)


def test_best_saves_at_evaluations_inside_a_generation_batch_are_refused(tiny_model_dir, tiny_dataset, tmp_path):
    best = {"steps_per_generation": 2, "gradient_accumulation_steps": 1, "max_steps": 6, "save_strategy": "best",
            "eval_strategy": "steps", "num_generations": 4, "per_device_train_batch_size": 4,
            "per_device_eval_batch_size": 4, "metric_for_best_model": "loss"}  # fmt: skip
    with pytest.raises(ValueError, match="eval_steps=3: save_strategy='best' saves a checkpoint at an evaluation"):
        DePOConfig(output_dir="unused", use_cpu=True, eval_steps=3, **best)
    assert DePOConfig(output_dir="unused", use_cpu=True, eval_steps=4, **best).eval_steps == 4
    with pytest.raises(ValueError, match=r"eval_steps=0.5 \(3 optimizer steps\): .*set eval_steps to a multiple of 2"):
        train(tiny_model_dir, tiny_dataset, tmp_path / "run", eval_dataset=tiny_dataset, eval_steps=0.5, **best)
    assert not os.path.exists(tmp_path / "run") or not checkpoints(tmp_path / "run")


def test_training_on_from_the_end_of_training_or_inside_a_generation_batch_is_refused(
    tiny_model_dir, tiny_dataset, tmp_path
):
    # 2 optimizer steps per generation batch; the last of 3 steps is saved, inside the second one
    settings = {"steps_per_generation": 2, "gradient_accumulation_steps": 1, "save_strategy": "steps", "save_steps": 2}
    train(tiny_model_dir, tiny_dataset, tmp_path / "run", max_steps=3, **settings)
    assert checkpoints(tmp_path / "run") == ["checkpoint-2", "checkpoint-3"]
    end = tmp_path / "run" / "checkpoint-3"
    with pytest.raises(ValueError, match=r"checkpoint-3: the end of training \(max_steps=3\), so nothing is left"):
        train(tiny_model_dir, tiny_dataset, tmp_path / "run", end, max_steps=3, **settings)
    with pytest.raises(ValueError) as error:
        train(tiny_model_dir, tiny_dataset, tmp_path / "run", end, max_steps=5, **settings)
    assert str(error.value) == (
        "resume_from_checkpoint checkpoint-3: it ends inside a generation batch (1 of its 2 micro-steps trained: "
        "steps_per_generation x num_iterations), and training on from it would not be exact (the batch's rollouts "
        f"would be generated again); resume from {tmp_path / 'run' / 'checkpoint-2'} instead."
    )
    assert checkpoints(tmp_path / "run") == ["checkpoint-2", "checkpoint-3"]  # no step was trained


def test_generation_batch_boundaries_shift_when_an_epoch_ends_inside_an_optimizer_step():
    # steps_per_generation 2 x num_iterations 3 = 6 micro-batches per generation batch, 4 per optimizer step
    args = DePOConfig(
        output_dir="unused", use_cpu=True, steps_per_generation=2, num_iterations=3, gradient_accumulation_steps=4
    )
    assert generation_batch_span(args) == 3
    assert [generation_batch_offset(step, args) for step in range(7)] == [0, 4, 2, 0, 4, 2, 0]
    # One generation batch per epoch: its second optimizer step takes the 2 micro-batches left, so every epoch end
    # is a boundary, and step 3 (10 micro-batches) is not
    assert [generation_batch_offset(step, args, steps_in_epoch=6) for step in range(7)] == [0, 4, 0, 4, 0, 4, 0]
