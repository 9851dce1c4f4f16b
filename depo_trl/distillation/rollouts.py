"""One process's generation batch as the long pass sees it: each rollout's long prompt, completion and loss mask."""

import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass
class Rollouts:
    """One process's generation batch as the long pass sees it, indexed by rollout (TRL's `rollout_index`)."""

    long_prompt_ids: list[torch.Tensor]  # per rollout, unpadded, rendered with the chat template
    completion_ids: torch.Tensor  # (B, T), right-padded
    completion_mask: torch.Tensor  # (B, T)
    loss_mask: torch.Tensor  # completion tokens that carry a loss (tool-output tokens excluded)

    @classmethod
    def from_generation_output(cls, output: dict[str, Any], long_prompt_ids: list[torch.Tensor]) -> "Rollouts":
        """The rollouts of TRL's `_generate_and_score_completions` output, with their long prompts' ids. A loss mask
        leaves out tool-output tokens, as TRL's proxy loss does."""
        loss_mask = output["completion_mask"]
        if "tool_mask" in output:
            loss_mask = loss_mask * output["tool_mask"]
        return cls(long_prompt_ids, output["completion_ids"], output["completion_mask"], loss_mask)

    @functools.cached_property
    def completion_lengths(self) -> list[int]:
        """Tokens of each completion (masks are prefix-contiguous: the tokens up to EOS)."""
        return self.completion_mask.sum(-1).tolist()

    @functools.cached_property
    def prompt_keys(self) -> list[tuple[int, ...]]:
        """Each rollout's long prompt as a hashable key: rollouts of one prompt share a packed row."""
        # A prompt's rollouts share one tensor (DePOTrainer tokenizes it once): its key is made once too
        keys_by_tensor: dict[int, tuple[int, ...]] = {}
        for ids in self.long_prompt_ids:
            if id(ids) not in keys_by_tensor:
                keys_by_tensor[id(ids)] = tuple(ids.tolist())
        return [keys_by_tensor[id(ids)] for ids in self.long_prompt_ids]


def tokenize_long_prompts(
    long_prompts: Sequence, tokenize: Callable[[list], list[list[int]]], device: torch.device, each_on_its_own: bool
) -> list[torch.Tensor]:
    """Each rollout's long prompt as token ids (`tokenize`: TRL's `_tokenize_prompts`, the chat template of the short
    prompt). A prompt's rollouts share one tensor, rendered and tokenized once: a generation batch repeats each prompt
    `num_generations` times, and at the recipes' 15K tokens the tokenization is not free. `each_on_its_own`: each
    rollout is rendered differently (TRL's `environment_factory` renders it with its environment's tools)."""
    if each_on_its_own:
        return [torch.tensor(ids, device=device) for ids in tokenize(list(long_prompts))]
    keys = [json.dumps(prompt, sort_keys=True, default=str) for prompt in long_prompts]
    first: dict[str, int] = {}
    for index, key in enumerate(keys):
        first.setdefault(key, index)
    token_ids = tokenize([long_prompts[index] for index in first.values()])
    tensors = {key: torch.tensor(ids, device=device) for key, ids in zip(first, token_ids)}
    return [tensors[key] for key in keys]
