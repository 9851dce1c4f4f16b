"""The code blocks of the project's documents, what each says it needs, which test runs the commands of those that
run on a CPU (`RUN_BY`), and how a command's variables and training settings are read.

A block's needs are an HTML comment on the nearest non-blank line above its opening fence, e.g. `<!-- gpu-only -->`
or `<!-- network interactive -->` (docs/development.md, "Documents that are tests")."""

import glob
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import cache

import pytest

from depo_trl.scripts.recipe import make_parser, parse_recipe
from depo_trl.user_errors import UsageError

from ..helpers import ROOT


SHELL_LANGUAGES = ("bash", "sh", "shell", "console")
# What a block may say it needs; `cpu` and `suite` stand alone, the others combine
NEEDS = ("cpu", "suite", "gpu-only", "network", "interactive", "long")
# A Python block may instead be a piece of a file, or a fragment (`...` for what is left out): compiled only
EXCERPT = "excerpt"
MARKER = re.compile(r"<!--\s*(.*?)\s*-->")

# Who runs each command of a `cpu` block exactly as written: a test of this folder, or one elsewhere that already does
RUN_BY = {
    "make demo": "tests/docs/test_commands.py::test_make_demo",
    "make quality": "tests/docs/test_commands.py::test_make_quality",
    "make style": "tests/docs/test_commands.py::test_make_style",
    "depo-train --config recipes/tiny/depo.yaml": "tests/docs/test_commands.py::test_the_tiny_recipe_and_its_push",
    "python -m depo_trl.scripts.push --run-dir runs/tiny/depo --hub-model-id you/tiny-depo --dry-run": (
        "tests/docs/test_commands.py::test_the_tiny_recipe_and_its_push"
    ),
    "depo-train --config recipes/tiny/depo.yaml --output_dir runs/tiny/try --max_steps 8": (
        "tests/docs/test_commands.py::test_a_recipe_with_settings_changed"
    ),
    "depo-train --help": "tests/docs/test_commands.py::test_depo_train_help",
    "depo-train --help-all": "tests/docs/test_commands.py::test_depo_train_help",
    "python -m depo_trl.models.smollm2 --output-dir models/smollm2-135m-instruct": (
        "tests/docs/test_commands.py::test_the_smollm2_conversion"
    ),
    **dict.fromkeys(
        (
            "python -m depo_trl.data.build --source musique --input tests/fixtures/musique_sample.jsonl --tokenizer "
            "models/smollm2-135m-instruct --short-budget 512 --long-budget 2048 --output-dir "
            "data/smollm2-135m-instruct/musique_depo",
            "VLLM_CPU_KVCACHE_SPACE=1 .venv-vllm/bin/python -m depo_trl.scripts.vllm_server --config "
            "recipes/smollm2-135m-instruct/depo.yaml --host 127.0.0.1 --port 8000 --enforce-eager",
            ".venv-vllm/bin/depo-train --config recipes/smollm2-135m-instruct/depo.yaml --use_vllm true --vllm_mode "
            "server --vllm_server_host 127.0.0.1 --vllm_server_port 8000",
        ),
        "tests/vllm_engine/test_server_mode.py::test_the_documented_server_and_trainer_run_as_written",
    ),
    "python -m depo_trl.scripts.vllm_server --config recipes/qwen2.5-7b-instruct/depo-grpo.yaml --dry-run": (
        "tests/test_gpu_training_docs.py::test_every_command_of_the_page_is_checked"
    ),
    "python -m depo_trl.evaluation --model depo_trl/toy/shipped_warm_start --tasks moderate,longbench_v2 --backend hf "
    "--limit 2 --max-length 1024 --max-new-tokens 8 --data-dir tests/fixtures --output-dir runs/eval-smoke": (
        "tests/evaluation/test_docs.py::test_the_cpu_blocks_run_as_written"
    ),
    "python -m depo_trl.evaluation --model depo_trl/toy/shipped_warm_start --tasks extended --backend hf --limit 2 "
    "--max-length 1024 --max-new-tokens 8 --data-dir tests/fixtures/longbench --output-dir runs/eval-smoke": (
        "tests/evaluation/test_docs.py::test_the_cpu_blocks_run_as_written"
    ),
}
# Python blocks run by a test (with fixtures in place of Hub models), by (document, first line)
PYTHON_RUN_BY = {
    ("README.md", "from datasets import load_from_disk"): "tests/docs/test_commands.py::test_the_readme_example",
}


@dataclass(frozen=True)
class Block:
    document: str  # relative to the repository root
    line: int  # of the opening fence, from 1
    language: str
    text: str
    marker: str | None  # the comment's text, None without one

    @property
    def where(self) -> str:
        return f"{self.document}:{self.line}"

    @property
    def needs(self) -> set[str]:
        return set((self.marker or "").split()) if not self.excerpt else set()

    @property
    def excerpt(self) -> bool:
        return (self.marker or "").split(":")[0].strip() == EXCERPT

    @property
    def excerpt_of(self) -> str | None:
        """The file a Python block is a piece of (`<!-- excerpt: FILE -->`), if it names one."""
        if not self.excerpt or ":" not in self.marker:
            return None
        return self.marker.split(":", 1)[1].strip()

    def commands(self) -> list[str]:
        """The commands: continuation lines joined, comments and `console` prompts dropped, blanks collapsed."""
        text = self.text.replace("\\\n", " ")
        commands = []
        for line in text.splitlines():
            if self.language == "console":
                if not line.startswith("$ "):
                    continue  # output
                line = line[2:]
            command = " ".join(without_comment(line).split())
            if command:
                commands.append(command)
        return commands


def without_comment(line: str) -> str:
    """`line` up to a `#` that starts a shell comment (at the start or after a space, outside quotes)."""
    quote = None
    for index, character in enumerate(line):
        if quote:
            quote = None if character == quote else quote
        elif character in "'\"":
            quote = character
        elif character == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index]
    return line


def documents() -> list[str]:
    """The documents whose blocks are tests: the README, every page of docs/, and the folders' READMEs."""
    pages = sorted(os.path.relpath(path, ROOT) for path in glob.glob(os.path.join(ROOT, "docs", "*.md")))
    return ["README.md", *pages, "recipes/README.md", "accelerate_configs/README.md"]


@cache
def blocks() -> tuple[Block, ...]:
    found = []
    for document in documents():
        with open(os.path.join(ROOT, document), encoding="utf-8") as handle:
            lines = handle.read().splitlines()
        index = 0
        while index < len(lines):
            opening = re.match(r"```(\S*)\s*$", lines[index])
            if not opening:
                index += 1
                continue
            end = next(i for i in range(index + 1, len(lines)) if lines[i].startswith("```"))
            above = next((lines[i] for i in range(index - 1, -1, -1) if lines[i].strip()), "")
            marker = MARKER.fullmatch(above.strip())
            text = "\n".join(lines[index + 1 : end]) + "\n"
            found.append(Block(document, index + 1, opening[1], text, marker[1] if marker else None))
            index = end + 1
    return tuple(found)


def shell_blocks() -> list[Block]:
    return [block for block in blocks() if block.language in SHELL_LANGUAGES]


def python_blocks() -> list[Block]:
    return [block for block in blocks() if block.language == "python"]


def cpu_commands() -> dict[str, list[Block]]:
    """Each command of a `cpu` block, with the blocks that show it."""
    commands: dict[str, list[Block]] = {}
    for block in shell_blocks():
        if block.needs == {"cpu"}:
            for command in block.commands():
                commands.setdefault(command, []).append(block)
    return commands


def documented(command: str, test: str) -> str:
    """`command` as a `cpu` block shows it, checked to be the one `RUN_BY` gives `test` (its `path::name`)."""
    assert command in cpu_commands(), f"no cpu block of the documents shows `{command}` any more"
    assert RUN_BY.get(command) == test, f"RUN_BY does not give `{command}` to {test}"
    return command


def repository_copy(destination) -> str:
    """A copy of the repository's files (tracked, and new ones git does not ignore) in `destination`, their times
    kept, with the virtual environments linked in, so that make finds them up to date: for the commands that write
    into the repository (`runs/`, `models/`), which must not touch a user's own."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split("\0")  # fmt: skip
    for name in filter(None, listed):
        source = os.path.join(ROOT, name)
        if os.path.isfile(source):
            os.makedirs(os.path.join(destination, os.path.dirname(name)), exist_ok=True)
            shutil.copy2(source, os.path.join(destination, name))
    for environment in (".venv", ".venv-vllm"):
        if os.path.isdir(os.path.join(ROOT, environment)):
            os.symlink(os.path.join(ROOT, environment), os.path.join(destination, environment))
    return str(destination)


def user_environment(**extra: str) -> dict[str, str]:
    """The environment a user runs the documents' commands in: the project's virtual environment first on PATH (as
    `source .venv/bin/activate` leaves it), offline, no W&B."""
    return {
        **os.environ,
        "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ["PATH"]]),
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "disabled",
        **extra,
    }


def run_as_written(command: str, cwd: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """`command` through bash, as a user types it, in `cwd`."""
    return subprocess.run(
        ["bash", "-e", "-c", command], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env=user_environment(),
    )  # fmt: skip


def split_assignments(words: list[str]) -> tuple[dict[str, str], list[str]]:
    """A command's leading `NAME=value` words (environment or make variables) apart from the rest."""
    assignments = {}
    while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
        name, value = words.pop(0).split("=", 1)
        assignments[name] = value
    return assignments, words


def check_training_settings(arguments: list[str], tmp_path, what: str):
    """`depo-train ARGUMENTS`: every setting is one the parser knows, the recipe exists, and both parse together (a
    CPU holds no bf16 model, and vLLM is not needed to parse, hence the additions). The parsed training arguments,
    None for `--help`."""
    known = {option for action in make_parser()._actions for option in action.option_strings}
    known |= {"--config", "--help-all"}
    for word in arguments:
        if word.startswith("--"):
            assert word.split("=")[0] in known, f"{what}: depo-train has no setting {word}"
    if "--help" in arguments or "--help-all" in arguments:
        return None
    assert "--config" in arguments, f"{what}: no recipe"
    recipe = arguments[arguments.index("--config") + 1]
    assert os.path.isfile(os.path.join(ROOT, recipe)), f"{what}: no recipe {recipe}"
    arguments = [os.path.join(ROOT, recipe) if word == recipe else word for word in arguments]
    try:
        _, args, _, _ = parse_recipe(
            [*arguments, "--use_cpu", "true", "--bf16", "false", "--output_dir", str(tmp_path / "run")]
        )  # fmt: skip
    except UsageError as error:
        pytest.fail(f"{what}: {error}")
    return args
