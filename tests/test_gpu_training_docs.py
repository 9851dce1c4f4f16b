"""docs/gpu-training.md and accelerate_configs/slurm/train.slurm, checked without a GPU, beyond the parsing every
document's commands get (tests/docs/test_blocks.py): the page shows each launch, the server's dry run is run as
written, the Slurm script runs against stand-ins for Slurm's commands, and its batch tables add up to the paper's 512
rollouts."""

import os
import re
import shlex
import subprocess
import sys

import pytest

from .docs.blocks import check_training_settings, shell_blocks, split_assignments
from .helpers import ROOT


PAGE = "docs/gpu-training.md"
DOC = os.path.join(ROOT, PAGE)
SLURM_SCRIPT = os.path.join(ROOT, "accelerate_configs", "slurm", "train.slurm")
# Commands that set up a shell rather than run anything of the project
SHELL_SETUP = ("source .venv/bin/activate",)


def doc_text() -> str:
    with open(DOC, encoding="utf-8") as handle:
        return handle.read()


def doc_commands() -> list[str]:
    return [command for block in shell_blocks() if block.document == PAGE for command in block.commands()]


def run_slurm_script(tmp_path, nodes: int, arguments: list[str], environment: dict[str, str], has_vllm: bool = True):
    """train.slurm with stand-ins for scontrol, srun, curl, getent and python on PATH; its srun command lines."""
    stubs = tmp_path / "bin"
    stubs.mkdir(exist_ok=True)
    log = tmp_path / "srun.log"
    log.unlink(missing_ok=True)
    scripts = {
        "scontrol": "".join(f"echo gpu-node-{index}\n" for index in range(1, nodes + 1)),
        "srun": f'printf "%s\\0" "$@" >> {log}; printf "\\n" >> {log}\n',
        "curl": "exit 0\n",
        "getent": 'echo "10.0.0.$(( ${2##*-} + 10 ))  STREAM $2"\n',
        "python": "exit 0\n" if has_vllm else "exit 1\n",
    }
    for name, body in scripts.items():
        (stubs / name).write_text(f"#!/bin/bash\n{body}")
        (stubs / name).chmod(0o755)
    result = subprocess.run(
        ["bash", SLURM_SCRIPT, *arguments], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "gpu-node-[1-4]",
             **environment},
    )  # fmt: skip
    calls = [line.split("\0")[:-1] for line in log.read_text().splitlines()] if log.exists() else []
    return result, calls


def check_sbatch_command(assignments: dict[str, str], words: list[str], tmp_path):
    """`sbatch --nodes=N train.slurm RECIPE CONFIG`, run through the script with Slurm's commands stood in for."""
    options = [word for word in words[1:] if word.startswith("--")]
    script, recipe, config = [word for word in words[1:] if not word.startswith("--")]
    assert script == os.path.relpath(SLURM_SCRIPT, ROOT)
    assert os.path.isfile(os.path.join(ROOT, "accelerate_configs", f"{config}.yaml"))
    nodes = int(dict(option.lstrip("-").split("=") for option in options)["nodes"])
    result, calls = run_slurm_script(tmp_path, nodes, [recipe, config], assignments)
    assert result.returncode == 0, result.stderr
    server = assignments.get("VLLM_MODE") == "server"
    training_nodes = nodes - server
    if server:
        server_call, training_call = calls
        # The server listens on its node's address, which the trainers are pointed at
        assert f"--nodelist=gpu-node-{nodes}" in server_call
        launcher = server_call[server_call.index("python") :]
        assert launcher[:3] == ["python", "-m", "depo_trl.scripts.vllm_server"]
        assert launcher[launcher.index("--host") + 1] == f"10.0.0.{nodes + 10}"
    else:
        [training_call] = calls
    launch = shlex.split(training_call[training_call.index("-c") + 1])
    assert launch[:2] == ["accelerate", "launch"]
    assert os.path.isfile(os.path.join(ROOT, launch[launch.index("--config_file") + 1]))
    assert launch[launch.index("--num_machines") + 1] == str(training_nodes)
    assert launch[launch.index("--num_processes") + 1] == str(8 * training_nodes)
    settings = launch[launch.index("depo_trl/scripts/depo.py") + 1 :]
    assert settings[:2] == ["--config", recipe]
    args = check_training_settings(settings, tmp_path, f"train.slurm {recipe} {config}")
    if server:
        assert args.vllm_mode == "server" and args.vllm_server_host == f"10.0.0.{nodes + 10}"
    return args


def test_every_command_of_the_page_is_checked(tmp_path):
    """Each launch is on the page; what tests/docs/test_blocks.py only parses is run here where a CPU can: the Slurm
    script against stand-ins, the server's dry run as written."""
    shown = set()
    for command in doc_commands():
        assignments, words = split_assignments(shlex.split(command))
        if command in SHELL_SETUP:
            continue
        if words[0] == "sbatch":
            check_sbatch_command(assignments, words, tmp_path)
        elif words[:3] == ["python", "-m", "depo_trl.scripts.vllm_server"] and "--dry-run" in words:
            result = subprocess.run(
                [sys.executable, *words[1:]], cwd=ROOT, capture_output=True, text=True, timeout=120
            )
            assert result.returncode == 0, result.stderr
            assert result.stdout.startswith("VLLM_SERVER_DEV_MODE=1 vllm serve ")
        elif words[0] != "make":
            pytest.fail(f"{PAGE}: no check for `{command}`; add one here")
        shown.add(words[0] if words[0] != "make" else f"make {words[1]}")
    assert {
        "make install-gpu",
        "make train",
        "make vllm-serve",
        "make train-with-server",
        "sbatch",
        "python",
    } <= shown


def batch_tables() -> list[tuple[str, list[list[str]]]]:
    """The two batch tables, each with its last header cell and its rows' cells."""
    tables = []
    for header, body in re.findall(r"^(\| training nodes .*)\n\|[-:| ]+\|\n((?:\|.*\n)+)", doc_text(), flags=re.M):
        rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in body.splitlines()]
        tables.append((header.strip().strip("|").split("|")[-1].strip(), rows))
    return tables


def product(cell: str) -> tuple[list[int], int]:
    """'4 x 16 x 8 = 512' as ([4, 16, 8], 512)."""
    factors, total = cell.split("=")
    return [int(factor) for factor in factors.split("x")], int(total)


@pytest.mark.parametrize(
    "recipe", ["recipes/qwen2.5-7b-instruct/depo-grpo.yaml", "recipes/qwen2.5-7b-instruct/depo-gspo.yaml"]
)
def test_the_batch_tables_keep_the_papers_batch_on_1_2_and_4_nodes(recipe, tmp_path):
    gspo = "gspo" in recipe
    [(_, rows)] = [(last, rows) for last, rows in batch_tables() if ("generation" in last) == gspo]
    assert [row[0] for row in rows] == ["1", "2", "4"]
    for nodes, processes, settings, per_step, last in rows:
        assert int(processes) == 8 * int(nodes)
        settings = shlex.split(" ".join(re.findall(r"`([^`]*)`", settings)))
        args = check_training_settings(["--config", recipe, *settings], tmp_path, f"{recipe}, {nodes} nodes")
        rollouts = args.per_device_train_batch_size * args.gradient_accumulation_steps * int(processes)
        assert product(per_step) == (
            [args.per_device_train_batch_size, args.gradient_accumulation_steps, int(processes)],
            rollouts,
        )
        generation = args.per_device_train_batch_size * int(processes) * args.steps_per_generation
        if gspo:  # mini-batches of 8 prompts, 512 rollouts per generation
            assert rollouts == 8 * args.num_generations and generation == 512
            assert product(last) == (
                [args.per_device_train_batch_size, int(processes), args.steps_per_generation],
                512,
            )
            span = args.steps_per_generation // args.gradient_accumulation_steps
            assert args.save_steps % span == 0  # checkpoints at generation-batch boundaries
        else:  # 64 prompts x 8 rollouts per optimizer step, one generation batch each
            assert rollouts == 512 and generation == 512 and int(last) == rollouts // args.num_generations == 64


def test_the_slurm_log_goes_where_slurm_can_write_it():
    with open(SLURM_SCRIPT, encoding="utf-8") as handle:
        directives = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", handle.read(), flags=re.M))
    # Slurm writes the log relative to the submission folder and creates no folder for it
    for name in ("output", "error"):
        assert "/" not in directives.get(name, ""), directives[name]


def test_the_slurm_script_without_vllm_stops_in_one_line(tmp_path):
    result, calls = run_slurm_script(tmp_path, 2, ["recipes/qwen2.5-7b-instruct/depo-grpo.yaml"], {}, has_vllm=False)
    assert result.returncode == 1 and not calls
    [line] = result.stderr.splitlines()
    assert line.startswith("train.slurm: vLLM is not installed for ") and "make install-gpu" in line
