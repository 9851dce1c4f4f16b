"""Checkpoint discovery and validation: which `checkpoint-<step>` folder a run resumes from.

transformers' Trainer writes a checkpoint in place, file after file (weights, optimizer, scheduler, RNG states, then
trainer_state.json; under DeepSpeed its shards, then `latest`), with no temporary folder and no rename, so a process
killed while it saves leaves a checkpoint-<step> folder that `get_last_checkpoint` still picks. A checkpoint is judged
complete here ([`checkpoint_problems`]) from its files' headers and sizes, without loading any tensor. The entry point
resumes through [`checkpoint_to_resume`]; a `DePOTrainer` user resumes the same way with
`trainer.train(resume_from_checkpoint=checkpoint_to_resume(args)[0])`.
"""

import json
import os
import re
import struct
import zipfile

from transformers import TrainingArguments

from .user_errors import UsageError, require_folder


_CHECKPOINT_FOLDER = re.compile(r"^checkpoint-(\d+)$")
_TORCH_SAVE_SUFFIXES = (".pt", ".pth", ".bin")  # torch.save writes a zip archive, whose directory is at its end


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


def checkpoint_problems(folder: str) -> list[str]:
    """What makes `folder` an incomplete checkpoint; empty when it is complete.

    Complete: a parseable trainer_state.json whose global_step matches the folder's name, model weights, every
    safetensors file as long as its header says, every shard its index names present, DeepSpeed's `latest` naming an
    existing folder, and every torch.save file (optimizer, scheduler, RNG states, DeepSpeed shards) ending with its zip
    directory. Only headers and directories are read: checking a 7B model's checkpoint loads none of its tensors.
    """
    files = sorted(
        os.path.relpath(os.path.join(root, name), folder) for root, _, names in os.walk(folder) for name in names
    )
    problems = [_trainer_state_problem(folder)]
    if not any(_is_weights_file(os.path.basename(name)) for name in files):
        problems.append("no model weights")
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


def last_complete_checkpoint(output_dir: str) -> tuple[str | None, list[tuple[str, str]]]:
    """The newest complete `checkpoint-<step>` folder in `output_dir` (None if there is none), and the newer ones it
    skipped as incomplete: (folder name, what is wrong with it)."""
    if not os.path.isdir(output_dir):
        return None, []
    named = [(_CHECKPOINT_FOLDER.match(name), name) for name in os.listdir(output_dir)]
    folders = [name for match, name in named if match and os.path.isdir(os.path.join(output_dir, name))]
    skipped = []
    for name in sorted(folders, key=lambda name: int(_CHECKPOINT_FOLDER.match(name)[1]), reverse=True):
        problems = checkpoint_problems(os.path.join(output_dir, name))
        if not problems:
            return os.path.join(output_dir, name), skipped
        skipped.append((name, ", ".join(problems)))
    return None, skipped


def checkpoint_to_resume(training_args: TrainingArguments) -> tuple[str | None, list[tuple[str, str]]]:
    """`resume_from_checkpoint` when it is set and complete (a [`UsageError`] naming what is missing when it is not),
    else the last complete checkpoint in `output_dir`; and the incomplete ones skipped on the way."""
    given = training_args.resume_from_checkpoint
    if given is None:
        return last_complete_checkpoint(training_args.output_dir)
    require_folder("resume_from_checkpoint", given, "pass a checkpoint-<step> folder that a run saved")
    problems = checkpoint_problems(given)
    if problems:
        complete, _ = last_complete_checkpoint(os.path.dirname(os.path.normpath(given)))
        raise UsageError(
            f"resume_from_checkpoint {given}: an incomplete checkpoint ({', '.join(problems)}); pass a complete one{f' such as {complete}' if complete else ''}, or leave it "
            "unset to resume from the last complete one in output_dir."
        )
    return given, []
