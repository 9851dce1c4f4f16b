"""DePO-IW (`depo_trl/distillation/iw.py`): the rollouts it leaves out of the long pass."""

import torch
from datasets import Dataset

from ..helpers import accumulated_gradients, generation_batch, make_rows, make_trainer


def test_iw_leaves_zero_advantage_rollouts_out_of_the_pass_without_changing_the_gradient(
    tiny_model_dir, tmp_path, monkeypatch
):
    def first_group_all_correct(completions, **kwargs):
        return [1.0] * 4 + [float(index % 2 == 0) for index in range(len(completions) - 4)]

    dataset = Dataset.from_list(make_rows())
    trainer = make_trainer(
        tiny_model_dir,
        dataset,
        tmp_path,
        reward=first_group_all_correct,
        distillation="iw",
        per_device_train_batch_size=8,
    )
    batch = generation_batch(trainer, dataset, num_prompts=2)
    assert torch.equal(batch["advantages"][:4], torch.zeros(4)) and (batch["advantages"][4:] != 0).all()
    passed = []
    run = trainer.long_pass.run
    monkeypatch.setattr(
        trainer.long_pass,
        "run",
        lambda model, rollouts, rows, loss: passed.append(rows) or run(model, rollouts, rows, loss),
    )
    skipping = accumulated_gradients(trainer, [dict(batch)])
    assert passed[-1].tolist() == [4, 5, 6, 7]

    term = batch["distillation"][0]
    monkeypatch.setattr(term, "enters_pass", lambda rows, weights: (weights > 0).any(-1))  # every rollout
    everything = accumulated_gradients(trainer, [dict(batch)])
    assert passed[-1].tolist() == list(range(8))
    for name, gradient in everything.items():
        torch.testing.assert_close(skipping[name], gradient, rtol=1e-5, atol=1e-7, msg=name)
