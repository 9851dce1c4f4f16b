"""The memory model against what the long pass really takes, per process (`benchmarks/long_pass_memory.py`): a LoRA
adapter's activations, and the padding forwards of a process with fewer forwards than the others."""

import json
import subprocess
import sys

import pytest

from ...helpers import ROOT, free_port, run_environment


PROBE = f"{ROOT}/benchmarks/long_pass_memory.py"
# The model's per-token counts are exact on a CPU (one forward: 0.97 of the measured peak); what it leaves out
# (glibc's small-block arenas, autograd's bookkeeping) adds up to 15% more with several forwards held
TOLERANCE = (0.85, 1.25)


def probe(tmp_path, *options: str, processes: int = 1) -> list[dict]:
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
                     "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                     "--main_process_port", str(free_port())]  # fmt: skip
    command = [*launcher, PROBE, "--output-dir", str(tmp_path), *options]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, env=run_environment())
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(processes)]


@pytest.mark.slow
def test_lora_activations_are_in_the_memory_model(tmp_path):
    # Every layer's activations held: the adapters' dropout copies of their inputs are a third more than the model's
    [result] = probe(tmp_path, "--lora", "--without-layer-checkpoints")
    assert TOLERANCE[0] <= result["ratio"] <= TOLERANCE[1], result


@pytest.mark.slow
def test_padding_forwards_of_a_less_busy_process_are_in_the_memory_model(tmp_path):
    # Process 0 holds four forwards; process 1 one of its own and three padding forwards
    results = probe(tmp_path, "--prompts", "4", "--uneven", processes=2)
    assert [result["prompts"] for result in results] == [4, 1]
    for result in results:
        assert TOLERANCE[0] <= result["ratio"] <= TOLERANCE[1], result
