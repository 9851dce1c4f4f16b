"""How every depo_trl command reports a mistake in its input.

An expected user error (a missing or mistyped path, a file where a folder is expected, an unknown name, a setting
that cannot work) is a [`UsageError`]: the command prints one line on stderr, `<command>: error: <argument> <value>:
<what is wrong>; <what to do>`, and exits with status 2. No traceback, unless the environment variable
`DEPO_TRL_DEBUG=1` asks for one. Unexpected errors keep their traceback.

The checks below run before any collective, with the same inputs on every process, so a multi-process run stops on
every process with the same message instead of leaving some processes waiting.
"""

import argparse
import functools
import os
import re
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import huggingface_hub
from huggingface_hub import constants as hub_constants

from .models import conversion_hint


DEBUG_VARIABLE = "DEPO_TRL_DEBUG"
# Extensions of files people pass to these commands; "Qwen2.5-7B" must still read as a Hub id, not a "7B" file
_FILE_EXTENSION = re.compile(r"\.[A-Za-z][A-Za-z0-9]{0,9}$")
_MODEL_FILES = ("config.json", "tokenizer_config.json", "tokenizer.json")

Command = TypeVar("Command", bound=Callable[..., Any])


class UsageError(ValueError):
    """A mistake in what the user gave a command; the message names the argument, the value and the fix.

    A `ValueError`, so code that calls the library (rather than a command) can catch it as one.
    """


def reports_usage_errors(prog: str) -> Callable[[Command], Command]:
    """Decorator for a command's `main`: a [`UsageError`] becomes one line on stderr and exit status 2."""

    def decorator(main: Command) -> Command:
        @functools.wraps(main)
        def wrapper(*args, **kwargs):
            try:
                return main(*args, **kwargs)
            except UsageError as error:
                if os.environ.get(DEBUG_VARIABLE, "").lower() in ("1", "true", "yes"):
                    raise
                # One write of the whole line: `print` writes the text and its newline apart, so the lines of the
                # processes of one launch, which stop alike, interleave on their shared stderr
                sys.stderr.write(f"{prog}: error: {' '.join(str(error).split())}\n")
                sys.stderr.flush()
                sys.exit(2)

        return wrapper  # type: ignore[return-value]

    return decorator


class ArgumentParser(argparse.ArgumentParser):
    """`argparse` whose errors are [`UsageError`]s: one line, like every other mistake, instead of usage + error."""

    def error(self, message: str):
        raise UsageError(f"{message} (see --help)")


def positive_int(value: str) -> int:
    """`argparse` type: a positive integer."""
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number <= 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive integer")
    return number


def hub_offline() -> bool:
    """Whether the Hugging Face Hub is switched off (`HF_HUB_OFFLINE=1`), read now rather than at import."""
    value = os.environ.get("HF_HUB_OFFLINE", os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return hub_constants.HF_HUB_OFFLINE or value.upper() in ("1", "ON", "YES", "TRUE")


def looks_like_local_path(value: str) -> bool:
    """A value meant as a local path: it exists, starts with `.`, `/` or `~`, ends in a file extension, or has more
    than one `/` (a Hub id is `name` or `owner/name`)."""
    return (
        os.path.exists(value)
        or value.startswith((".", "/", "~"))
        or bool(_FILE_EXTENSION.search(value))
        or value.count("/") > 1
    )


def require_file(argument: str, value: str, fix: str = "") -> str:
    """`value` if it is an existing file; otherwise a [`UsageError`] that says what it is instead."""
    if os.path.isfile(value):
        return value
    what = "a folder, not a file" if os.path.isdir(value) else "no such file"
    raise UsageError(f"{argument} {value}: {what}{'; ' + fix if fix else ''}.")


def require_folder(argument: str, value: str, fix: str = "") -> str:
    """`value` if it is an existing folder; otherwise a [`UsageError`] that says what it is instead."""
    if os.path.isdir(value):
        return value
    what = "a file, not a folder" if os.path.exists(value) else "no such folder"
    raise UsageError(f"{argument} {value}: {what}{'; ' + fix if fix else ''}.")


def writable_folder(argument: str, value: str) -> str:
    """`value` if it is a folder or can become one (nothing that is not a folder is in the way)."""
    if os.path.exists(value) and not os.path.isdir(value):
        raise UsageError(f"{argument} {value}: a file is in the way; pass a folder path.")
    return value


def in_hub_cache(repo_id: str, repo_type: str) -> bool:
    """Whether the local Hub cache holds (part of) this model or dataset, for runs with the Hub switched off."""
    files = _MODEL_FILES if repo_type == "model" else ("README.md", "dataset_infos.json")
    try:
        return any(
            isinstance(huggingface_hub.try_to_load_from_cache(repo_id, name, repo_type=repo_type), str)
            for name in files
        ) or (repo_type == "dataset" and _dataset_cached(repo_id))
    except Exception:  # an invalid repo id, an unreadable cache: not cached
        return False


def _dataset_cached(repo_id: str) -> bool:
    folder = os.path.join(hub_constants.HF_HUB_CACHE, f"datasets--{repo_id.replace('/', '--')}")
    return os.path.isdir(folder)


def check_model_source(argument: str, value: str, what: str = "model") -> None:
    """Fail with a [`UsageError`] unless `value` can be a model (or tokenizer): a folder with its files, or a Hub id
    that is reachable or cached. A path that looks local is never looked up on the Hub."""
    if os.path.isdir(value):
        if not any(os.path.isfile(os.path.join(value, name)) for name in _MODEL_FILES):
            raise UsageError(
                f"{argument} {value}: a folder without {' or '.join(_MODEL_FILES)}; pass a {what} folder written by "
                "save_pretrained, or a Hub id."
            )
        return
    if os.path.exists(value):
        raise UsageError(f"{argument} {value}: a file, not a {what} folder; pass its folder or a Hub id.")
    if looks_like_local_path(value):
        raise UsageError(
            f"{argument} {value}: no such folder; check the path, or pass a Hub id{conversion_hint(value)}."
        )
    if hub_offline() and not in_hub_cache(value, "model"):
        raise UsageError(
            f"{argument} {value}: not a local folder, and the Hub is unreachable (offline mode, HF_HUB_OFFLINE=1) "
            f"with no cached copy; download the {what} where the Hub is reachable, or pass a local folder"
            f"{conversion_hint(value)}."
        )


def check_dataset_source(argument: str, value: str, fix: str) -> None:
    """Fail with a [`UsageError`] unless `value` can be a dataset: an existing local path, or a Hub id that is
    reachable or cached. A path that looks local is never looked up on the Hub."""
    if os.path.exists(value):
        return
    if looks_like_local_path(value):
        raise UsageError(f"{argument} {value}: no such file or folder; {fix}.")
    if hub_offline() and not in_hub_cache(value, "dataset"):
        raise UsageError(
            f"{argument} {value}: not a local file or folder, and the Hub is unreachable (offline mode, "
            f"HF_HUB_OFFLINE=1) with no cached copy; {fix}."
        )


def hub_failure(argument: str, value: str, error: BaseException, fix: str) -> UsageError:
    """The [`UsageError`] for a Hub id that could not be loaded (connection refused, repository not found, ...)."""
    reason = " ".join(str(error).split())[:200] or type(error).__name__
    return UsageError(f"{argument} {value}: not a local path, and loading it from the Hub failed ({reason}); {fix}.")
