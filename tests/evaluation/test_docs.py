"""docs/evaluation.md: its tables are the registry's, and every shell block says where it runs; those that run on a CPU
from the repository root are run here exactly as written."""

import os
import re
import subprocess
import sys

import pytest

from depo_trl.evaluation.tasks import data_table, tasks_table

from . import FIXTURES


ROOT = os.path.dirname(os.path.dirname(FIXTURES))
DOCUMENT = os.path.join(ROOT, "docs", "evaluation.md")
RUNS_HERE = "Runs on a CPU from the repository root"
NEEDS = ("Needs a GPU", "Needs the network")


def document() -> str:
    with open(DOCUMENT, encoding="utf-8") as handle:
        return handle.read()


def shell_blocks() -> list[tuple[str, str]]:
    """Each ```bash block with the paragraph just before it."""
    blocks = []
    for match in re.finditer(r"```bash\n(.*?)```", document(), re.DOTALL):
        before = document()[: match.start()].rstrip().split("\n\n")[-1]
        blocks.append((before, match[1]))
    return blocks


def test_the_tables_are_the_registry():
    text = document()
    assert tasks_table() in text and data_table() in text


def test_every_shell_block_says_where_it_runs():
    blocks = shell_blocks()
    assert blocks
    for before, block in blocks:
        assert (RUNS_HERE in before) != any(need in before for need in NEEDS), (before, block)


@pytest.mark.slow
def test_the_cpu_blocks_run_as_written(tmp_path):
    """In a folder with the repository's `depo_trl` and `tests`, so that what they write stays out of the checkout."""
    for name in ("depo_trl", "tests"):
        os.symlink(os.path.join(ROOT, name), tmp_path / name)
    environment = {
        **os.environ,
        "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ["PATH"]]),
        "HF_HUB_OFFLINE": "1",
    }
    blocks = [block for before, block in shell_blocks() if RUNS_HERE in before]
    assert blocks
    for block in blocks:
        result = subprocess.run(
            ["bash", "-e", "-c", block], cwd=tmp_path, capture_output=True, text=True, timeout=900, env=environment
        )
        assert result.returncode == 0, result.stderr[-3000:]
    results = (tmp_path / "runs" / "eval-smoke" / "results.md").read_text()
    assert re.search(r"\| shipped_warm_start( \| \d+\.\d\d){11} \|", results), results  # Table 2's columns and Avg.
    assert re.search(r"\| shipped_warm_start \| \d+\.\d\d \| \d \| 2 \|", results), results  # LongBench v2
