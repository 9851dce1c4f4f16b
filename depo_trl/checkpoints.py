"""Checkpoints a run can resume from exactly: where they are written, which one every process resumes from.

transformers' Trainer writes a checkpoint in place, file after file (weights, optimizer, scheduler, RNG states, then
trainer_state.json; under DeepSpeed its shards, then `latest`), with no temporary folder and no rename, so a process
killed while it saves leaves a checkpoint-<step> folder that `get_last_checkpoint` still picks. A checkpoint is judged
complete here ([`checkpoint_problems`]) from its files' headers and sizes, without loading any tensor.

On several processes each one judges the checkpoints on its own disk (disks local to each node may differ: a save cut
off on one node only), and [`resume_checkpoint`] has them agree on one. The entry point resumes through it; a
`DePOTrainer` user resumes the same way, once the trainer is built:

    trainer.train(resume_from_checkpoint=resume_checkpoint(trainer.accelerator, trainer.args))
Where a run writes its checkpoints, so that each resumes exactly, is `exact_resume.py`.
"""

import json
import os
import re
import socket
import struct
import zipfile

from accelerate import Accelerator
from accelerate.utils import gather_object
from transformers import TrainingArguments
from transformers.utils import logging

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


def checkpoint_step(name: str) -> int:
    return int(_CHECKPOINT_FOLDER.match(name)[1])


def checkpoint_folders(output_dir: str) -> list[str]:
    """The names of the `checkpoint-<step>` folders in `output_dir`, newest (highest step) first."""
    if not os.path.isdir(output_dir):
        return []
    names = [name for name in os.listdir(output_dir) if _CHECKPOINT_FOLDER.match(name)]
    return sorted(
        (name for name in names if os.path.isdir(os.path.join(output_dir, name))), key=checkpoint_step, reverse=True
    )


def last_complete_checkpoint(output_dir: str, model_only: bool = False) -> tuple[str | None, list[tuple[str, str]]]:
    """The newest complete `checkpoint-<step>` folder in `output_dir` (None if there is none), and the newer ones it
    skipped as incomplete: (folder name, what is wrong with it). `model_only`: as in [`checkpoint_problems`]."""
    skipped = []
    for name in checkpoint_folders(output_dir):
        problems = checkpoint_problems(os.path.join(output_dir, name), model_only)
        if not problems:
            return os.path.join(output_dir, name), skipped
        skipped.append((name, ", ".join(problems)))
    return None, skipped


def _incomplete_given(given: str, problems: list[str], model_only: bool, whom: str = "") -> UsageError:
    complete, _ = last_complete_checkpoint(os.path.dirname(os.path.normpath(given)), model_only)
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
        raise _incomplete_given(given, problems, args.save_only_model)


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
        for name in checkpoint_folders(args.output_dir)
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
                raise _incomplete_given(given, folders[given], args.save_only_model, _whom(views, index))
        return given, []
    names = sorted({name for _, folders in views for name in folders}, key=checkpoint_step, reverse=True)
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
