"""DePOTrainer: TRL's GRPOTrainer plus DePO's long-context term (docs/design.md).

Generation, rewards, advantages and the proxy loss are TRL's, untouched. This subclass only
- picks the prompt the rollouts are sampled from (`rollout_context`),
- keeps each rollout's reward, and tokenizes the long prompts, for the generation batch,
- adds `distillation_coef * L_KD` (or `L_IW`) to the proxy loss. The long-context pass runs once per optimizer window
  on the window's rollouts, grouped by prompt so each long prompt is computed once (`depo_trl.long_context`), in
  chunks of bounded memory, with completion-token log-probs from TRL's fused LM head (no
  `[batch x long_len x vocab]` logits).
"""

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from accelerate.utils import gather_object
from datasets import Dataset, IterableDataset
from transformers.utils import logging
from trl import GRPOTrainer
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import get_config_model_id, pad

from .config import DePOConfig
from .long_context import (
    checkpointed_forward,
    chunk_tokens,
    install_shared_prefix_attention,
    layer_attention_windows,
    one_prompt_budget,
    pack_shared_row,
    plan_long_pass,
    shared_row_log_probs,
)
from .losses import (
    accumulated_token_normalizer,
    conditional_kd_loss,
    distillation_mask,
    importance_clip_mask,
    importance_log_weights,
    importance_weighted_loss,
    iw_token_weights,
)
from .rewards import REWARD_FUNCTIONS, answer_column_problem
from .user_errors import UsageError
from .vllm_sync import vllm_weight_sync


logger = logging.get_logger(__name__)

# Rows are tokenized in batches of this size when `max_long_prompt_length` filters a dataset.
_LENGTH_CHECK_BATCH_SIZE = 256


def mixed_rollout_uses_long_prompt(row_key: str, seed: int, step: int) -> bool:
    """Coin flip of the 'Short-Long' baseline: whether a row's rollout group is sampled from its long prompt.

    A pure function of `(seed, step, row_key)`, so all `num_generations` copies of a row, on every process, agree.
    Probability 1/2 over rows and steps. (A resumed run generates at other steps, so it draws other coins.)
    """
    digest = hashlib.blake2b(f"{seed}:{step}:{row_key}".encode(), digest_size=8).digest()
    return digest[-1] & 1 == 1


@dataclass
class LongContextBatch:
    """The long-context pass's view of one process's generation batch, indexed by rollout (`rollout_index`).

    Built once per generation batch and carried by every micro-batch cut from it (`inputs["long_context"]`). The last
    two fields are filled in by the pass: token weights per optimizer window, log-probs per chunk.
    """

    long_prompt_ids: list[torch.Tensor]  # per rollout, unpadded, rendered with the chat template
    completion_ids: torch.Tensor  # (B, T), right-padded
    completion_mask: torch.Tensor  # (B, T)
    loss_mask: torch.Tensor  # completion tokens that carry a loss (tool-output tokens excluded)
    distilled_mask: torch.Tensor  # KD: loss tokens of rollouts over the reward threshold; IW: the loss mask
    advantages: torch.Tensor  # (B,)
    old_logps: torch.Tensor | None  # IW: behaviour log-probs under the short prompt (pi_old)
    iw_correction: torch.Tensor | None  # TRL's vLLM importance-sampling ratio x off-policy mask, when either is on
    tokens_in_batch: torch.Tensor  # distilled tokens over all processes (KD / DAPO normaliser)
    completion_lengths: list[int]  # tokens of each completion (masks are prefix-contiguous: the tokens up to EOS)
    long_logps: torch.Tensor  # (B, T) float32, detached: filled chunk by chunk
    token_weights: torch.Tensor  # (B, T) float32: filled window by window


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
    # TRL's model card cites `_paper`; the paper's arXiv id is not known to this project yet, so only its title is given
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
            model_name = model if isinstance(model, str) else get_config_model_id(model.config)
            args = DePOConfig(f"{str(model_name).split('/')[-1]}-DePO")
        elif not isinstance(args, DePOConfig):
            raise TypeError(f"DePOTrainer needs a DePOConfig, got {type(args).__name__}. Build a DePOConfig instead.")
        if args.uses_long_prompt:
            for split, dataset in _datasets_by_split(train_dataset, eval_dataset):
                if "long_prompt" not in _column_names(dataset):
                    raise UsageError(
                        f"rollout_context={args.rollout_context!r} with distillation={args.distillation!r} needs a "
                        f"`long_prompt` column, but the {split} dataset has only {_column_names(dataset)}. Build the "
                        "data with `python -m depo_trl.data.build`, or train the 'Short' baseline with "
                        "rollout_context='short', distillation='none'."
                    )
        self._policy_logps_sink: list[torch.Tensor] | None = None
        self._rollout_rewards: torch.Tensor | None = None
        self._warned_no_sharing = False
        # YAML of the recipe the run was launched with, if any; the model card reproduces it.
        self.recipe: str | None = None
        with vllm_weight_sync(args.vllm_weight_sync, args.vllm_weight_sync_dir):
            super().__init__(model, reward_funcs, args, train_dataset, eval_dataset, processing_class, **kwargs)
        self._reads_answer_column = any(func in REWARD_FUNCTIONS.values() for func in self.reward_funcs)
        if self._reads_answer_column:
            for split, dataset in _datasets_by_split(train_dataset, eval_dataset):
                columns = _column_names(dataset)
                if "answer" not in columns:
                    raise UsageError(f"The {split} dataset: {answer_column_problem(None)} (it has {columns}).")

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
        """The rows with `prompt` replaced by `long_prompt` where the rollout context asks for it.

        Evaluation samples from the long prompt for `rollout_context="long"` and from the short one otherwise: the
        'Short-Long' coin flip is a training choice, and evaluating on it would make eval rewards a random mixture.
        """
        context = self.args.rollout_context
        if context == "short" or (context == "mixed" and not self.model.training):
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

    def _check_answers_on_every_process(self, inputs: list[dict[str, Any]]) -> None:
        """A malformed `answer` in one process's rows stops every process with the same message: the built-in
        rewards would raise on that process only, leaving the others waiting in TRL's reward gather."""
        problem = answer_column_problem([row.get("answer") for row in inputs])
        problems = [found for found in gather_object([problem]) if found]
        if problems:
            raise UsageError(f"A {'training' if self.model.training else 'evaluation'} batch: {problems[0]}.")

    def _generate_and_score_completions(self, inputs):
        if self._reads_answer_column:
            self._check_answers_on_every_process(inputs)
        rollout_inputs = self._rollout_inputs(inputs)
        if self.args.rollout_context != "short":
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
        # Travels with each rollout through TRL's shuffle and split, so the long pass can find a micro-batch's rows
        output["rollout_index"] = torch.arange(len(inputs), device=self.accelerator.device)
        if self.args.distillation != "none":
            # One reference per rollout: TRL's shuffle and split hand the state to every micro-batch cut from this
            # generation batch, and to no other, so an evaluation in between cannot replace it.
            state = self._long_context_batch(output, inputs, all_rewards)
            output["long_context"] = [state] * len(inputs)
        return output

    def _long_context_batch(
        self, output: dict[str, Any], inputs: list[dict[str, Any]], all_rewards: torch.Tensor
    ) -> LongContextBatch:
        """What the long pass needs for every rollout of the local generation batch, and the batch-level metrics.

        The long prompt is tokenized with the short prompt's chat template (TRL's `_tokenize_prompts`).
        """
        device = self.accelerator.device
        mode = "train" if self.model.training else "eval"
        long_prompt_ids, _, _ = self._tokenize_prompts([row["long_prompt"] for row in inputs])
        all_lengths = self.accelerator.gather(torch.tensor([len(ids) for ids in long_prompt_ids], device=device))
        limit = self.args.max_long_prompt_length
        if limit is not None and int(all_lengths.max()) > limit:  # decided on the gathered lengths: every process
            raise ValueError(
                f"A long prompt of {int(all_lengths.max())} tokens exceeds max_long_prompt_length={limit}. Rows over "
                "the limit are dropped when the trainer is built; a dataset passed to evaluate() or changed later is "
                "not filtered. Filter it, or raise max_long_prompt_length."
            )
        loss_mask = output["completion_mask"]
        if "tool_mask" in output:
            loss_mask = loss_mask * output["tool_mask"]
        old_logps = output.get("old_per_token_logps")
        if self.args.distillation == "iw" and old_logps is None:
            old_logps = self._behaviour_logps(output)
        if self.args.distillation == "kd":
            threshold = self.args.distillation_reward_threshold
            distilled = distillation_mask(loss_mask, output["rewards"], threshold)
            distilled_fraction = (all_rewards >= threshold).float().mean()
        else:  # DePO-IW: every rollout takes part, its advantage carries the sign
            distilled = loss_mask
            distilled_fraction = torch.ones((), device=device)
        off_policy_mask = None
        if self.args.distillation == "iw" and self.off_policy_mask_threshold is not None:
            # The rollouts TRL's mask would drop for the sampler's drift from pi_old (vLLM vs trainer, short context),
            # decided once per generation batch: a KL against the long-context policy would count the context gap
            # that DePO-IW learns, and drop most negative-advantage rollouts from the term.
            sampling_logps = output.get("sampling_per_token_logps", old_logps)
            off_policy_mask = self.get_off_policy_mask(
                output["advantages"].unsqueeze(-1),
                old_logps,
                sampling_logps,
                loss_mask,
                self.off_policy_mask_threshold,
            )
        iw_correction = output.get("importance_sampling_ratio")
        if off_policy_mask is not None:
            iw_correction = off_policy_mask if iw_correction is None else iw_correction * off_policy_mask
        total_tokens = self.accelerator.gather(distilled.sum().float()).sum()
        self._metrics[mode]["depo/kd_fraction"].append(distilled_fraction.item())
        self._metrics[mode]["depo/kd_tokens"].append(total_tokens.item())
        self._metrics[mode]["depo/long_prompt_tokens"].append(all_lengths.float().mean().item())
        return LongContextBatch(
            long_prompt_ids=[torch.tensor(ids, device=device) for ids in long_prompt_ids],
            completion_ids=output["completion_ids"],
            completion_mask=output["completion_mask"],
            loss_mask=loss_mask,
            distilled_mask=distilled,
            advantages=output["advantages"],
            old_logps=old_logps,
            iw_correction=iw_correction,
            tokens_in_batch=total_tokens,
            completion_lengths=output["completion_mask"].sum(-1).tolist(),
            long_logps=torch.zeros_like(loss_mask, dtype=torch.float32),
            token_weights=torch.zeros_like(loss_mask, dtype=torch.float32),
        )

    def _behaviour_logps(self, output: dict[str, Any]) -> torch.Tensor:
        """Log-probs of the rollouts under the short prompt with the weights that sampled them (DePO-IW's `pi_old`).

        TRL skips this pass when its own loss can use the current log-probs; the long pass of a later micro-batch
        cannot, so it is run here, without gradients, once per generation batch (and, like TRL's own no-grad passes,
        without gradient checkpointing).
        """
        input_ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
        attention_mask = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
        batch_size = self.args.per_device_train_batch_size if self.model.training else None
        with torch.no_grad(), disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs):
            logps, _, _ = super()._get_per_token_logps_and_entropies(
                self.model, input_ids, attention_mask, output["completion_ids"].size(1), batch_size=batch_size
            )
        return logps

    def _prepare_inputs(self, generation_batch):
        buffered = self._buffered_inputs
        inputs = super()._prepare_inputs(generation_batch)
        if self.args.distillation != "none":
            if not self.model.training:
                self._assign_distillation_windows([inputs], accumulation_steps=1)
            elif self._buffered_inputs is not buffered:  # a new generation batch was split into micro-batches
                self._assign_distillation_windows(self._buffered_inputs, self.args.gradient_accumulation_steps)
        return inputs

    def _assign_distillation_windows(self, micro_batches: list[dict[str, Any]], accumulation_steps: int) -> None:
        """Hand each optimizer window's rollouts (the `rollout_index` of each of its micro-batches) to the window's
        first micro-batch.

        TRL shuffles a generation batch's rollouts across micro-batches, which scatters a prompt's rollouts. The long
        pass regroups them: it runs once per optimizer window (the `accumulation_steps` micro-batches whose gradients
        one optimizer step sums), on all of the window's rollouts, grouped by prompt. Every rollout carries its own
        token weights, so the summed gradient is the one of per-micro-batch losses, whatever the split.
        """
        for start in range(0, len(micro_batches), accumulation_steps):
            window = micro_batches[start : start + accumulation_steps]
            rollouts = [micro_batch["rollout_index"] for micro_batch in window]
            for position, micro_batch in enumerate(window):
                micro_batch["distillation_window"] = rollouts if position == 0 else None

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
        state: LongContextBatch = inputs["long_context"][0]
        with self._capture_policy_logps() as captured:
            proxy_loss = super()._compute_loss(model, inputs)
        distillation_loss = torch.zeros((), device=proxy_loss.device)
        window = inputs.get("distillation_window")
        if window is not None:
            distillation_loss = distillation_loss + self._window_long_pass(model, state, window)
        if self.args.distillation == "kd":
            distillation_loss = distillation_loss + self._kd_value(state, inputs["rollout_index"], captured[0])
        self._log_micro_batch_metrics(state, inputs["rollout_index"], captured[0], distillation_loss)
        return proxy_loss + self.args.distillation_coef * distillation_loss

    def _window_token_weights(
        self, state: LongContextBatch, window: list[torch.Tensor], rows: torch.Tensor
    ) -> torch.Tensor:
        """Per-token weights of the window's rollouts: the loss is `sum(weights * per-token term)`.

        Gradients are averaged over processes and summed over accumulation steps, so a token sum divided by
        (tokens in the generation batch / processes * accumulation steps per generation) is the global mean; GRPO and
        BNPO reductions weight rows by their own micro-batch, like TRL's proxy loss.
        """
        training = self.model.training
        accumulation = self.current_gradient_accumulation_steps if training else 1
        steps_per_generation = self.args.steps_per_generation if training else 1
        if self.args.distillation == "kd" or self.loss_type == "dapo":
            normalizer = accumulated_token_normalizer(
                state.tokens_in_batch, self.accelerator.num_processes, accumulation, steps_per_generation
            )
            return state.distilled_mask[rows] / normalizer
        weights = [iw_token_weights(state.loss_mask[rollouts], self.loss_type) / accumulation for rollouts in window]
        return torch.cat(weights)

    def _window_long_pass(self, model, state: LongContextBatch, window: list[torch.Tensor]) -> torch.Tensor:
        """The long-context term of an optimizer window: its gradient, and for DePO-IW its value too.

        Collective-safe: every process runs the same number of chunk forwards, and the window's metrics are reduced
        once, after the chunks, never inside one (a chunk's forward is run again during the backward).
        """
        rows = torch.cat(window)
        state.token_weights[rows] = self._window_token_weights(state, window, rows)
        if self.args.distillation == "kd":  # only correct rollouts go through the long context
            rows = rows[(state.token_weights[rows] > 0).any(-1)]
        share = self._long_prefix_sharing_enabled()
        rollouts = rows.tolist()
        prompt_lengths = [len(state.long_prompt_ids[rollout]) for rollout in rollouts]
        completion_lengths = [state.completion_lengths[rollout] for rollout in rollouts]
        prompt_keys = [tuple(state.long_prompt_ids[rollout].tolist()) for rollout in rollouts]
        budget = self.args.distillation_chunk_tokens or one_prompt_budget(
            prompt_keys, prompt_lengths, completion_lengths, share
        )
        chunks = plan_long_pass(prompt_keys, prompt_lengths, completion_lengths, budget, share)
        tokens = sum(chunk_tokens(chunk, prompt_lengths, completion_lengths, share) for chunk in chunks)
        # ZeRO-3 / FSDP: every process must run as many forwards (a chunk is one forward; extra chunks are one
        # rollout with zero weight), and recompute them alike: whenever one process holds more than its budget
        agreed = self.accelerator.gather(torch.tensor([[len(chunks), int(tokens > budget)]], device=rows.device))
        num_chunks, over_budget = (int(value) for value in agreed.max(dim=0).values)
        recompute = bool(over_budget) and torch.is_grad_enabled()
        chunk_losses = []
        for index in range(num_chunks):
            if index < len(chunks):
                chunk_rows = [[rollouts[position] for position in row] for row in chunks[index]]
                weight_scale = 1.0
            else:
                chunk_rows, weight_scale = [[0]], 0.0
            chunk_losses.append(self._chunk_loss(model, state, chunk_rows, share, weight_scale, recompute))
        if self.args.distillation == "iw":
            self._log_clip_ratio(state, rows)
        # No process has anything to distil: every process skips the pass alike
        return torch.stack(chunk_losses).sum() if chunk_losses else torch.zeros((), device=rows.device)

    @property
    def _router_logits_requested(self) -> bool:
        config = self.accelerator.unwrap_model(self.model).config.get_text_config()
        return bool(getattr(config, "output_router_logits", False))

    def _long_prefix_sharing_enabled(self) -> bool:
        if not self.args.share_long_prefix:
            return False
        config = self.accelerator.unwrap_model(self.model).config
        implementation = getattr(config, "_attn_implementation", None)
        if not install_shared_prefix_attention(implementation):
            reason = f"SDPA or flash-attention, not {implementation!r}"
        elif layer_attention_windows(config) is None:
            reason = (
                f"full or sliding-window attention layers, not {sorted(set(config.get_text_config().layer_types))}"
            )
        else:
            return True
        if not self._warned_no_sharing:
            logger.warning(f"share_long_prefix needs {reason}: the long pass recomputes each rollout's long prompt.")
            self._warned_no_sharing = True
        return False

    def _chunk_loss(
        self,
        model,
        state: LongContextBatch,
        chunk_rows: list[list[int]],
        share: bool,
        weight_scale: float,
        recompute: bool,
    ) -> torch.Tensor:
        """Weighted long-context loss of one chunk. With `recompute`, the chunk's activations are recomputed during
        the backward (activation checkpointing), so memory holds one chunk at a time while the step keeps the single
        backward that DeepSpeed's accumulation bookkeeping expects."""
        rollouts = torch.tensor([rollout for row in chunk_rows for rollout in row], device=self.accelerator.device)
        backbone = self.accelerator.unwrap_model(model)
        backbone = (backbone.get_base_model() if hasattr(backbone, "get_base_model") else backbone).base_model
        with checkpointed_forward(backbone) if recompute else nullcontext():
            long_logps = self._long_logps(model, state, chunk_rows, share)
        if weight_scale:
            state.long_logps[rollouts] = long_logps.detach().float()
        return self._weighted_terms(state, rollouts, long_logps, weight_scale)

    def _long_logps(self, model, state: LongContextBatch, chunk_rows: list[list[int]], share: bool) -> torch.Tensor:
        """Completion-token log-probs `(rollouts, T)` under the long prompts, in `chunk_rows` order."""
        completion_ids, completion_mask = state.completion_ids, state.completion_mask
        rollouts = [rollout for row in chunk_rows for rollout in row]
        if not share:
            # Completions are padded to the generation batch's longest; this chunk's longest is enough
            width = max(max(state.completion_lengths[rollout] for rollout in rollouts), 1)
            prompts = [state.long_prompt_ids[rollout] for rollout in rollouts]
            prompt_ids = pad(prompts, padding_value=self._tokenizer.pad_token_id, padding_side="left")
            prompt_mask = pad([torch.ones_like(p) for p in prompts], padding_value=0, padding_side="left")
            input_ids = torch.cat([prompt_ids, completion_ids[rollouts, :width]], dim=1)
            attention_mask = torch.cat([prompt_mask, completion_mask[rollouts, :width]], dim=1)
            logps, _, _ = super()._get_per_token_logps_and_entropies(model, input_ids, attention_mask, width)
            return torch.nn.functional.pad(logps, (0, completion_ids.size(1) - width))
        # The chunk's prompt groups in one packed row: one forward
        packed = pack_shared_row(
            [
                (
                    state.long_prompt_ids[group[0]],
                    [(rollout, completion_ids[rollout, : state.completion_lengths[rollout]]) for rollout in group],
                )
                for group in chunk_rows
            ]
        )
        # MoE: the load-balancing loss would read the attention mask, here a placeholder, and is not used
        router = {"output_router_logits": False} if self._router_logits_requested else {}
        with self.accelerator.autocast():
            log_probs = shared_row_log_probs(model, packed, **router)
        order = {rollout: position for position, rollout in enumerate(rollouts)}
        logps = log_probs.new_zeros((len(rollouts), completion_ids.size(1)))
        target, token = packed.rollout.apply_(order.__getitem__).to(logps.device), packed.token.to(logps.device)
        return logps.index_put((target, token), log_probs[0, packed.position - 1])

    def _weighted_terms(
        self, state: LongContextBatch, rollouts: torch.Tensor, long_logps: torch.Tensor, weight_scale: float
    ) -> torch.Tensor:
        """The chunk's share of the long-context term. KD: L_KD with the long pass itself as the frozen teacher (value
        0, the gradient of L_KD); its value is added per micro-batch by `_kd_value`, once the proxy pass has computed
        the short-context teacher. IW: the full loss, corrected like TRL's proxy loss for rollouts vLLM sampled."""
        weights = state.token_weights[rollouts] * weight_scale
        if self.args.distillation == "kd":
            return conditional_kd_loss(long_logps, long_logps, weights)
        return importance_weighted_loss(
            long_logps,
            state.old_logps[rollouts],
            state.advantages[rollouts],
            state.loss_mask[rollouts],
            weights,
            self.epsilon_low,
            self.epsilon_high,
            self.importance_sampling_level,
            delta=self.args.delta,
            correction=None if state.iw_correction is None else state.iw_correction[rollouts],
        )

    def _kd_value(self, state: LongContextBatch, rows: torch.Tensor, short_logps: torch.Tensor) -> torch.Tensor:
        """The value of this micro-batch's share of L_KD (no gradient: the long-context log-probs are detached)."""
        return conditional_kd_loss(state.long_logps[rows], short_logps, state.token_weights[rows])

    def _log_micro_batch_metrics(
        self, state: LongContextBatch, rows: torch.Tensor, short_logps: torch.Tensor, distillation_loss: torch.Tensor
    ) -> None:
        mode = "train" if self.model.training else "eval"
        accumulation = self.current_gradient_accumulation_steps if mode == "train" else 1
        # Per micro-batch, times the accumulation steps: averaged over a step's micro-batches, the step's value
        value = self.accelerator.gather(distillation_loss.detach() * accumulation).mean()
        self._metrics[mode]["depo/kd_loss"].append(value.item())
        distilled = state.distilled_mask[rows]
        gap = (short_logps - state.long_logps[rows]) * distilled
        self._metrics[mode]["depo/logp_gap"].append(self._global_mean(gap.sum(), distilled.sum()))

    def _log_clip_ratio(self, state: LongContextBatch, rows: torch.Tensor) -> None:
        """Share of clipped importance ratios over the window's rollouts, from the log-probs the chunks recorded."""
        mode = "train" if self.model.training else "eval"
        loss_mask = state.loss_mask[rows].float()
        level = self.importance_sampling_level
        log_weights = importance_log_weights(state.long_logps[rows], state.old_logps[rows], loss_mask, level)
        clipped = importance_clip_mask(log_weights, state.advantages[rows], self.epsilon_low, self.epsilon_high)
        if level == "sequence":  # one ratio per rollout
            present = (loss_mask.sum(-1, keepdim=True) > 0).float()
            value = self._global_mean((clipped.float() * present).sum(), present.sum())
        else:
            value = self._global_mean((clipped.float() * loss_mask).sum(), loss_mask.sum())
        self._metrics[mode]["depo/iw_clip_ratio"].append(value)

    def _global_mean(self, local_sum: torch.Tensor, local_count: torch.Tensor) -> float:
        """Sum / count over all processes; NaN when nothing was counted (TRL's `log` skips NaN values)."""
        totals = self.accelerator.reduce(torch.stack([local_sum.float(), local_count.float()]), reduction="sum")
        return (totals[0] / totals[1]).item() if totals[1] > 0 else float("nan")
