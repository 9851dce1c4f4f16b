"""DePOTrainer: TRL's GRPOTrainer plus DePO's long-context term (docs/design.md).

Generation, rewards, advantages and the proxy loss are TRL's, untouched. The only changes w.r.t. GRPOTrainer:
- `_generate_and_score_completions` samples the rollouts from the prompt `rollout_context` names
  (`depo_trl.rollout_context`) and builds the generation batch's long-context term (`depo_trl.distillation`);
- `_prepare_inputs` shuffles a generation batch by whole prompt groups (`depo_trl.prompt_groups`) and gives the
  micro-batches of one optimizer step a shared [`~depo_trl.distillation.Window`];
- `_compute_loss` adds `distillation_coef` times the term: the window's long pass, run by its first micro-batch on
  the window's rollouts regrouped by prompt, and the term's value completed per micro-batch.
TRL computes two things these overrides read and does not return them: the per-rollout rewards
(`_calculate_rewards`) and the proxy pass's log-probabilities (`_get_per_token_logps_and_entropies`). Each reaches the
override that called it through a [`Tap`] opened around the call.
"""

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from accelerate.utils import gather_object, is_peft_model
from datasets import Dataset, IterableDataset
from trl import GRPOTrainer
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import get_config_model_id

from .config import DePOConfig
from .data.checks import (
    check_batch_answers,
    check_dataset,
    check_long_prompt_lengths,
    datasets_by_split,
    drop_overlong_rows,
)
from .distillation import (
    DISTILLATIONS,
    Accumulation,
    ClippedObjective,
    GenerationBatch,
    LongPass,
    Rollouts,
    Window,
    tokenize_long_prompts,
)
from .distillation.long_pass import enable_prefix_sharing, sequence_parallel
from .distillation.long_pass.checkpointing import reentrant_checkpointing_problem
from .distillation.long_pass.sequence_parallel import SequenceParallelGroup
from .exact_resume import ExactResumeCallback
from .model_card import PAPER, depo_model_card_section
from .prompt_groups import PROMPT_GROUP, prompt_groups, shuffled_by_prompt_group
from .rewards import reads_answer_column
from .rollout_context import rollout_rows
from .user_errors import UsageError
from .vllm_sync import depo_vllm_generation


class Tap:
    """Values a TRL method computes but does not return, handed to the override that calls it: the override opens the
    tap around its call (`with tap.open() as values:`), the hook TRL calls inside records into it."""

    def __init__(self):
        self._values: list | None = None

    @contextmanager
    def open(self) -> Iterator[list]:
        self._values = []
        try:
            yield self._values
        finally:
            self._values = None

    def record(self, value: Any) -> None:
        if self._values is not None:
            self._values.append(value)


def open_window(micro_batches: list[dict[str, Any]]) -> Window:
    """Make `micro_batches` (of one generation batch) an optimizer window of the long pass: each carries the same
    [`~depo_trl.distillation.Window`], whose first micro-batch to compute its loss runs the window's pass."""
    window = Window([micro_batch["rollout_index"] for micro_batch in micro_batches])
    for micro_batch in micro_batches:
        micro_batch["distillation_window"] = window
    return window


class DePOTrainer(GRPOTrainer):
    """
    Trainer for DePO (Decomposed Policy Optimization) and its baselines, on top of [`~trl.GRPOTrainer`].

    Takes the same arguments as [`~trl.GRPOTrainer`], with a [`DePOConfig`], and the `recipe` (YAML text) the run was
    launched with, if any, for the model card. The dataset has a conversational (or plain-text) `prompt` column (short
    context) and, whenever `distillation != "none"` or `rollout_context != "short"`, a `long_prompt` column (long
    context); reward functions read their own columns (e.g. `answer` for [`depo_trl.rewards.em_reward`]).

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
    _paper = PAPER
    #: Ranks that split each long-pass forward, from the accelerate config's `parallelism_config` (set when the
    #: accelerator is built)
    sequence_parallel_size: int = 1

    def __init__(
        self,
        model,
        reward_funcs=None,
        args: DePOConfig | None = None,
        train_dataset: Dataset | IterableDataset | None = None,
        eval_dataset=None,
        processing_class=None,
        recipe: str | None = None,
        **kwargs,
    ):
        if args is None:
            model_name = model if isinstance(model, str) else get_config_model_id(model.config)
            args = DePOConfig(f"{str(model_name).split('/')[-1]}-DePO")
        elif not isinstance(args, DePOConfig):
            raise TypeError(f"DePOTrainer needs a DePOConfig, got {type(args).__name__}. Build a DePOConfig instead.")
        given_funcs = reward_funcs if isinstance(reward_funcs, list) else [reward_funcs]
        for split, dataset in datasets_by_split(train_dataset, eval_dataset):  # before the model loads
            check_dataset(dataset, args, given_funcs, f"The {split} dataset")
        uses_peft = kwargs.get("peft_config") is not None or (not isinstance(model, str) and is_peft_model(model))
        problem = reentrant_checkpointing_problem(args, uses_peft)
        if problem:
            raise UsageError(problem + ".")
        self.recipe = recipe
        self._reward_tap, self._policy_logps_tap = Tap(), Tap()
        with depo_vllm_generation(args.vllm_weight_sync, args.vllm_weight_sync_dir, args.vllm_request_timeout):
            super().__init__(model, reward_funcs, args, train_dataset, eval_dataset, processing_class, **kwargs)
        self.add_callback(ExactResumeCallback())  # checkpoints at generation-batch boundaries, for an exact resume
        self._reads_answer_column = reads_answer_column(self.reward_funcs)
        if args.uses_long_prompt and args.max_long_prompt_length is not None:
            self.train_dataset, self.eval_dataset = drop_overlong_rows(
                self.train_dataset,
                self.eval_dataset,
                args.max_long_prompt_length,
                lambda prompts: [len(ids) for ids in self._tokenize_prompts(prompts)[0]],  # rendered as in training
            )
        self.distillation_class = DISTILLATIONS.get(args.distillation)
        if self.distillation_class is not None:
            config = self.accelerator.unwrap_model(self.model).config
            share_prefix = args.share_long_prefix and enable_prefix_sharing(config)
            group = SequenceParallelGroup.for_model(
                config, self.sequence_parallel_size, self.accelerator, share_prefix
            )
            self.long_pass = LongPass(
                self.accelerator,
                naive_log_probs=self._naive_long_log_probs,
                pad_token_id=self._tokenizer.pad_token_id,
                share_prefix=share_prefix,
                requested_tokens=args.distillation_forward_tokens,
                memory_fraction=args.distillation_memory_fraction,
                rollouts_per_prompt=args.num_generations,
                sequence_parallel=group,
            )

    def create_accelerator_and_postprocess(self):
        """Transformers' accelerator, whose sequence parallelism (an accelerate config's `parallelism_config`) DePO
        takes for its long pass only: Accelerate's own would shard the dataloader's batches as token rows, and DePO's
        batches are prompts, whose rollouts every rank keeps for the proxy term (`sequence_parallel.py`)."""
        super().create_accelerator_and_postprocess()
        config = self.accelerator.parallelism_config
        # The launch's size where an earlier trainer of this process already took the (process-wide) state's
        enabled = config is not None and config.sp_enabled
        self.sequence_parallel_size = config.sp_size if enabled else sequence_parallel.launched_size()
        if enabled:
            self.accelerator.state.parallelism_config = None
        # DePOConfig checked the launch's size; a `parallelism_config` given in Python is seen here first
        problem = sequence_parallel.configuration_problem(self.args, self.sequence_parallel_size)
        if problem:
            raise UsageError(problem + ".")

    def create_model_card(self, model_name=None, dataset_name=None, tags=None):
        """TRL's model card, plus the DePO settings of the run and the recipe it was launched with."""
        super().create_model_card(model_name=model_name, dataset_name=dataset_name, tags=tags)
        if self.is_world_process_zero():
            with open(f"{self.args.output_dir}/README.md", "a", encoding="utf-8") as handle:
                handle.write(depo_model_card_section(self.args, self.recipe))

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        if "long_prompt" not in self._signature_columns:
            self._signature_columns = [*self._signature_columns, "long_prompt"]

    # ------------------------------------------------------------------ generation batch

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        # TRL's logged `reward`: the weighted sum, NaN where every reward function abstained; all processes' rollouts
        weights = self.reward_weights.to(rewards_per_func.device).unsqueeze(0)
        rewards = (rewards_per_func * weights).nansum(dim=1)
        rewards[torch.isnan(rewards_per_func).all(dim=1)] = torch.nan
        self._reward_tap.record(rewards)
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        if self._reads_answer_column:
            check_batch_answers(inputs, "training" if self.model.training else "evaluation")
        rows = rollout_rows(
            inputs, self.args.rollout_context, self.model.training, self.args.seed, self.state.global_step
        )
        if self.args.rollout_context != "short":
            self._log_completion_extra(
                "rollout_context", ["short" if r is i else "long" for r, i in zip(rows, inputs)]
            )
        with self._reward_tap.open() as rewards:
            output = super()._generate_and_score_completions(rows)
        if rows is not inputs:  # TRL logged the prompts sampled from; log the short ones, or long ones fill the logs
            logged = self._logs["prompt"]
            short_prompts = gather_object([row["prompt"] for row in inputs])
            for _ in range(min(len(short_prompts), len(logged))):
                logged.pop()
            logged.extend(short_prompts)
        # Travel with each rollout through TRL's shuffle and split: the long pass finds a micro-batch's rows by the
        # index, the shuffle keeps a prompt's rollouts together by the group
        output["rollout_index"] = torch.arange(len(inputs), device=self.accelerator.device)
        output[PROMPT_GROUP] = prompt_groups([row["prompt"] for row in inputs], self.accelerator.device)
        if self.distillation_class is not None:
            # One reference per rollout: TRL's shuffle and split hand the term to every micro-batch cut from this
            # generation batch, and to no other, so an evaluation in between cannot replace it
            output["distillation"] = [self._distillation_term(output, inputs, rewards[0])] * len(inputs)
        return output

    def _distillation_term(self, output: dict[str, Any], inputs: list[dict[str, Any]], all_rewards: torch.Tensor):
        """The long-context term of this process's generation batch (`all_rewards`: every process's rollouts)."""
        device, mode = self.accelerator.device, "train" if self.model.training else "eval"
        long_prompt_ids = tokenize_long_prompts(
            [row["long_prompt"] for row in inputs],
            lambda prompts: self._tokenize_prompts(prompts)[0],
            device,
            each_on_its_own=self.environment_factories is not None,
        )
        all_lengths = self.accelerator.gather(torch.tensor([len(ids) for ids in long_prompt_ids], device=device))
        check_long_prompt_lengths(all_lengths, self.args.max_long_prompt_length)
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
        term = self.distillation_class.from_generation_batch(
            Rollouts.from_generation_output(output, long_prompt_ids), batch
        )
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
        """TRL's log-prob helper for the long pass without sharing (not tapped as the proxy's teacher)."""
        logps, _, _ = super()._get_per_token_logps_and_entropies(model, input_ids, attention_mask, logits_to_keep)
        return logps

    def _prepare_inputs(self, generation_batch):
        with shuffled_by_prompt_group(self.args.shuffle_prompt_groups):
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

    def _get_per_token_logps_and_entropies(self, *args, **kwargs):
        logps, entropies, aux_loss = super()._get_per_token_logps_and_entropies(*args, **kwargs)
        self._policy_logps_tap.record(logps.detach())
        return logps, entropies, aux_loss

    def _compute_loss(self, model, inputs):
        if self.distillation_class is None:
            return super()._compute_loss(model, inputs)
        term, window, rows = inputs["distillation"][0], inputs["distillation_window"], inputs["rollout_index"]
        with self._policy_logps_tap.open() as captured:  # the short-context teacher, at no extra forward
            proxy_loss = super()._compute_loss(model, inputs)
        if len(captured) != 1:
            raise RuntimeError(f"TRL's proxy loss computed the policy's log-probs {len(captured)} times, not once.")
        short_logps = captured[0]
        training = self.model.training
        mode = "train" if training else "eval"
        steps = self.current_gradient_accumulation_steps if training else 1
        accumulation = Accumulation(
            self.accelerator.num_processes, steps, self.args.steps_per_generation if training else 1
        )
        window_loss = torch.zeros((), device=proxy_loss.device)
        if window.record is None:  # the window's first micro-batch runs the window's pass
            started = time.perf_counter()
            window_loss, window.record = term.run_window(model, self.long_pass, window, accumulation)
            if window_loss.device.type == "cuda":  # the forwards' kernels, not only their launch
                torch.cuda.synchronize(window_loss.device)
            # Its forwards only: their backward (and recomputation) runs in the step's backward
            self._metrics[mode]["depo/long_pass_seconds"].append(time.perf_counter() - started)
            self._log_reduced(term.window_metrics(window.record, torch.cat(window.rollouts_per_micro_batch)))
        distillation_loss = window_loss + term.micro_batch_value(window.record, rows, short_logps)
        # Per micro-batch, times the accumulation steps: averaged over a step's micro-batches, the step's value
        value = self.accelerator.gather(distillation_loss.detach() * accumulation.steps).mean()
        self._metrics[mode][term.value_metric].append(value.item())
        gap_mask = term.logp_gap_mask(window.record, rows)
        gap = (short_logps - window.record.long_logps[rows]) * gap_mask
        self._log_reduced({"depo/logp_gap": (gap.sum(), gap_mask.sum())})
        return proxy_loss + self.args.distillation_coef * distillation_loss

    def _log_reduced(self, metrics: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Log each `(local sum, local count)` as sum / count over all processes; NaN when nothing was counted (TRL's
        `log` skips NaN values)."""
        mode = "train" if self.model.training else "eval"
        for name, (local_sum, local_count) in metrics.items():
            totals = self.accelerator.reduce(torch.stack([local_sum.float(), local_count.float()]), reduction="sum")
            self._metrics[mode][name].append((totals[0] / totals[1]).item() if totals[1] > 0 else float("nan"))
