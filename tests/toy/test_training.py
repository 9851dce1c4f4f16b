"""Training an arm in the toy world (`depo_trl/toy/training.py`): evaluating during a run leaves it unchanged."""

import pytest
import torch

from depo_trl.toy.training import ToySettings, train_arm
from depo_trl.toy.warm_start import SHIPPED_WARM_START


def test_evaluating_during_a_run_leaves_the_run_unchanged(tmp_path):
    settings = ToySettings(eval_rows=8, train_rows=16, prompts_per_step=2, num_generations=4)
    runs = [
        train_arm("depo", SHIPPED_WARM_START, str(tmp_path / f"run{every}"), settings, max_steps=2,
                  show_progress=False, evaluate_every=every)
        for every in (0, 1)
    ]  # fmt: skip
    assert [point["step"] for point in runs[1].points] == [1, 2] and runs[0].points == []
    assert runs[1].points[1]["seconds"] == pytest.approx(sum(runs[1].step_seconds))
    for first, second in zip(runs[0].trainer.model.parameters(), runs[1].trainer.model.parameters()):
        assert torch.equal(first, second)
