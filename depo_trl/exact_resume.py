"""Checkpoints at generation-batch boundaries, so that a run resumed from one trains exactly as it would have.

A checkpoint resumes exactly only at a generation-batch boundary: inside one, TRL would generate the batch's rollouts
again, other samples than the uninterrupted run trained on. [`ExactResumeCallback`] (every `DePOTrainer` has it) keeps
the checkpoints a run writes at those boundaries, and refuses to train on from one that is not; `DePOConfig` checks the
save settings it can check before training ([`generation_batch_span`], [`check_best_saves`]). Which checkpoint a run
resumes from is `checkpoints.py`.
"""

import math
import os

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState
from transformers.trainer_utils import IntervalStrategy, SaveStrategy, has_length
from transformers.utils import logging
from trl import GRPOConfig
from trl.trainer.utils import RepeatSampler

from .checkpoints import checkpoint_folders, checkpoint_problems, checkpoint_step
from .user_errors import UsageError


logger = logging.get_logger(__name__)


def generation_batch_span(args: GRPOConfig) -> int:
    """Optimizer steps from one generation-batch boundary to the next: the fewest whose micro-batches
    (`gradient_accumulation_steps` each) fill whole generation batches (`steps_per_generation x num_iterations`
    micro-batches each)."""
    generation = args.steps_per_generation * args.num_iterations
    return generation // math.gcd(generation, args.gradient_accumulation_steps)


def generation_batch_offset(step: int, args: GRPOConfig, steps_in_epoch: int | None = None) -> int:
    """Micro-batches by which optimizer step `step` ends past the start of a generation batch: 0 at a boundary.

    An epoch of `steps_in_epoch` micro-batches holds whole generation batches, and its last optimizer step takes the
    micro-batches left (fewer than `gradient_accumulation_steps` when they do not divide the epoch), so past the first
    epoch the boundaries need not fall on multiples of [`generation_batch_span`]. Without a length (an iterable
    dataset), training is one epoch.
    """
    accumulation = args.gradient_accumulation_steps
    micro_batches = step * accumulation
    if steps_in_epoch:
        per_epoch = math.ceil(steps_in_epoch / accumulation)
        micro_batches = step // per_epoch * steps_in_epoch + step % per_epoch * accumulation
    return micro_batches % (args.steps_per_generation * args.num_iterations)


def save_steps_at_boundaries(args: GRPOConfig, save_steps: int, eval_steps: int | None) -> int:
    """`save_steps` optimizer steps rounded up to the generation batch ([`generation_batch_span`]), and to the
    evaluations every `eval_steps` when `load_best_model_at_end` needs the saves to fall on them."""
    span = generation_batch_span(args)
    best_at_end = args.load_best_model_at_end and args.eval_strategy == IntervalStrategy.STEPS and eval_steps
    unit = math.lcm(span, eval_steps) if best_at_end else span
    return math.ceil(save_steps / unit) * unit


def check_best_saves(args: GRPOConfig, eval_steps: int) -> None:
    """With `save_strategy="best"`, a checkpoint is saved when an evaluation improves on the best metric: fail with a
    [`UsageError`] unless evaluations every `eval_steps` optimizer steps fall at generation-batch boundaries. Deferring
    such a save to the next boundary would save other weights than the best ones."""
    span = generation_batch_span(args)
    best = args.save_strategy == SaveStrategy.BEST and args.eval_strategy == IntervalStrategy.STEPS
    if best and eval_steps % span:
        resolved = "" if eval_steps == args.eval_steps else f" ({eval_steps} optimizer steps)"
        raise UsageError(
            f"eval_steps={args.eval_steps}{resolved}: save_strategy='best' saves a checkpoint at an evaluation, a "
            f"generation batch spans {span} optimizer steps (steps_per_generation={args.steps_per_generation} x "
            f"num_iterations={args.num_iterations} micro-steps, gradient_accumulation_steps="
            f"{args.gradient_accumulation_steps}), and a checkpoint inside one does not resume exactly (its rollouts "
            f"would be generated again); set eval_steps to a multiple of {span}."
        )


def _replay_epoch_orders(train_dataloader, epochs: int) -> None:
    """Draw the orders of the `epochs` already trained from a resumed run's sampler. TRL's `RepeatSampler` draws each
    epoch's order from one generator, seeded once, which the resumed run builds afresh: without the draws, its next
    epoch would take the first epoch's order instead of the uninterrupted run's."""
    batch_sampler = getattr(train_dataloader, "batch_sampler", None)
    # Under accelerate's BatchSamplerShard when the processes share the batches
    sampler = getattr(getattr(batch_sampler, "batch_sampler", batch_sampler), "sampler", None)
    if isinstance(sampler, RepeatSampler) and sampler.shuffle:
        for _ in range(epochs):
            torch.randperm(sampler.num_samples, generator=sampler.generator)


class ExactResumeCallback(TrainerCallback):
    """Keeps a run's checkpoints at generation-batch boundaries, where it resumes exactly.

    - A save inside a generation batch (a `save_steps` given as a ratio of the total, which resolves to steps only when
      training starts; a step past the first epoch, whose boundaries shift when the epoch's last optimizer step takes
      fewer micro-batches) is deferred to the next boundary; `save_steps` is rounded up to the generation batch when
      training starts. The save at the end of training is kept wherever it falls: it is the run's final state.
    - `save_strategy="best"` saves at evaluations: `eval_steps` given as a ratio must resolve to the generation batch
      ([`check_best_saves`]; DePOConfig checks the steps given as a number).
    - A resumed run must start at a boundary, and must have a step left to train: transformers would train one step
      past `max_steps` from a checkpoint at `max_steps` in the middle of an epoch. Either is a [`UsageError`] before
      the first step.
    - A run resumed after its first epoch goes on with the uninterrupted run's order of rows
      ([`_replay_epoch_orders`]).
    """

    def __init__(self):
        self.steps_in_epoch: int | None = None
        self.deferred = False

    def on_train_begin(self, args, state: TrainerState, control: TrainerControl, train_dataloader=None, **kwargs):
        accumulation = args.gradient_accumulation_steps
        # As the Trainer counts: an epoch is the dataloader's length, or all of training without one
        if train_dataloader is not None and has_length(train_dataloader):
            self.steps_in_epoch = len(train_dataloader)
        else:
            self.steps_in_epoch = state.max_steps * accumulation
        self.deferred = False
        span = generation_batch_span(args)
        if args.save_strategy == SaveStrategy.STEPS and state.save_steps % span:
            rounded = save_steps_at_boundaries(args, state.save_steps, state.eval_steps or None)
            if state.is_world_process_zero:
                logger.warning(
                    f"save_steps={args.save_steps} saves every {state.save_steps} of {state.max_steps} optimizer "
                    f"steps, inside a generation batch of {span}: checkpoints are saved every {rounded} steps instead."
                )
            state.save_steps = rounded
        check_best_saves(args, state.eval_steps or 0)
        if state.global_step:
            self._check_resumed_step(args, state)
            _replay_epoch_orders(train_dataloader, state.global_step // self._steps_per_epoch(args))

    def _steps_per_epoch(self, args) -> int:
        return math.ceil(self.steps_in_epoch / args.gradient_accumulation_steps)

    def _check_resumed_step(self, args, state: TrainerState) -> None:
        step, name = state.global_step, f"checkpoint-{state.global_step}"
        if step >= state.max_steps:
            if (
                step // self._steps_per_epoch(args) < state.num_train_epochs
            ):  # the epoch loop starts, and trains a step before stopping
                raise UsageError(
                    f"resume_from_checkpoint {name}: the end of training (max_steps={state.max_steps}), so nothing "
                    f"is left to train, and transformers would train one step past it; raise max_steps to train on, "
                    f"or set another output_dir to train again (the trained model is in {name})."
                )
            return
        offset = generation_batch_offset(step, args, self.steps_in_epoch)
        if offset:
            earlier = [
                folder
                for folder in checkpoint_folders(args.output_dir)
                if checkpoint_step(folder) < step
                and not generation_batch_offset(checkpoint_step(folder), args, self.steps_in_epoch)
                and not checkpoint_problems(os.path.join(args.output_dir, folder), args.save_only_model)
            ]
            instead = (
                os.path.join(args.output_dir, earlier[0]) if earlier else "a checkpoint at a generation-batch boundary"
            )
            raise UsageError(
                f"resume_from_checkpoint {name}: it ends inside a generation batch ({offset} of its "
                f"{args.steps_per_generation * args.num_iterations} micro-steps trained: steps_per_generation x "
                "num_iterations), and training on from it would not be exact (the batch's rollouts would be generated "
                f"again); resume from {instead} instead."
            )

    def _keep_saves_at_boundaries(self, args, state: TrainerState, control: TrainerControl) -> None:
        at_boundary = not generation_batch_offset(state.global_step, args, self.steps_in_epoch)
        if control.should_save and not at_boundary and state.global_step < state.max_steps:
            control.should_save, self.deferred = False, True
        elif self.deferred and at_boundary:
            control.should_save, self.deferred = True, False

    def on_step_end(self, args, state: TrainerState, control: TrainerControl, **kwargs):
        self._keep_saves_at_boundaries(args, state, control)

    def on_epoch_end(self, args, state: TrainerState, control: TrainerControl, **kwargs):
        self._keep_saves_at_boundaries(args, state, control)
