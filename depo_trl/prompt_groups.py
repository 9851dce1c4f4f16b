"""Mini-batches of whole prompt groups: how a generation batch is shuffled before TRL cuts it into the micro-batches of
its optimizer steps.

TRL shuffles a generation batch rollout by rollout (`shuffle_sequence_dict`), so with several optimizer steps per
generation (`steps_per_generation > gradient_accumulation_steps`, every GSPO recipe) a step's mini-batch holds stray
rollouts of many prompts. The paper's mini-batches are counted in prompts ("mini-batch 8" for GSPO: 8 prompts with
their 8 rollouts, as verl splits a batch), and the long pass computes a long prompt once per optimizer window, so a
window with whole groups computes each prompt once where stray rollouts make it compute a prompt per rollout or two.
Shuffling whole groups keeps both: the groups' order is random, each group's rollouts stay together.
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import trl.trainer.grpo_trainer as grpo_trainer_module


# Key of the generation-batch entry that numbers each rollout's prompt group
PROMPT_GROUP = "prompt_group"


def prompt_groups(keys: Sequence[Any], device: torch.device | str | None = None) -> torch.Tensor:
    """Group number of each rollout: consecutive rollouts with the same prompt (TRL's sampler repeats each prompt
    `num_generations` times in a row) form one group."""
    groups, current = [], -1
    for index, key in enumerate(keys):
        if index == 0 or key != keys[index - 1]:
            current += 1
        groups.append(current)
    return torch.tensor(groups, dtype=torch.long, device=device)


def shuffle_whole_groups(batch: dict[str, Any]) -> dict[str, Any]:
    """`batch` with its prompt groups in a random order (`torch.randperm`, so a resumed run draws the same), each
    group's rollouts together; the drop-in for TRL's `shuffle_sequence_dict` on a batch with a [`PROMPT_GROUP`]."""
    groups = batch[PROMPT_GROUP].cpu()
    order = torch.randperm(int(groups.max()) + 1)
    permutation = torch.cat([(groups == group).nonzero().squeeze(-1) for group in order])

    def permute(value):
        if value is None or (isinstance(value, torch.Tensor) and value.ndim == 0):
            return value
        if isinstance(value, torch.Tensor):
            return value[permutation.to(value.device)]
        return [value[index] for index in permutation.tolist()]

    return {key: permute(value) for key, value in batch.items()}


@contextmanager
def shuffled_by_prompt_group(enabled: bool) -> Iterator[None]:
    """While open (and `enabled`), GRPOTrainer shuffles a generation batch by whole prompt groups.

    GRPOTrainer's `_prepare_inputs` calls its module's `shuffle_sequence_dict` with no hook to choose another, so the
    trainer module's name is pointed at [`shuffle_whole_groups`] for the duration of the call.
    """
    if not enabled:
        yield
        return
    original = grpo_trainer_module.shuffle_sequence_dict
    grpo_trainer_module.shuffle_sequence_dict = shuffle_whole_groups
    try:
        yield
    finally:
        grpo_trainer_module.shuffle_sequence_dict = original
