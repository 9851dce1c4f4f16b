"""DePOTrainer: TRL's GRPOTrainer plus DePO's long-context term (docs/design.md).

Generation, rewards, advantages and the proxy loss are TRL's, untouched. The only changes w.r.t. GRPOTrainer:
- the prompt rollouts are sampled from (`rollout_context`),
- `distillation_coef` times the long-context term of `distillation` added to the proxy loss: a
  [`~depo_trl.distillation.Distillation`] built per generation batch, run once per optimizer window on the window's
  rollouts regrouped by prompt (`depo_trl.distillation.LongPass`), its value completed per micro-batch.
"""

import hashlib
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from accelerate.utils import gather_object
from datasets import Dataset, IterableDataset
from transformers.utils import logging
from trl import GRPOTrainer
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import get_config_model_id

from .config import DePOConfig
from .data.columns import missing_column_problem
from .distillation import (
    DISTILLATIONS,
    Accumulation,
    ClippedObjective,
    Distillation,
    GenerationBatch,
    LongPass,
    Rollouts,
    Window,
)
from .long_context import install_shared_prefix_attention, layer_attention_windows
from .rewards import answer_column_problem, reads_answer_column
from .user_errors import UsageError
from .vllm_sync import depo_vllm_generation


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


def open_window(micro_batches: list[dict[str, Any]]) -> Window:
    """Make `micro_batches` (of one generation batch) an optimizer window of the long pass: each carries the same
    [`~depo_trl.distillation.Window`], whose first micro-batch to compute its loss runs the window's pass."""
    window = Window([micro_batch["rollout_index"] for micro_batch in micro_batches])
    for micro_batch in micro_batches:
        micro_batch["distillation_window"] = window
    return window


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
        self._captured_policy_logps: list[torch.Tensor] | None = None
        self._pending_rewards: torch.Tensor | None = None
        # YAML of the recipe the run was launched with, if any; the model card reproduces it.
        self.recipe: str | None = None
        with depo_vllm_generation(args.vllm_weight_sync, args.vllm_weight_sync_dir, args.vllm_request_timeout):
            super().__init__(model, reward_funcs, args, train_dataset, eval_dataset, processing_class, **kwargs)
        for split, dataset in _datasets_by_split(train_dataset, eval_dataset):
            problem = missing_column_problem(_column_names(dataset), args, self.reward_funcs)
            if problem:
                raise UsageError(f"The {split} dataset: {problem}.")
        self._reads_answer_column = reads_answer_column(self.reward_funcs)
        if args.uses_long_prompt and args.max_long_prompt_length is not None:
            self.train_dataset = self._drop_overlong_rows(self.train_dataset, "train")
            if isinstance(self.eval_dataset, dict):
                self.eval_dataset = {
                    name: self._drop_overlong_rows(dataset, f"eval ({name})")
                    for name, dataset in self.eval_dataset.items()
                }
            elif self.eval_dataset is not None:
                self.eval_dataset = self._drop_overlong_rows(self.eval_dataset, "eval")
        self.distillation_class = DISTILLATIONS.get(args.distillation)
        if self.distillation_class is not None:
            self.long_pass = LongPass(
                self.accelerator,
                naive_log_probs=self._naive_long_log_probs,
                pad_token_id=self._tokenizer.pad_token_id,
                share_prefix=args.share_long_prefix and self._install_long_prefix_sharing(),
                requested_tokens=args.distillation_chunk_tokens,
                memory_fraction=args.distillation_memory_fraction,
                rollouts_per_prompt=args.num_generations,
            )

    def _install_long_prefix_sharing(self) -> bool:
        """Register the shared-prefix attention for the model's attention implementation (process-wide, once), or
        say why the long pass cannot share its prompts."""
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
        logger.warning(f"share_long_prefix needs {reason}: the long pass recomputes each rollout's long prompt.")
        return False

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
        # Handed to `_generate_and_score_completions`, which called this: TRL keeps no per-rollout reward in its
        # output. Same combination as TRL's logged `reward`: weighted sum, NaN where every reward function abstained.
        weights = self.reward_weights.to(rewards_per_func.device).unsqueeze(0)
        rewards = (rewards_per_func * weights).nansum(dim=1)
        rewards[torch.isnan(rewards_per_func).all(dim=1)] = torch.nan
        self._pending_rewards = rewards  # all processes' rollouts, in gather order
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
        all_rewards, self._pending_rewards = self._pending_rewards, None
        if rollout_inputs is not inputs:
            # TRL logged the prompts the rollouts came from; log the short ones, so long prompts never fill the logs
            short_prompts = gather_object([row["prompt"] for row in inputs])
            logged = self._logs["prompt"]
            for _ in range(min(len(short_prompts), len(logged))):
                logged.pop()
            logged.extend(short_prompts)
        # Travels with each rollout through TRL's shuffle and split, so the long pass can find a micro-batch's rows
        output["rollout_index"] = torch.arange(len(inputs), device=self.accelerator.device)
        if self.distillation_class is not None:
            # One reference per rollout: TRL's shuffle and split hand the term to every micro-batch cut from this
            # generation batch, and to no other, so an evaluation in between cannot replace it.
            term = self._distillation_term(output, inputs, all_rewards)
            output["distillation"] = [term] * len(inputs)
        return output

    def _tokenize_each_long_prompt_once(self, long_prompts: list) -> list[torch.Tensor]:
        """Each rollout's long prompt as token ids; a prompt's rollouts share one tensor, rendered and tokenized once
        (a generation batch repeats each prompt `num_generations` times, and at the recipes' 15K tokens the
        tokenization is not free). With TRL's `environment_factory` each rollout is rendered with its environment's
        tools, so each is tokenized on its own."""
        if self.environment_factories is not None:  # TRL renders each rollout with its own environment's tools
            token_ids, _, _ = self._tokenize_prompts(long_prompts)
            return [torch.tensor(ids, device=self.accelerator.device) for ids in token_ids]
        keys = [json.dumps(prompt, sort_keys=True, default=str) for prompt in long_prompts]
        first: dict[str, int] = {}
        for index, key in enumerate(keys):
            first.setdefault(key, index)
        token_ids, _, _ = self._tokenize_prompts([long_prompts[index] for index in first.values()])
        device = self.accelerator.device
        tensors = {key: torch.tensor(ids, device=device) for key, ids in zip(first, token_ids)}
        return [tensors[key] for key in keys]

    def _distillation_term(
        self, output: dict[str, Any], inputs: list[dict[str, Any]], all_rewards: torch.Tensor
    ) -> Distillation:
        """The long-context term of this process's generation batch. The long prompt is tokenized with the short
        prompt's chat template (TRL's `_tokenize_prompts`)."""
        device = self.accelerator.device
        mode = "train" if self.model.training else "eval"
        long_prompt_ids = self._tokenize_each_long_prompt_once([row["long_prompt"] for row in inputs])
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
        rollouts = Rollouts(
            long_prompt_ids=long_prompt_ids,
            completion_ids=output["completion_ids"],
            completion_mask=output["completion_mask"],
            loss_mask=loss_mask,
        )
        process = self.accelerator.process_index
        batch = GenerationBatch(
            output=output,
            rewards=all_rewards[process * len(inputs) : (process + 1) * len(inputs)],
            all_rewards=all_rewards,
            args=self.args,
            proxy=ClippedObjective(
                self.loss_type, self.importance_sampling_level, self.epsilon_low, self.epsilon_high, self.args.delta
            ),
            gather=self.accelerator.gather,
            behaviour_logps=lambda: self._behaviour_logps(output),
        )
        term = self.distillation_class.from_generation_batch(rollouts, batch)
        for name, value in term.generation_metrics().items():
            self._metrics[mode][name].append(value)
        self._metrics[mode]["depo/long_prompt_tokens"].append(all_lengths.float().mean().item())
        return term

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

    def _naive_long_log_probs(self, model, input_ids, attention_mask, logits_to_keep: int) -> torch.Tensor:
        """TRL's log-prob helper for the long pass without sharing (not captured as the proxy's teacher)."""
        logps, _, _ = super()._get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep)
        return logps

    def _prepare_inputs(self, generation_batch):
        inputs = super()._prepare_inputs(generation_batch)
        if self.distillation_class is None:
            return inputs
        if not self.model.training:  # an evaluation batch is generated, and is its own window
            open_window([inputs])
            return inputs
        # TRL hands out micro-batch `_step % steps_per_generation` of the buffered generation batch. An optimizer
        # window is `gradient_accumulation_steps` of them, within one generation batch (the config makes one of the
        # two counts divide the other); its first micro-batch starts a window its successors share.
        position = self._step % self.args.steps_per_generation
        length = min(self.args.gradient_accumulation_steps, self.args.steps_per_generation)
        if position % length == 0:
            open_window(self._buffered_inputs[position : position + length])
        return inputs

    # ------------------------------------------------------------------ loss

    @contextmanager
    def _capturing_policy_logps(self) -> Iterator[list[torch.Tensor]]:
        """Collect, detached, the log-probs TRL's proxy loss computes, so the short-context teacher costs nothing."""
        self._captured_policy_logps = []
        try:
            yield self._captured_policy_logps
        finally:
            self._captured_policy_logps = None

    def _get_per_token_logps_and_entropies(self, *args, **kwargs):
        logps, entropies, aux_loss = super()._get_per_token_logps_and_entropies(*args, **kwargs)
        if self._captured_policy_logps is not None:
            self._captured_policy_logps.append(logps.detach())
        return logps, entropies, aux_loss

    def _accumulation(self) -> Accumulation:
        if not self.model.training:
            return Accumulation(self.accelerator.num_processes, steps=1, steps_per_generation=1)
        return Accumulation(
            self.accelerator.num_processes, self.current_gradient_accumulation_steps, self.args.steps_per_generation
        )

    def _compute_loss(self, model, inputs):
        if self.distillation_class is None:
            return super()._compute_loss(model, inputs)
        term: Distillation = inputs["distillation"][0]
        window: Window = inputs["distillation_window"]
        rows = inputs["rollout_index"]
        with self._capturing_policy_logps() as captured:
            proxy_loss = super()._compute_loss(model, inputs)
        if len(captured) != 1:
            raise RuntimeError(f"TRL's proxy loss computed the policy's log-probs {len(captured)} times, not once.")
        short_logps = captured[0]
        accumulation = self._accumulation()
        mode = "train" if self.model.training else "eval"
        window_loss = torch.zeros((), device=proxy_loss.device)
        if window.record is None:  # the window's first micro-batch runs the window's pass
            started = time.perf_counter()
            window_loss = term.run_window(model, self.long_pass, window, accumulation)
            if window_loss.device.type == "cuda":  # the forwards' kernels, not only their launch
                torch.cuda.synchronize(window_loss.device)
            # Its forwards only: their backward (and recomputation) runs in the step's backward
            self._metrics[mode]["depo/long_pass_seconds"].append(time.perf_counter() - started)
            self._log_reduced(term.window_metrics(window.record, torch.cat(window.rollouts_per_micro_batch)))
        record = window.record
        distillation_loss = window_loss + term.micro_batch_value(record, rows, short_logps)
        # Per micro-batch, times the accumulation steps: averaged over a step's micro-batches, the step's value
        value = self.accelerator.gather(distillation_loss.detach() * accumulation.steps).mean()
        self._metrics[mode][term.value_metric].append(value.item())
        gap_mask = term.logp_gap_mask(record, rows)
        gap = (short_logps - record.long_logps[rows]) * gap_mask
        self._log_reduced({"depo/logp_gap": (gap.sum(), gap_mask.sum())})
        return proxy_loss + self.args.distillation_coef * distillation_loss

    def _log_reduced(self, metrics: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Log each `(local sum, local count)` as sum / count over all processes; NaN when nothing was counted (TRL's
        `log` skips NaN values)."""
        mode = "train" if self.model.training else "eval"
        for name, (local_sum, local_count) in metrics.items():
            totals = self.accelerator.reduce(torch.stack([local_sum.float(), local_count.float()]), reduction="sum")
            self._metrics[mode][name].append((totals[0] / totals[1]).item() if totals[1] > 0 else float("nan"))
