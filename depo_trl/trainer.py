"""DePOTrainer: TRL's GRPOTrainer plus DePO's long-context term (DESIGN.md sections 1, 4, 5 and 6).

Generation, rewards, advantages and the proxy loss are TRL's, untouched. This subclass only
- picks the prompt the rollouts are sampled from (`rollout_context`),
- keeps each rollout's reward and the tokenized long prompt in the generation batch,
- adds `distillation_coef * L_KD` (or `L_IW`) to the proxy loss, computed from completion-token log-probabilities
  under the long prompt (TRL's fused log-prob helper, so `[batch x long_len x vocab]` logits never exist).
"""

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from accelerate.utils import gather_object
from datasets import Dataset, IterableDataset
from transformers.utils import logging
from trl import GRPOTrainer
from trl.trainer.utils import pad

from .config import DePOConfig
from .losses import (
    conditional_kd_loss,
    distillation_mask,
    importance_clip_mask,
    importance_log_weights,
    importance_weighted_loss,
)


logger = logging.get_logger(__name__)

# Rows are tokenized in batches of this size when `max_long_prompt_length` filters a dataset.
_LENGTH_CHECK_BATCH_SIZE = 256


def mixed_rollout_uses_long_prompt(row_key: str, seed: int, step: int) -> bool:
    """Coin flip of the 'Short-Long' baseline: whether a row's rollout group is sampled from its long prompt.

    A pure function of `(seed, step, row_key)`, so all `num_generations` copies of a row, on every process, agree, and
    a resumed run makes the same choices. Probability 1/2 over rows and steps.
    """
    digest = hashlib.blake2b(f"{seed}:{step}:{row_key}".encode(), digest_size=8).digest()
    return digest[-1] & 1 == 1


def _row_key(row: dict[str, Any]) -> str:
    if row.get("id") is not None:
        return str(row["id"])
    return json.dumps(row["prompt"], sort_keys=True, default=str)


def _column_names(dataset: Dataset | IterableDataset) -> list[str]:
    names = getattr(dataset, "column_names", None)
    if names is None and isinstance(dataset, IterableDataset):  # features unknown until the first row is read
        names = list(next(iter(dataset)).keys())
    return list(names or [])


def _datasets_by_split(train_dataset, eval_dataset) -> Iterator[tuple[str, Dataset | IterableDataset]]:
    if train_dataset is not None:
        yield "train", train_dataset
    if isinstance(eval_dataset, dict):
        for name, dataset in eval_dataset.items():
            yield f"eval ({name})", dataset
    elif eval_dataset is not None:
        yield "eval", eval_dataset


_MODEL_CARD_SETTINGS = (
    "rollout_context",
    "distillation",
    "distillation_coef",
    "distillation_reward_threshold",
    "loss_type",
    "importance_sampling_level",
    "epsilon",
    "epsilon_high",
    "beta",
    "num_generations",
    "temperature",
    "learning_rate",
    "max_completion_length",
)


def depo_model_card_section(args: DePOConfig, paper_title: str, recipe: str | None = None) -> str:
    """Markdown appended to the model card: the method, the DePO settings of the run, and its recipe."""
    rows = "\n".join(f"| `{name}` | `{getattr(args, name)}` |" for name in _MODEL_CARD_SETTINGS)
    section = (
        f"\n## DePO\n\nThis model was trained with DePO, from *{paper_title}*: GRPO-family RL on rollouts sampled "
        "from a short context (gold documents and a few distractors), plus the distillation of those rollouts into "
        "the same policy conditioned on a long context (many more distractors).\n\n"
        f"| setting | value |\n|---|---|\n{rows}\n"
    )
    if recipe:
        section += f"\n### Recipe\n\n```yaml\n{recipe.rstrip()}\n```\n"
    return section


class DePOTrainer(GRPOTrainer):
    """
    Trainer for DePO (Decomposed Policy Optimization) and its baselines, on top of [`~trl.GRPOTrainer`].

    Takes the same arguments as [`~trl.GRPOTrainer`], with a [`DePOConfig`]. The dataset has a conversational (or
    plain-text) `prompt` column (short context) and, whenever `distillation != "none"` or `rollout_context != "short"`,
    a `long_prompt` column (long context); reward functions read their own columns (e.g. `answer` for
    [`depo_trl.rewards.em_reward`]).

    Example:

    ```python
    >>> from datasets import load_from_disk
    >>> from depo_trl import DePOConfig, DePOTrainer
    >>> from depo_trl.rewards import em_reward

    >>> trainer = DePOTrainer(
    ...     model="Qwen/Qwen2.5-7B-Instruct",
    ...     reward_funcs=em_reward,
    ...     args=DePOConfig(output_dir="qwen2.5-7b-depo", distillation="kd"),
    ...     train_dataset=load_from_disk("data/musique_depo")["train"],
    ... )
    >>> trainer.train()
    ```
    """

    _tag_names = ["trl", "grpo", "depo"]
    _name = "DePO"
    _paper = {"title": "DePO: Decomposed Policy Optimization for Long-Context Reasoning"}

    def __init__(
        self,
        model,
        reward_funcs=None,
        args: DePOConfig | None = None,
        train_dataset: Dataset | IterableDataset | None = None,
        eval_dataset=None,
        processing_class=None,
        **kwargs,
    ):
        if args is None:
            model_name = model if isinstance(model, str) else model.config._name_or_path
            args = DePOConfig(f"{str(model_name).split('/')[-1]}-DePO")
        elif not isinstance(args, DePOConfig):
            raise TypeError(f"DePOTrainer needs a DePOConfig, got {type(args).__name__}. Build a DePOConfig instead.")
        if args.uses_long_prompt:
            for split, dataset in _datasets_by_split(train_dataset, eval_dataset):
                if "long_prompt" not in _column_names(dataset):
                    raise ValueError(
                        f"rollout_context={args.rollout_context!r} with distillation={args.distillation!r} needs a "
                        f"`long_prompt` column, but the {split} dataset has only {_column_names(dataset)}. Build the "
                        "data with `python -m depo_trl.data.build`, or train the 'Short' baseline with "
                        "rollout_context='short', distillation='none'."
                    )
        self._policy_logps_sink: list[torch.Tensor] | None = None
        self._rollout_rewards: torch.Tensor | None = None
        # YAML of the recipe the run was launched with, if any; the model card reproduces it.
        self.recipe: str | None = None
        super().__init__(model, reward_funcs, args, train_dataset, eval_dataset, processing_class, **kwargs)

        if args.uses_long_prompt and args.max_long_prompt_length is not None:
            self.train_dataset = self._drop_overlong_rows(self.train_dataset, "train")
            if isinstance(self.eval_dataset, dict):
                self.eval_dataset = {
                    name: self._drop_overlong_rows(dataset, f"eval ({name})")
                    for name, dataset in self.eval_dataset.items()
                }
            elif self.eval_dataset is not None:
                self.eval_dataset = self._drop_overlong_rows(self.eval_dataset, "eval")

    def create_model_card(self, model_name=None, dataset_name=None, tags=None):
        """TRL's model card, plus the DePO settings of the run and the recipe it was launched with."""
        super().create_model_card(model_name=model_name, dataset_name=dataset_name, tags=tags)
        if not self.is_world_process_zero():
            return
        with open(os.path.join(self.args.output_dir, "README.md"), "a", encoding="utf-8") as handle:
            handle.write(depo_model_card_section(self.args, self._paper["title"], self.recipe))

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if "long_prompt" not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, "long_prompt"]

    # ------------------------------------------------------------------ data

    def _long_prompt_lengths(self, long_prompts: list) -> list[int]:
        """Token count of each long prompt, rendered exactly as for training (TRL's `_tokenize_prompts`)."""
        prompt_ids, _, _ = self._tokenize_prompts(long_prompts)
        return [len(ids) for ids in prompt_ids]

    def _drop_overlong_rows(self, dataset: Dataset | IterableDataset | None, split: str):
        if dataset is None:
            return None
        limit = self.args.max_long_prompt_length
        if isinstance(dataset, IterableDataset):
            logger.warning(
                f"max_long_prompt_length={limit}: {split} rows with longer long prompts are skipped as they stream "
                "in; an iterable dataset cannot say in advance how many."
            )
            return dataset.filter(lambda row: self._long_prompt_lengths([row["long_prompt"]])[0] <= limit)
        keep = []
        for start in range(0, len(dataset), _LENGTH_CHECK_BATCH_SIZE):
            batch = dataset[start : start + _LENGTH_CHECK_BATCH_SIZE]["long_prompt"]
            lengths = self._long_prompt_lengths(batch)
            keep.extend(start + offset for offset, length in enumerate(lengths) if length <= limit)
        dropped = len(dataset) - len(keep)
        if not keep:
            raise ValueError(
                f"Every {split} row has a long prompt longer than max_long_prompt_length={limit} tokens. Raise the "
                "limit or rebuild the data with a smaller long-context budget."
            )
        if dropped:
            logger.warning(
                f"Dropped {dropped} of {len(dataset)} {split} rows whose long prompt exceeds "
                f"max_long_prompt_length={limit} tokens."
            )
            dataset = dataset.select(keep)
        return dataset

    def _rollout_inputs(self, inputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The rows with `prompt` replaced by `long_prompt` where the rollout context asks for it."""
        context = self.args.rollout_context
        if context == "short":
            return inputs
        if context == "long":
            return [{**row, "prompt": row["long_prompt"]} for row in inputs]
        step = self.state.global_step
        return [
            {**row, "prompt": row["long_prompt"]}
            if mixed_rollout_uses_long_prompt(_row_key(row), self.args.seed, step)
            else row
            for row in inputs
        ]

    # ------------------------------------------------------------------ generation batch

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        # Same combination as TRL's logged `reward`: weighted sum, NaN where every reward function abstained
        weights = self.reward_weights.to(rewards_per_func.device).unsqueeze(0)
        rewards = (rewards_per_func * weights).nansum(dim=1)
        rewards[torch.isnan(rewards_per_func).all(dim=1)] = torch.nan
        self._rollout_rewards = rewards  # all processes' rollouts, in gather order
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        rollout_inputs = self._rollout_inputs(inputs)
        if rollout_inputs is not inputs:
            contexts = ["short" if rollout is row else "long" for rollout, row in zip(rollout_inputs, inputs)]
            self._log_completion_extra("rollout_context", contexts)
        output = super()._generate_and_score_completions(rollout_inputs)
        if rollout_inputs is not inputs:
            # TRL logged the prompts the rollouts came from; log the short ones, so long prompts never fill the logs
            short_prompts = gather_object([row["prompt"] for row in inputs])
            logged = self._logs["prompt"]
            for _ in range(min(len(short_prompts), len(logged))):
                logged.pop()
            logged.extend(short_prompts)
        process_index = self.accelerator.process_index
        all_rewards = self._rollout_rewards
        output["rewards"] = all_rewards[process_index * len(inputs) : (process_index + 1) * len(inputs)]
        if self.args.distillation != "none":
            self._add_long_prompts(output, inputs, all_rewards)
        return output

    def _add_long_prompts(self, output: dict[str, Any], inputs: list[dict[str, Any]], all_rewards: torch.Tensor):
        """Tokenize the long prompts with the short prompts' chat template, count the tokens to distil, log metrics."""
        device = self.accelerator.device
        mode = "train" if self.model.training else "eval"
        long_prompt_ids, _, _ = self._tokenize_prompts([row["long_prompt"] for row in inputs])
        lengths = torch.tensor([len(ids) for ids in long_prompt_ids], device=device)
        limit = self.args.max_long_prompt_length
        if limit is not None and int(lengths.max()) > limit:
            raise ValueError(
                f"A long prompt of {int(lengths.max())} tokens exceeds max_long_prompt_length={limit}; rows over the "
                "limit should have been dropped at construction. Was the dataset changed after building the trainer?"
            )
        pad_kwargs = {"padding_side": "left", "pad_to_multiple_of": self.pad_to_multiple_of}
        output["long_prompt_ids"] = pad(
            [torch.tensor(ids) for ids in long_prompt_ids], padding_value=self._tokenizer.pad_token_id, **pad_kwargs
        ).to(device)
        output["long_prompt_mask"] = pad(
            [torch.ones(len(ids), dtype=torch.long) for ids in long_prompt_ids], padding_value=0, **pad_kwargs
        ).to(device)

        loss_mask = output["completion_mask"]
        if "tool_mask" in output:
            loss_mask = loss_mask * output["tool_mask"]
        if self.args.distillation == "kd":
            threshold = self.args.distillation_reward_threshold
            distilled = distillation_mask(loss_mask, output["rewards"], threshold)
            distilled_fraction = (all_rewards >= threshold).float().mean()
        else:  # DePO-IW: every rollout takes part, its advantage carries the sign
            distilled = loss_mask
            distilled_fraction = torch.ones((), device=device)
        total_tokens = self.accelerator.gather(distilled.sum().float()).sum()
        output["distillation_tokens_in_batch"] = total_tokens

        self._metrics[mode]["depo/kd_fraction"].append(distilled_fraction.item())
        self._metrics[mode]["depo/kd_tokens"].append(total_tokens.item())
        self._metrics[mode]["depo/long_prompt_tokens"].append(self.accelerator.gather(lengths).float().mean().item())

    # ------------------------------------------------------------------ loss

    @contextmanager
    def _capture_policy_logps(self) -> Iterator[list[torch.Tensor]]:
        """Collect, detached, the log-probs the proxy loss computes, so the short-context teacher costs nothing."""
        self._policy_logps_sink = []
        try:
            yield self._policy_logps_sink
        finally:
            self._policy_logps_sink = None

    def _get_per_token_logps_and_entropies(self, *args, **kwargs):
        logps, entropies, aux_loss = super()._get_per_token_logps_and_entropies(*args, **kwargs)
        if self._policy_logps_sink is not None:
            self._policy_logps_sink.append(logps.detach())
        return logps, entropies, aux_loss

    def _compute_loss(self, model, inputs):
        if self.args.distillation == "none":
            return super()._compute_loss(model, inputs)
        with self._capture_policy_logps() as captured:
            proxy_loss = super()._compute_loss(model, inputs)
        short_logps = captured[0]
        return proxy_loss + self.args.distillation_coef * self._distillation_loss(model, inputs, short_logps)

    def _long_context_logps(self, model, inputs: dict[str, Any], rows: torch.Tensor) -> torch.Tensor:
        """Completion-token log-probs of `rows` under their long prompts, `(len(rows), T)`."""
        prompt_ids, prompt_mask = inputs["long_prompt_ids"][rows], inputs["long_prompt_mask"][rows]
        if self.pad_to_multiple_of is None:  # drop the left padding no selected row needs
            first_column = int(prompt_mask.any(dim=0).nonzero()[0])
            prompt_ids, prompt_mask = prompt_ids[:, first_column:], prompt_mask[:, first_column:]
        completion_ids, completion_mask = inputs["completion_ids"][rows], inputs["completion_mask"][rows]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        logps, _, _ = self._get_per_token_logps_and_entropies(model, input_ids, attention_mask, completion_ids.size(1))
        return logps

    def _distillation_loss(self, model, inputs: dict[str, Any], short_logps: torch.Tensor) -> torch.Tensor:
        """L_KD or L_IW for this micro-batch, scaled so that gradients add up over processes and accumulation steps."""
        mode = "train" if self.model.training else "eval"
        args = self.args
        loss_mask = inputs["completion_mask"]
        if "tool_mask" in inputs:
            loss_mask = loss_mask * inputs["tool_mask"]
        rewards = inputs["rewards"]
        # Gradients are averaged over processes (DDP/ZeRO/FSDP) and summed over accumulation steps: a token-sum divided
        # by (tokens in the generation batch / processes * accumulation steps per generation) is the global mean.
        accumulation = self.current_gradient_accumulation_steps if mode == "train" else 1
        steps_per_generation = args.steps_per_generation if mode == "train" else 1
        global_token_normalizer = (
            inputs["distillation_tokens_in_batch"].clamp(min=1.0)
            / self.accelerator.num_processes
            * (accumulation / steps_per_generation)
        )

        if args.distillation == "kd":
            rows = (rewards >= args.distillation_reward_threshold).nonzero().squeeze(-1)
            if rows.numel() == 0:
                # Nothing to distil here, but ZeRO-3/FSDP need the same forward passes on every process: run one row
                # through the long pass with zero weight (its reward is below the threshold).
                rows = torch.zeros(1, dtype=torch.long, device=rewards.device)
            long_logps = self._long_context_logps(model, inputs, rows)
            short_logps, loss_mask, rewards = short_logps[rows], loss_mask[rows], rewards[rows]
            loss = conditional_kd_loss(
                long_logps,
                short_logps,
                loss_mask,
                rewards,
                args.distillation_reward_threshold,
                global_token_normalizer,
            )
            token_weights = distillation_mask(loss_mask, rewards, args.distillation_reward_threshold)
            loss_metric = loss * accumulation
        else:
            rows = torch.arange(rewards.size(0), device=rewards.device)
            long_logps = self._long_context_logps(model, inputs, rows)
            old_short_logps = inputs.get("old_per_token_logps")
            if old_short_logps is None:  # on-policy step: the behaviour policy is the current one
                old_short_logps = short_logps
            iw_kwargs = {
                "epsilon_low": self.epsilon_low,
                "epsilon_high": self.epsilon_high,
                "level": self.importance_sampling_level,
                "loss_type": self.loss_type,
            }
            advantages = inputs["advantages"]
            if self.loss_type == "dapo":
                loss = importance_weighted_loss(
                    long_logps, old_short_logps, advantages, loss_mask, normalizer=global_token_normalizer, **iw_kwargs
                )
            else:  # grpo / bnpo normalise within the micro-batch, like TRL's proxy loss
                loss = importance_weighted_loss(long_logps, old_short_logps, advantages, loss_mask, **iw_kwargs)
                loss = loss / accumulation
            loss_metric = loss * accumulation
            token_weights = loss_mask
            self._log_clip_ratio(mode, long_logps, old_short_logps, advantages, loss_mask)

        self._metrics[mode]["depo/kd_loss"].append(self.accelerator.gather(loss_metric.detach()).mean().item())
        gap = (short_logps - long_logps.detach()) * token_weights
        self._metrics[mode]["depo/logp_gap"].append(self._global_mean(gap.sum(), token_weights.sum()))
        return loss

    def _log_clip_ratio(self, mode, long_logps, old_short_logps, advantages, loss_mask):
        level = self.importance_sampling_level
        log_weights = importance_log_weights(long_logps.detach(), old_short_logps, loss_mask, level)
        clipped = importance_clip_mask(log_weights, advantages, self.epsilon_low, self.epsilon_high).float()
        if level == "sequence":  # one ratio per rollout
            present = (loss_mask.sum(-1, keepdim=True) > 0).float()
            value = self._global_mean((clipped * present).sum(), present.sum())
        else:
            value = self._global_mean((clipped * loss_mask).sum(), loss_mask.sum())
        self._metrics[mode]["depo/iw_clip_ratio"].append(value)

    def _global_mean(self, local_sum: torch.Tensor, local_count: torch.Tensor) -> float:
        """Sum / count over all processes; NaN when nothing was counted (TRL's `log` skips NaN values)."""
        totals = self.accelerator.reduce(torch.stack([local_sum.float(), local_count.float()]), reduction="sum")
        return (totals[0] / totals[1]).item() if totals[1] > 0 else float("nan")
