"""What each install gives: extras within the versions TRL supports, and a plain install that runs every command."""

import glob
import importlib.metadata
import os
import re
import subprocess
import sys

import pytest
import torch
from packaging.requirements import Requirement
from packaging.version import Version

from ..helpers import ROOT


def extra_requirements(distribution: str, extra: str) -> list[Requirement]:
    requirements = [Requirement(line) for line in importlib.metadata.requires(distribution) or []]
    return [r for r in requirements if r.marker is not None and r.marker.evaluate({"extra": extra})]


def allowed_versions(requirements: list[Requirement], name: str, candidates: list[str]) -> list[str]:
    return [v for v in candidates if all(Version(v) in r.specifier for r in requirements if r.name == name)]


def test_vllm_extra_resolves_only_within_the_range_trl_supports():
    trl_vllm = [r for r in extra_requirements("trl", "vllm") if r.name == "vllm"]
    assert trl_vllm, "TRL's metadata no longer has a vllm extra"
    ours = extra_requirements("depo_trl", "vllm")
    # Versions either side of every bound TRL sets, and releases a loose range would admit
    bounds = [Version(spec.version) for r in trl_vllm for spec in r.specifier]
    candidates = ["0.10.2", "0.21.0", "0.33.0", "1.0.0"]
    candidates += [str(v) for b in bounds for v in (b, Version(f"{b.major}.{b.minor}.{b.micro + 1}"))]
    candidates += [f"{b.major}.{b.minor - 1}.0" for b in bounds if b.minor]
    takes_trl_extra = any(r.name == "trl" and "vllm" in r.extras for r in ours)
    ours_allowed = allowed_versions(ours, "vllm", candidates)
    if takes_trl_extra:  # pip applies TRL's own range on top of ours
        ours_allowed = [v for v in ours_allowed if v in allowed_versions(trl_vllm, "vllm", candidates)]
    assert ours_allowed, "the vllm extra admits no version TRL supports"
    assert set(ours_allowed) <= set(allowed_versions(trl_vllm, "vllm", candidates)), ours_allowed
    assert takes_trl_extra or any(r.name == "vllm" for r in ours)


def test_the_installed_trl_is_the_one_the_package_pins():
    trl = next(
        r for r in map(Requirement, importlib.metadata.requires("depo_trl")) if r.name == "trl" and not r.marker
    )
    assert Version(importlib.metadata.version("trl")) in trl.specifier


def readme_commands() -> list[list[str]]:
    """Every `depo-train`, `python -m depo_trl...` and `python benchmarks/...` command the README and docs/ show."""
    readme = ""
    for document in ["README.md", *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]:
        with open(os.path.join(ROOT, document), encoding="utf-8") as handle:
            readme += handle.read()
    modules = sorted(set(re.findall(r"python -m (depo_trl(?:\.\w+)*)", readme)))
    scripts = sorted(set(re.findall(r"python (benchmarks/\w+\.py)", readme)))
    commands = [["depo-train"]] + [["python", "-m", module] for module in modules]
    return commands + [["python", os.path.join(ROOT, script)] for script in scripts]


@pytest.mark.slow
def test_a_plain_install_runs_every_readme_command(tmp_path, tiny_model_dir):
    """A fresh virtual environment with the package and no extras: an import that only the `dev` extra (or nothing)
    provides fails here. Commands run outside the checkout, so they import the installed package."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    pip = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    torch_spec = f"torch=={Version(torch.__version__).base_version}"  # the CPU wheel the Makefile installs here
    for target in (torch_spec, ROOT):
        installed = subprocess.run([*pip, target], capture_output=True, text=True, timeout=900)
        assert installed.returncode == 0, installed.stderr[-3000:]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "PYTHONPATH": ""}

    def run(command: list[str]) -> subprocess.CompletedProcess:
        executable = str(venv / "bin" / command[0]) if command[0] == "depo-train" else python
        command = [executable, *command[1:]]
        return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, env=environment)

    commands = readme_commands()
    assert len(commands) >= 6, commands
    for command in commands:
        result = run([*command, "--help"])
        assert result.returncode == 0 and "usage" in result.stdout.lower(), (command, result.stderr[-2000:])

    # The toy world's warm start ships inside the package (the demo starts from it)
    shipped = run(["python", "-c", "from depo_trl.toy.warm_start import *; print(read_record(SHIPPED_WARM_START))"])
    assert shipped.returncode == 0 and "short_sampled_em" in shipped.stdout, shipped.stderr[-2000:]

    fixtures = os.path.join(ROOT, "tests", "fixtures")
    built = run(
        ["python", "-m", "depo_trl.data.build", "--source", "musique", "--input", f"{fixtures}/musique_sample.jsonl",
         "--tokenizer", tiny_model_dir, "--short-budget", "600", "--long-budget", "1200", "--num-samples", "2",
         "--output-dir", "built", "--no-progress"]
    )  # fmt: skip
    assert built.returncode == 0, built.stderr[-2000:]
    evaluated = run(
        ["python", "-m", "depo_trl.evaluation", "--model", tiny_model_dir, "--tasks", "hotpotqa,ruler_qa_4k",
         "--backend", "hf", "--limit", "1", "--max-length", "2048", "--max-new-tokens", "4",
         "--data-dir", fixtures, "--output-dir", "eval"]
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert (tmp_path / "eval" / "ruler_qa.png").is_file()
    trained = run(
        ["depo-train", "--config", os.path.join(ROOT, "recipes", "tiny", "depo.yaml"),
         "--model_name_or_path", os.path.join(ROOT, "depo_trl", "toy", "shipped_warm_start"),
         "--dataset_name", os.path.join(ROOT, "recipes", "tiny", "assets", "toy_world.jsonl"),
         "--output_dir", "run", "--max_steps", "1", "--save_strategy", "no"]
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr[-2000:]
