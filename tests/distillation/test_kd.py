"""DePO's conditional distillation (`depo_trl/distillation/kd.py`): the logged term is the conditional KD loss of
the same rollouts, scored independently."""

import pytest
import torch
from trl import GRPOTrainer
from trl.trainer.utils import pad

from depo_trl.losses import conditional_kd_loss, kd_token_weights

from ..helpers import accumulated_gradients, generation_batch, make_trainer


def test_logged_kd_loss_is_conditional_kd_loss_on_the_same_tensors(tiny_model_dir, tiny_dataset, tmp_path):
    trainer = make_trainer(tiny_model_dir, tiny_dataset, tmp_path, per_device_train_batch_size=8)
    batch = generation_batch(trainer, tiny_dataset, num_prompts=2)
    accumulated_gradients(trainer, [batch])
    logged = trainer._metrics["train"]["depo/kd_loss"][-1]

    # The same rollouts scored independently: plain [prompt, completion] sequences through TRL's log-prob helper
    def completion_logps(prompts: list[torch.Tensor]) -> torch.Tensor:
        prompt_ids = pad(prompts, padding_value=trainer.processing_class.pad_token_id, padding_side="left")
        prompt_mask = pad([torch.ones_like(p) for p in prompts], padding_value=0, padding_side="left")
        input_ids = torch.cat([prompt_ids, batch["completion_ids"]], dim=1)
        attention_mask = torch.cat([prompt_mask, batch["completion_mask"]], dim=1)
        with torch.no_grad():
            logps, _, _ = GRPOTrainer._get_per_token_logps_and_entropies(
                trainer, trainer.model, input_ids, attention_mask, batch["completion_ids"].size(1)
            )
        return logps

    term = batch["distillation"][0]
    short = completion_logps([ids[mask.bool()] for ids, mask in zip(batch["prompt_ids"], batch["prompt_mask"])])
    long = completion_logps(term.rollouts.long_prompt_ids)
    weights = kd_token_weights(batch["completion_mask"], term.rewards, 1.0, term.tokens_in_batch)
    assert logged != 0.0
    assert logged == pytest.approx(conditional_kd_loss(long, short, weights).item(), rel=1e-4, abs=1e-6)
