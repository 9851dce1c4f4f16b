"""Checkpoints a run can resume from exactly: where they are written, which one every process resumes from.

transformers' Trainer writes a checkpoint in place, file after file (weights, optimizer, scheduler, RNG states, then
trainer_state.json; under DeepSpeed its shards, then `latest`), with no temporary folder and no rename, so a process
killed while it saves leaves a checkpoint-<step> folder that `get_last_checkpoint` still picks. A checkpoint is judged
complete here ([`checkpoint_problems`]) from its files' headers and sizes, without loading any tensor.

On several processes each one judges the checkpoints on its own disk (disks local to each node may differ: a save cut
off on one node only), and [`resume_checkpoint`] has them agree on one. The entry point resumes through it; a
`DePOTrainer` user resumes the same way, once the trainer is built:

    trainer.train(resume_from_checkpoint=resume_checkpoint(trainer.accelerator, trainer.args))

A checkpoint resumes exactly only at a generation-batch boundary: inside one, TRL would generate the batch's rollouts
again, other samples than the uninterrupted run trained on. [`ExactResumeCallback`] (every `DePOTrainer` has it) keeps
the checkpoints a run writes at those boundaries, and refuses to train on from one that is not.
"""

import json
import math
import os
import re
import socket
import struct
import zipfile

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import IntervalStrategy, SaveStrategy, has_length
from transformers.utils import logging
from trl import GRPOConfig
from trl.trainer.utils import RepeatSampler

from .user_errors import UsageError, require_folder


logger = logging.get_logger(__name__)

_CHECKPOINT_FOLDER = re.compile(r"^checkpoint-(\d+)$")
_TORCH_SAVE_SUFFIXES = (".pt", ".pth", ".bin")  # torch.save writes a zip archive, whose directory is at its end

# ---- Complete checkpoints -------------------------------------------------------------------------------------------


def _is_weights_file(name: str) -> bool:
    """Model (or adapter) weights in any layout the Trainer saves: safetensors, torch, DeepSpeed, FSDP."""
    return (
        name.endswith((".safetensors", "model_states.pt", ".distcp"))
        or (name.startswith(("pytorch_model", "adapter_model")) and name.endswith(".bin"))
        or name.startswith("pytorch_model_fsdp")
    )


def _trainer_state_problem(folder: str) -> str | None:
    path = os.path.join(folder, "trainer_state.json")
    if not os.path.isfile(path):
        return "no trainer_state.json"
    try:
        with open(path, encoding="utf-8") as handle:
            step = json.load(handle).get("global_step")
    except (ValueError, AttributeError):  # truncated or garbled JSON, or JSON that is not an object
        return "trainer_state.json is not valid JSON"
    named = _CHECKPOINT_FOLDER.match(os.path.basename(os.path.normpath(folder)))
    if named and step != int(named[1]):
        return f"trainer_state.json says global_step {step}, not {named[1]}"
    return None


def _safetensors_problem(path: str, name: str) -> str | None:
    """Whether the file is as long as its header says (8 bytes of header length, the JSON header, the tensors)."""
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        header_length = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else None
        if header_length is None or 8 + header_length > size:
            return f"{name} is truncated ({size} bytes, less than its header)"
        try:
            header = json.loads(handle.read(header_length))
            end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
        except (ValueError, KeyError, TypeError, IndexError, AttributeError):
            return f"{name} has an unreadable header"
    expected = 8 + header_length + end
    return None if size == expected else f"{name} is truncated ({size} of {expected} bytes)"


def _torch_save_problem(path: str, name: str) -> str | None:
    try:
        with zipfile.ZipFile(path):
            return None
    except (zipfile.BadZipFile, OSError):
        return f"{name} is truncated (no zip directory at its end)"


def _index_problems(folder: str, name: str) -> list[str]:
    """The shards a weights index names that are not there."""
    try:
        with open(os.path.join(folder, name), encoding="utf-8") as handle:
            shards = set(json.load(handle)["weight_map"].values())
    except (ValueError, KeyError, TypeError, AttributeError):
        return [f"{name} is not valid JSON"]
    directory = os.path.dirname(os.path.join(folder, name))
    return [
        f"{shard} (named by {name}) is missing"
        for shard in sorted(shards)
        if not os.path.isfile(os.path.join(directory, shard))
    ]


def _deepspeed_problem(folder: str, files: list[str]) -> str | None:
    if not any(name.startswith("global_step") for name in files) and "latest" not in files:
        return None
    if "latest" not in files:
        return "no DeepSpeed `latest` file (it is written last)"
    with open(os.path.join(folder, "latest"), encoding="utf-8") as handle:
        tag = handle.read().strip()
    return None if os.path.isdir(os.path.join(folder, tag)) else f"DeepSpeed's `latest` names {tag}, which is missing"


def _has_optimizer_state(files: list[str]) -> bool:
    """Optimizer state in a layout the Trainer saves: optimizer.pt (optimizer.bin or optimizer_0/ under FSDP, one file
    per rank under SageMaker MP), or DeepSpeed's global_step folder. Files of folders below (the checkpoints inside an
    output_dir) do not count."""
    return any(
        (os.sep not in name and name.endswith(("optimizer.pt", "optimizer.bin")))
        or name.startswith((f"optimizer_0{os.sep}", "global_step"))
        for name in files
    )


def checkpoint_problems(folder: str, model_only: bool = False) -> list[str]:
    """What makes `folder` an incomplete checkpoint; empty when it is complete.

    Complete: a parseable trainer_state.json whose global_step matches the folder's name, model weights, optimizer
    state (unless `model_only`: a run with `save_only_model` saves none), every safetensors file as long as its
    header says, every shard its index names present, DeepSpeed's `latest` naming an existing folder, and every
    torch.save file (optimizer, scheduler, RNG states, DeepSpeed shards) ending with its zip directory. Only headers
    and directories are read: checking a 7B model's checkpoint loads none of its tensors. A model saved by
    `save_model` (and `save_state`) is not a checkpoint: it has no optimizer state, and resuming from it would start
    a new optimizer.
    """
    files = sorted(
        os.path.relpath(os.path.join(root, name), folder) for root, _, names in os.walk(folder) for name in names
    )
    problems = [_trainer_state_problem(folder)]
    if not any(_is_weights_file(os.path.basename(name)) for name in files):
        problems.append("no model weights")
    if not model_only and not _has_optimizer_state(files):
        problems.append("no optimizer state (a saved model, not a checkpoint)")
    problems.append(_deepspeed_problem(folder, files))
    for name in files:
        path = os.path.join(folder, name)
        if name.endswith(".index.json"):
            problems += _index_problems(folder, name)
        elif name.endswith(".safetensors"):
            problems.append(_safetensors_problem(path, name))
        elif name.endswith(_TORCH_SAVE_SUFFIXES):
            problems.append(_torch_save_problem(path, name))
    return [problem for problem in problems if problem]


def _step(name: str) -> int:
    return int(_CHECKPOINT_FOLDER.match(name)[1])


def _checkpoint_folders(output_dir: str) -> list[str]:
    """The names of the `checkpoint-<step>` folders in `output_dir`, newest (highest step) first."""
    if not os.path.isdir(output_dir):
        return []
    names = [name for name in os.listdir(output_dir) if _CHECKPOINT_FOLDER.match(name)]
    return sorted((name for name in names if os.path.isdir(os.path.join(output_dir, name))), key=_step, reverse=True)


def last_complete_checkpoint(output_dir: str) -> tuple[str | None, list[tuple[str, str]]]:
    """The newest complete `checkpoint-<step>` folder in `output_dir` (None if there is none), and the newer ones it
    skipped as incomplete: (folder name, what is wrong with it)."""
    skipped = []
    for name in _checkpoint_folders(output_dir):
        problems = checkpoint_problems(os.path.join(output_dir, name))
        if not problems:
            return os.path.join(output_dir, name), skipped
        skipped.append((name, ", ".join(problems)))
    return None, skipped


def _incomplete_given(given: str, problems: list[str], whom: str = "") -> UsageError:
    complete, _ = last_complete_checkpoint(os.path.dirname(os.path.normpath(given)))
    return UsageError(
        f"resume_from_checkpoint {given}: an incomplete checkpoint{whom} ({', '.join(problems)}); pass a complete one"
        f"{f' such as {complete}' if complete else ''}, or leave it unset to resume from the last complete one in "
        "output_dir."
    )


def check_resume_from_checkpoint(args: TrainingArguments) -> None:
    """Fail with a [`UsageError`] when `resume_from_checkpoint` is set to anything but a complete checkpoint, as this
    process sees it: a check to run before the model loads."""
    given = args.resume_from_checkpoint
    if given is None:
        return
    require_folder("resume_from_checkpoint", given, "pass a checkpoint-<step> folder that a run saved")
    problems = checkpoint_problems(given, args.save_only_model)
    if problems:
        raise _incomplete_given(given, problems)


# ---- One checkpoint for every process -------------------------------------------------------------------------------

# What one process sees: its host, and each checkpoint it could resume from with what makes it incomplete there
View = tuple[str, dict[str, list[str]]]


def checkpoint_view(args: TrainingArguments) -> dict[str, list[str]]:
    """The checkpoints this process could resume from, as its disk holds them: `resume_from_checkpoint` when it is set,
    else every `checkpoint-<step>` folder of `output_dir` (by name), each with what makes it incomplete here."""
    given = args.resume_from_checkpoint
    if given is not None:
        problems = checkpoint_problems(given, args.save_only_model) if os.path.isdir(given) else ["no such folder"]
        return {given: problems}
    return {
        name: checkpoint_problems(os.path.join(args.output_dir, name), args.save_only_model)
        for name in _checkpoint_folders(args.output_dir)
    }


def _whom(views: list[View], index: int) -> str:
    return f" for process {index} on {views[index][0]}" if len(views) > 1 else ""


def agree_on_checkpoint(views: list[View], args: TrainingArguments) -> tuple[str | None, list[str]]:
    """The checkpoint to resume from given every process's view (in process order), and a warning for each newer one
    skipped; the same answer on every process, from the same views.

    `resume_from_checkpoint` must be complete for every process. Otherwise the newest `checkpoint-<step>` complete for
    every process is chosen (None: none is anywhere, and training starts from step 0); a [`UsageError`] when none is
    complete for every process but some process has one, so that no process starts over beside others that resume.
    """
    given = args.resume_from_checkpoint
    if given is not None:
        for index, (_, folders) in enumerate(views):
            if folders[given]:
                raise _incomplete_given(given, folders[given], _whom(views, index))
        return given, []
    names = sorted({name for _, folders in views for name in folders}, key=_step, reverse=True)
    skipped = []
    for name in names:
        lacking = [index for index, (_, folders) in enumerate(views) if folders.get(name, ["no such folder"])]
        if not lacking:
            return os.path.join(args.output_dir, name), [f"{warning}resuming from {name}." for warning in skipped]
        index = lacking[0]
        more = f" and {len(lacking) - 1} more" if len(lacking) > 1 else ""
        reasons = ", ".join(views[index][1].get(name, ["no such folder"]))
        skipped.append(
            f"output_dir {args.output_dir}: skipping {name}, an incomplete checkpoint{_whom(views, index)}{more} "
            f"({reasons}); "
        )
    held = [(name, index) for name in names for index, (_, folders) in enumerate(views) if folders.get(name) == []]
    if held:
        name, holder = held[0]
        lacking = next(index for index, (_, folders) in enumerate(views) if folders.get(name, ["no such folder"]))
        reasons = ", ".join(views[lacking][1].get(name, ["no such folder"]))
        raise UsageError(
            f"output_dir {args.output_dir}: no checkpoint is complete for every process: {name} is complete"
            f"{_whom(views, holder)} but not{_whom(views, lacking)} ({reasons}); copy {name} to that node's "
            "output_dir (with disks local to each node, set save_on_each_node: true so that every node saves each "
            "checkpoint), or empty output_dir to start over."
        )
    return None, [f"{warning}training starts from step 0." for warning in skipped]


def resume_checkpoint(accelerator: Accelerator, args: TrainingArguments) -> str | None:
    """The checkpoint every process resumes from (None: training starts from step 0), from what each process's disk
    holds ([`agree_on_checkpoint`]); the main process logs a warning for each newer checkpoint skipped.

    Every process must call it, after the trainer is built (its `Accelerator` starts the processes' group) and before
    `trainer.train()`: each judges its own disk, and the views are gathered, so that processes on nodes with disks of
    their own resume from the same step, or stop alike with one line naming what differs.
    """
    views = [(socket.gethostname(), checkpoint_view(args))]
    if accelerator.num_processes > 1:
        views = gather_object(views)
    checkpoint, warnings = agree_on_checkpoint(views, args)
    if accelerator.is_main_process:
        for warning in warnings:
            logger.warning(warning)
    return checkpoint


# ---- Checkpoints at generation-batch boundaries ---------------------------------------------------------------------


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
            rounded = math.ceil(state.save_steps / span) * span
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
                for folder in _checkpoint_folders(args.output_dir)
                if _step(folder) < step
                and not generation_batch_offset(_step(folder), args, self.steps_in_epoch)
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
