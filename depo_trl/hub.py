"""Pushing a run to the Hugging Face Hub: what an upload of a run's `output_dir` sends, and the checks that stop a push
that cannot work (offline, no token, a token the Hub refuses or cannot check) in one line, before a training run
starts rather than after it.

An upload sends what transformers' `Trainer.push_to_hub` sends: the folder without its `checkpoint-*` folders (which
hold the optimizer states) and without names starting with `_` (the vLLM weight-sync folder, `_vllm_weights`, among
them). Runs written before that folder was renamed have it as `vllm_weights`, which is left out too.
"""

import os
from pathlib import Path

import huggingface_hub
from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects
from transformers import TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .model_card import card_for_repo
from .user_errors import UsageError, hub_offline


# What an upload leaves out, and why: the patterns `Trainer.push_to_hub` passes to `upload_folder`, and the vLLM
# weight-sync folder's former name
LEFT_OUT = {
    f"{PREFIX_CHECKPOINT_DIR}-*": "checkpoints, with their optimizer states",
    "_*": "names starting with _, such as the vLLM weight sync's _vllm_weights",
    "vllm_weights*": "the vLLM weight sync of older runs",
}
IGNORE_PATTERNS = tuple(LEFT_OUT)


def upload_plan(run_dir: str) -> tuple[list[str], list[str]]:
    """The files of `run_dir` (paths relative to it, sorted) that an upload sends, and those it leaves out, chosen as
    `HfApi.upload_folder` chooses them with [`IGNORE_PATTERNS`] (and the Hub's own: `.git`, `.cache/huggingface`)."""
    root = Path(run_dir)
    files = sorted(path.relative_to(root).as_posix() for path in root.glob("**/*") if path.is_file())
    sent = list(filter_repo_objects(files, ignore_patterns=[*IGNORE_PATTERNS, *DEFAULT_IGNORE_PATTERNS]))
    kept = set(sent)
    return sent, [name for name in files if name not in kept]


def check_push(argument: str, repo_id: str | None, token: str | None = None, instead: str = "") -> str:
    """The name of the account a push to `repo_id` commits as; a one-line [`UsageError`], starting with `argument`,
    when the push cannot work: the Hub switched off (`HF_HUB_OFFLINE`), no token, a token the Hub refuses, is
    read-only or cannot write to the repository's namespace, or no answer from the Hub (`whoami`). `instead`: what
    else to do while the Hub is out of reach."""
    later = f", or {instead}" if instead else ""
    if hub_offline():
        raise UsageError(
            f"{argument}: the Hub is switched off here (HF_HUB_OFFLINE=1); unset HF_HUB_OFFLINE where the Hub is "
            f"reachable{later}."
        )
    token = token or huggingface_hub.get_token()
    if token is None:
        raise UsageError(
            f"{argument}: no Hugging Face token; log in with `hf auth login` or set HF_TOKEN to a token with write "
            "access (https://huggingface.co/settings/tokens)."
        )
    try:
        identity = huggingface_hub.HfApi().whoami(token=token)
    except HfHubHTTPError as error:
        reason = " ".join(str(error).split())[:200]
        if error.response is not None and error.response.status_code == 401:
            raise UsageError(
                f"{argument}: the Hub refuses the token ({reason}); log in again with `hf auth login --force` or set "
                "HF_TOKEN to a valid token."
            ) from error
        raise UsageError(f"{argument}: the Hub could not check the token ({reason}); try again{later}.") from error
    except Exception as error:  # the network: a name that does not resolve, a refused connection, a timeout
        reason = " ".join(str(error).split())[:200] or type(error).__name__
        raise UsageError(
            f"{argument}: the Hub ({hub_constants.ENDPOINT}) does not answer ({reason}); check the network{later}."
        ) from error
    name = identity["name"]
    if identity.get("auth", {}).get("accessToken", {}).get("role") == "read":
        raise UsageError(
            f"{argument}: the token of {name} is read-only; create one with write access at "
            "https://huggingface.co/settings/tokens and log in with it (`hf auth login --force`)."
        )
    namespaces = [name, *(org["name"] for org in identity.get("orgs", []))]
    if repo_id and "/" in repo_id and repo_id.split("/")[0] not in namespaces:
        raise UsageError(
            f"{argument}: {name} cannot create repositories under {repo_id.split('/')[0]} (the token's namespaces: "
            f"{', '.join(namespaces)}); use one of them, e.g. {name}/{repo_id.split('/')[-1]}."
        )
    return name


def push_run(run_dir: str, repo_id: str, private: bool | None = None, message: str = ""):
    """Uploads the files [`upload_plan`] sends from `run_dir` to the model repository `repo_id` (created if missing),
    its model card first made to name `repo_id`, as the logged-in account; returns the commit's `CommitInfo`."""
    api = huggingface_hub.HfApi()
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    card = os.path.join(run_dir, "README.md")
    if os.path.isfile(card):  # as Trainer.push_to_hub rewrites the card in output_dir before uploading it
        text = Path(card).read_text(encoding="utf-8")
        Path(card).write_text(card_for_repo(text, repo_id), encoding="utf-8")
    return api.upload_folder(
        repo_id=repo_id,
        folder_path=run_dir,
        ignore_patterns=list(IGNORE_PATTERNS),
        commit_message=message or f"Upload {os.path.basename(os.path.normpath(run_dir))} with depo_trl",
    )


def push_later(args: TrainingArguments) -> str:
    """The command that pushes a training run once it has finished."""
    return (
        f"python -m depo_trl.scripts.push --run-dir {args.output_dir} --hub-model-id {args.hub_model_id or 'you/name'}"
    )


def check_training_push(args: TrainingArguments) -> None:
    """[`check_push`] for a run with `push_to_hub` set, before it trains."""
    argument = f"push_to_hub true (hub_model_id {args.hub_model_id})" if args.hub_model_id else "push_to_hub true"
    instead = f"set push_to_hub false and push the run once it has finished: {push_later(args)}"
    check_push(argument, args.hub_model_id, args.hub_token, instead=instead)


def push_failure(args: TrainingArguments, error: BaseException) -> UsageError:
    """The one-line error of a push that failed at the end of training: the run is saved, and how to push it."""
    reason = " ".join(str(error).split())[:200] or type(error).__name__
    return UsageError(
        f"push_to_hub true: the upload failed ({reason}); the run is saved in {args.output_dir}, push it with "
        f"{push_later(args)}."
    )
