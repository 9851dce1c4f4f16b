"""Every code block of the README and of `docs/` is a test: a shell block says what it needs; the commands of a `cpu`
block are each run, as written, by the test `RUN_BY` names; `suite` blocks run the test suite; every other block is
parsed as far as a CPU can check it (make targets and variables, `depo-train` settings and recipes, module parsers,
accelerate and Slurm launches, pip extras, the `hf` command line). Python blocks compile, and excerpts match their
file."""

import ast
import configparser
import contextlib
import importlib
import importlib.metadata
import importlib.util
import io
import os
import re
import shlex
import subprocess
import sys
from argparse import ArgumentParser
from functools import cache

import pytest

from depo_trl.user_errors import UsageError

from ..helpers import ROOT
from .blocks import (
    NEEDS,
    PYTHON_RUN_BY,
    RUN_BY,
    Block,
    check_training_settings,
    cpu_commands,
    documents,
    python_blocks,
    shell_blocks,
    split_assignments,
)


def test_every_block_says_what_it_needs():
    assert len(shell_blocks()) >= 40 and {"README.md", "docs/design.md"} <= set(documents())
    for block in shell_blocks():
        assert block.marker is not None, f"{block.where}: no <!-- ... --> above the block saying what it needs"
        assert block.needs and block.needs <= set(NEEDS), f"{block.where}: <!-- {block.marker} -->"
        assert len(block.needs) == 1 or not block.needs & {"cpu", "suite"}, f"{block.where}: cpu and suite stand alone"
    for block in python_blocks():
        assert block.marker is not None, f"{block.where}: no <!-- ... --> above the block"
        assert block.excerpt or (block.needs and block.needs <= set(NEEDS)), f"{block.where}: <!-- {block.marker} -->"


def defined_test(test: str) -> str:
    """The source of the test file `path::name` names, checked to define that test function."""
    path, name = test.split("::")
    assert os.path.isfile(os.path.join(ROOT, path)), test
    with open(os.path.join(ROOT, path), encoding="utf-8") as handle:
        source = handle.read()
    functions = {node.name for node in ast.walk(ast.parse(source)) if isinstance(node, ast.FunctionDef)}
    assert name in functions, f"{path} defines no {name}"
    return source


def test_every_cpu_command_is_run_by_a_test():
    commands = cpu_commands()
    assert "make demo" in commands
    for command, shown_in in commands.items():
        assert command in RUN_BY, f"{shown_in[0].where}: no test runs `{command}`; give it one in RUN_BY (blocks.py)"
        source = defined_test(RUN_BY[command])
        if not RUN_BY[command].startswith("tests/docs/"):  # a page's own test, which reads the page itself
            for block in shown_in:
                assert os.path.basename(block.document) in source, (RUN_BY[command], block.document)
    assert not set(RUN_BY) - set(commands), f"RUN_BY names commands no cpu block shows: {set(RUN_BY) - set(commands)}"
    for (document, first_line), test in PYTHON_RUN_BY.items():
        defined_test(test)
        assert any(b.document == document and b.text.startswith(first_line + "\n") for b in python_blocks()), document


# ---------------------------------------------------------------------------------------------------- the Makefile


@cache
def make_database() -> dict[str, list[str]]:
    """Each target of the Makefile with its recipe lines, as make itself reads them (nothing is run)."""
    listing = subprocess.run(
        ["make", "-pRrq", "-f", "Makefile", ":"], cwd=ROOT, capture_output=True, text=True
    ).stdout.splitlines()
    targets: dict[str, list[str]] = {}
    current = None
    for previous, line in zip(["", *listing], listing):
        match = re.match(r"^([A-Za-z0-9][\w.-]*):(?!=)", line)
        if match and previous != "# Not a target:":
            current = targets.setdefault(match[1], [])
        elif line.startswith("\t") and current is not None:
            current.append(line.strip())
        elif not line.strip():
            current = None
    return targets


def makefile_variables() -> set[str]:
    with open(os.path.join(ROOT, "Makefile"), encoding="utf-8") as handle:
        return set(re.findall(r"^([A-Z_]+)\s*\??=", handle.read(), flags=re.M))


@cache
def names_read_somewhere() -> str:
    """The text of the project's code, scripts, Makefile, notebook and tests (not these, which make names up): where an
    environment variable a document sets must be read."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    suffixes = (".py", ".sh", ".slurm", ".ipynb", "Makefile")
    texts = []
    for name in files:
        if name.endswith(suffixes) and not name.startswith("tests/docs/") and os.path.isfile(os.path.join(ROOT, name)):
            with open(os.path.join(ROOT, name), encoding="utf-8") as handle:
                texts.append(handle.read())
    return "\n".join(texts)


def suite_runs_pytest(target: str) -> bool:
    recipe = make_database().get(target, [])
    called = [line.split()[-1] for line in recipe if line.startswith("$(MAKE) ")]
    return any("pytest" in line for line in recipe) and all(suite_runs_pytest(t) for t in called)


def test_suite_blocks_run_the_test_suite():
    suites = [block for block in shell_blocks() if block.needs == {"suite"}]
    assert suites
    for block in suites:
        for command in block.commands():
            words = shlex.split(command)
            assert words[0] == "make" and len(words) == 2, f"{block.where}: `{command}`"
            assert suite_runs_pytest(words[1]), f"{block.where}: make {words[1]} runs no pytest"
    with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as handle:
        assert handle.read().splitlines()[-1] == "make test"  # what CI runs


# --------------------------------------------------------------------------------------------- the parsed commands


class Parsed(Exception):
    """Raised in place of a command's work, once its argument parser has accepted the arguments."""


@contextlib.contextmanager
def parsing_only():
    """While open, any argparse parser that accepts its arguments raises `Parsed` instead of returning them."""
    original = ArgumentParser.parse_args

    def parse_args(self, args=None, namespace=None):
        raise Parsed(original(self, args, namespace))

    ArgumentParser.parse_args = parse_args
    try:
        yield
    finally:
        ArgumentParser.parse_args = original


def accepts(main, arguments: list[str], what: str) -> None:
    """`main(arguments)` gets as far as its parser accepting them."""
    printed = io.StringIO()
    with parsing_only(), contextlib.redirect_stderr(printed):
        try:
            main(arguments)
        except Parsed:
            return
        except (UsageError, SystemExit) as error:
            pytest.fail(f"{what}: {printed.getvalue().strip() or error}")
    pytest.fail(f"{what}: ran without parsing arguments")


def check_environment_names(assignments: dict[str, str], what: str) -> None:
    for name in assignments:
        known = name in makefile_variables() or re.search(rf"\b{name}\b", names_read_somewhere())
        assert known, f"{what}: nothing reads {name}"


def module_main(module: str):
    spec = importlib.util.find_spec(module)
    assert spec is not None, f"no module {module}"
    if spec.submodule_search_locations is not None:  # a package: `python -m` runs its __main__
        module += ".__main__"
    return importlib.import_module(module).main


def script_main(path: str):
    assert os.path.isfile(os.path.join(ROOT, path)), f"no script {path}"
    name = f"_documented_{os.path.basename(path)[:-3]}"
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def check_python(words: list[str], tmp_path, what: str) -> None:
    if words[1] == "-m":
        module, arguments = words[2], words[3:]
        if module == "pytest":
            assert all(os.path.exists(os.path.join(ROOT, w)) for w in arguments if not w.startswith("-")), what
            return
        accepts(module_main(module), arguments, what)
    else:
        accepts(script_main(words[1]), words[2:], what)


def check_make(assignments: dict[str, str], arguments: list[str], tmp_path, what: str) -> None:
    variables, rest = {}, []
    for word in arguments:
        if re.fullmatch(r"[A-Z_]+=.*", word):
            name, value = word.split("=", 1)
            variables[name] = value
        else:
            rest.append(word)
    [target] = rest
    assert target in make_database(), f"{what}: the Makefile has no target {target}"
    for name in variables:
        assert name in makefile_variables(), f"{what}: the Makefile has no variable {name}"
    check_environment_names(assignments, what)
    settings = {**assignments, **variables}
    for name in ("RECIPE", "ACCELERATE_CONFIG"):
        if name in settings:
            assert os.path.isfile(os.path.join(ROOT, settings[name])), f"{what}: {name}={settings[name]}"
    if "OPTIONS" in settings or "RECIPE" in settings:
        recipe = settings.get("RECIPE", "recipes/qwen2.5-7b-instruct/depo-grpo.yaml")  # the Makefile's default
        check_training_settings(["--config", recipe, *shlex.split(settings.get("OPTIONS", ""))], tmp_path, what)


def check_accelerate(arguments: list[str], tmp_path, what: str) -> None:
    from accelerate.commands.launch import launch_command_parser

    assert arguments[0] == "launch", what
    # Shell variables (`$NODE_RANK`) stand for numbers or addresses here
    values = [re.sub(r"\$\{?\w+\}?", "0", word) for word in arguments[1:]]
    launch = launch_command_parser().parse_args(values)
    assert os.path.isfile(os.path.join(ROOT, launch.config_file)), f"{what}: no accelerate config {launch.config_file}"
    assert launch.training_script == "depo_trl/scripts/depo.py", what
    check_training_settings(launch.training_script_args, tmp_path, what)


def check_sbatch(assignments: dict[str, str], arguments: list[str], tmp_path, what: str) -> None:
    options = [word for word in arguments if word.startswith("--")]
    script, recipe, config = [word for word in arguments if not word.startswith("--")]
    assert all(re.fullmatch(r"--[\w-]+=\S+", option) for option in options), what
    assert os.path.isfile(os.path.join(ROOT, script)), f"{what}: no {script}"
    assert os.path.isfile(os.path.join(ROOT, "accelerate_configs", f"{config}.yaml")), f"{what}: no config {config}"
    check_environment_names(assignments, what)
    check_training_settings(["--config", recipe, *shlex.split(assignments.get("OPTIONS", ""))], tmp_path, what)


def check_pip(arguments: list[str], what: str) -> None:
    assert arguments[0] == "install", what
    parser = configparser.ConfigParser()
    parser.read(os.path.join(ROOT, "setup.cfg"))
    extras = set(parser["options.extras_require"])
    for word in arguments[1:]:
        if word.startswith("."):
            match = re.fullmatch(r"\.(?:\[([\w,-]+)\])?", word)
            assert match, f"{what}: {word}"
            assert set((match[1] or "").split(",")) - {""} <= extras, f"{what}: no extra in {word}"
        elif not word.startswith("-"):
            importlib.metadata.version(word)  # a package the project's install brings


@cache
def hf_help(*command: str) -> str:
    hf = os.path.join(os.path.dirname(sys.executable), "hf")
    result = subprocess.run([hf, *command, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"hf {' '.join(command)}: {result.stderr[-500:]}"
    return result.stdout


def check_hf(arguments: list[str], what: str) -> None:
    command = arguments[:1] if arguments[0] in ("upload", "download") else arguments[:2]
    help_text = hf_help(*command)
    for word in arguments:
        if word.startswith("--"):
            assert word.split("=")[0] in help_text, f"{what}: hf {' '.join(command)} has no {word}"


def check_command(command: str, tmp_path, what: str) -> None:
    """`command` as far as a CPU can check it without running it."""
    command = re.sub(r"\[(-[^\]]*)\]", r"\1", command)  # optional arguments, [--dry-run]
    for part in command.split(" && "):
        assignments, words = split_assignments(shlex.split(part))
        program = os.path.basename(words[0])
        if program == "make":
            check_make(assignments, words[1:], tmp_path, what)
            continue
        check_environment_names(assignments, what)
        if program == "depo-train":
            check_training_settings(words[1:], tmp_path, what)
        elif program in ("python", "python3"):
            check_python(words, tmp_path, what)
        elif program == "accelerate":
            check_accelerate(words[1:], tmp_path, what)
        elif program == "sbatch":
            check_sbatch(assignments, words[1:], tmp_path, what)
        elif program == "pip":
            check_pip(words[1:], what)
        elif program == "hf":
            check_hf(words[1:], what)
        elif program == "bash":
            assert os.path.isfile(os.path.join(ROOT, words[1])), f"{what}: no {words[1]}"
        elif program == "jupyter":
            assert all(os.path.exists(os.path.join(ROOT, w)) for w in words[2:] if not w.startswith("-")), what
        elif program == "source":
            assert words[1] == ".venv/bin/activate", what  # the environment `make install` creates
        elif program == "export":
            check_environment_names(dict(word.split("=", 1) for word in words[1:]), what)
        else:
            pytest.fail(f"{what}: no check for `{words[0]}` commands; add one to tests/docs/test_blocks.py")


PARSED = [
    pytest.param(block, id=block.where)
    for block in shell_blocks()
    if block.marker and block.needs and not block.needs & {"cpu", "suite"}
]


@pytest.mark.parametrize("block", PARSED)
def test_the_blocks_a_cpu_cannot_run_are_parsed(block: Block, tmp_path):
    commands = block.commands()
    assert commands, block.where
    for command in commands:
        check_command(command, tmp_path, f"{block.where}: `{command}`")


def test_a_command_with_a_mistake_is_caught(tmp_path):
    for command, mistake in [
        ("make no-such-target", "no target"),
        ("make vllm-serve RECIPE=recipes/qwen2.5-7b-instruct/depo-grpo.yaml NO_SUCH_VARIABLE=1", "no variable"),
        ("depo-train --config recipes/tiny/depo.yaml --distilation kd", "no setting"),
        ("depo-train --config recipes/tiny/missing.yaml", "no recipe"),
        ("python -m depo_trl.data.build --source musique --input x --tokenizer x --output-dir y --z", "unrecognized"),
        ("python -m depo_trl.no_such_module", "no module"),
        ('pip install -e ".[no-such-extra]"', "no extra"),
        ("hf upload you/x runs/x . --no-such-flag", "has no"),
        ("make train RECIPE=recipes/qwen2.5-7b-instruct/missing.yaml", "RECIPE="),
        ('make train OPTIONS="--gradient_acumulation_steps 8"', "no setting"),
        ("NO_SUCH_VARIABLE=1 make notebook", "nothing reads"),
        ("accelerate launch --config_file accelerate_configs/zero4.yaml depo_trl/scripts/depo.py", "no accelerate"),
        ("sbatch --nodes=2 accelerate_configs/slurm/train.slurm recipes/tiny/depo.yaml zero4", "no config"),
        ("python -m depo_trl.evaluation --model x --tasks all --backend hf --output-dir y --top-k 3", "unrecognized"),
        ("rsync -a runs/ elsewhere/", "no check"),
    ]:
        with pytest.raises(BaseException, match=mistake):
            check_command(command, tmp_path, command)


# ----------------------------------------------------------------------------------------------------- Python blocks


@pytest.mark.parametrize("block", [pytest.param(b, id=b.where) for b in python_blocks()])
def test_python_blocks_compile_and_excerpts_match_their_file(block: Block):
    compile(block.text, block.where, "exec")
    if block.excerpt_of:
        with open(os.path.join(ROOT, block.excerpt_of), encoding="utf-8") as handle:
            text = handle.read()
        source = text
        if block.excerpt_of.endswith(".ipynb"):  # the notebook's cells, as JSON strings
            import json

            source = "\n".join("".join(cell["source"]) for cell in json.loads(text)["cells"])
        for line in filter(None, block.text.splitlines()):
            assert line in source, f"{block.where}: `{line}` is not in {block.excerpt_of}"
    elif not block.excerpt:
        assert (block.document, block.text.splitlines()[0]) in PYTHON_RUN_BY, f"{block.where}: no test runs it"


# ----------------------------------------------------------------------------------------------- what the text says


def test_the_readme_states_the_demos_steps_and_time_cap():
    from depo_trl.toy import demo

    with parsing_only():
        with pytest.raises(Parsed) as parsed:
            demo.main([])
    steps, minutes = parsed.value.args[0].steps, parsed.value.args[0].minutes
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
        readme = handle.read()
    assert f"up to {steps} steps within a {minutes:g}-minute cap" in readme
