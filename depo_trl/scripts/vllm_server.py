"""Start the vLLM generation server for a DePO recipe (server mode), on GPUs the training does not use.

    CUDA_VISIBLE_DEVICES=0 python -m depo_trl.scripts.vllm_server --config recipes/qwen2.5-7b-instruct/depo-grpo.yaml

The command is TRL 1.16's (`trl.scripts.vllm_serve.build_command`: `vllm serve` with the NCCL weight-transfer engine
and processed log-probs), with the model, revision, dtype and `--max-model-len` taken from the recipe and prefix
caching on: every rollout of a prompt shares its prefix. DePO only samples from short prompts, so the recipe's
`vllm_max_model_length` is the short budget plus `max_completion_length`, not the long context. The workers also get
the method `vllm_weight_sync: reload` calls (`depo_trl.vllm_worker.WeightReloadExtension`), so the same server takes
weights through either route. Extra arguments after `--` go to `vllm serve` unchanged. `--dry-run` prints the command
instead of running it.

The server listens on the loopback address unless `--host` names another: trainers on the same node reach it there,
and nothing else can. Trainers on other nodes need `--host` set to an address of this node they can reach
(docs/gpu-training.md says what the server then exposes to that network).
"""

import argparse
import importlib.util
import json
import os
import shlex
import sys

import yaml
from trl.scripts.vllm_serve import ScriptArguments as VLLMServeArguments
from trl.scripts.vllm_serve import build_command

from ..user_errors import ArgumentParser, UsageError, positive_int, reports_usage_errors, require_file


WORKER_EXTENSION = "depo_trl.vllm_worker.WeightReloadExtension"
LOOPBACK = "127.0.0.1"
# Both weight routes go through endpoints that vLLM registers only in its dev mode (vLLM 0.22-0.31, the range TRL
# 1.16 takes; `vllm/entrypoints/serve/__init__.py::register_vllm_dev_api_routers`, registered only
# `if envs.VLLM_SERVER_DEV_MODE`): `vllm_weight_sync: reload` calls `/collective_rpc` (dev/rpc) and
# `/reset_prefix_cache` (dev/cache); TRL's NCCL route (`vllm_weight_sync: trl`, `trl.generation.vllm_client`) calls
# `/server_info` (dev/server_info), `/get_world_size`, `/init_weight_transfer_engine`, `/start_weight_update`,
# `/update_weights`, `/finish_weight_update` (dev/rlhf) and `/reset_prefix_cache`. A server without dev mode can
# generate but take no weights, so no trainer setting can do without it; `--host` is what limits who reaches it.
DEV_MODE_ENVIRONMENT = {"VLLM_SERVER_DEV_MODE": "1"}


def server_command(recipe: dict, args: argparse.Namespace, extra_args: list[str]) -> list[str]:
    """The `vllm serve` command line for `recipe` (a parsed YAML recipe)."""
    if not recipe.get("model_name_or_path"):
        raise UsageError(f"--config {args.config}: the recipe has no `model_name_or_path`; set it.")
    serve_args = VLLMServeArguments(
        model=recipe["model_name_or_path"],
        revision=recipe.get("model_revision"),
        tensor_parallel_size=args.tensor_parallel_size,
        host=args.host,
        port=args.port,
        gpu_memory_utilization=args.gpu_memory_utilization,
        dtype=str(recipe.get("dtype") or "auto"),
        max_model_len=args.max_model_len or recipe.get("vllm_max_model_length"),
        enable_prefix_caching=True,
        enforce_eager=args.enforce_eager,
        trust_remote_code=bool(recipe.get("trust_remote_code", False)),
    )
    # A recipe that changes the model's RoPE (e.g. YaRN for contexts past 32K) has the server sample with the same
    overrides = {
        key: value
        for key, value in (recipe.get("model_init_kwargs") or {}).items()
        if key in ("rope_parameters", "max_position_embeddings")
    }
    if overrides:
        extra_args = ["--hf-overrides", json.dumps(overrides), *extra_args]
    return build_command(serve_args, ["--worker-extension-cls", WORKER_EXTENSION, *extra_args])


def read_recipe(path: str) -> dict:
    """The recipe YAML as a mapping; a [`UsageError`] naming `--config` otherwise."""
    require_file("--config", path, "pass the recipe the trainer will run")
    with open(path, encoding="utf-8") as handle:
        try:
            recipe = yaml.safe_load(handle)
        except yaml.YAMLError as error:
            raise UsageError(f"--config {path}: not valid YAML ({' '.join(str(error).split())}).") from None
    if not isinstance(recipe, dict):
        raise UsageError(f"--config {path}: a recipe is a YAML mapping of settings, got {type(recipe).__name__}.")
    return recipe


def require_vllm() -> None:
    """A [`UsageError`] naming the install command unless vLLM is importable here (`make install` leaves it out)."""
    if importlib.util.find_spec("vllm") is None:
        raise UsageError(
            f"vllm: not installed in {sys.prefix}; on a GPU machine run `make install-gpu` (the main environment "
            "with the vllm and flash-attn extras), on a CPU `make vllm-env` and use .venv-vllm/bin/python."
        )


@reports_usage_errors("python -m depo_trl.scripts.vllm_server")
def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = ArgumentParser(prog="python -m depo_trl.scripts.vllm_server", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="The DePO recipe the trainer will run.")
    parser.add_argument(
        "--host",
        default=LOOPBACK,
        help="Address to listen on: the loopback address (default) serves trainers on this node only; with trainers "
        "on other nodes, an address of this node they reach (0.0.0.0: every interface).",
    )
    parser.add_argument("--port", type=int, default=8000, help="Must match the trainer's `vllm_server_port`.")
    parser.add_argument("--tensor-parallel-size", type=positive_int, default=1)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    parser.add_argument("--max-model-len", type=int, default=None, help="Overrides the recipe's value.")
    parser.add_argument(
        "--enforce-eager",
        action="store_true",
        help="Run the model eagerly: no CUDA graphs on a GPU, no compilation warm-up on vLLM's CPU build.",
    )
    parser.add_argument("--dry-run", action="store_true", help="Print the command and exit.")
    args = parser.parse_args(argv)
    recipe = read_recipe(args.config)
    command = server_command(recipe, args, extra_args)
    environment = " ".join(f"{name}={value}" for name, value in DEV_MODE_ENVIRONMENT.items())
    printable = f"{environment} {shlex.join(['vllm', *command[command.index('serve') :]])}"
    if args.dry_run:
        print(printable)
        return
    require_vllm()
    print(f"Starting: {printable}", flush=True)
    os.execve(sys.executable, command, {**os.environ, **DEV_MODE_ENVIRONMENT})


if __name__ == "__main__":
    main()
