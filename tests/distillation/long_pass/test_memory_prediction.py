"""The memory model against what the long pass really takes, per process (`benchmarks/long_pass_memory.py`): a LoRA
adapter's activations, the padding forwards of a process with fewer forwards than the others, and a sequence-parallel
group's shards."""

import json
import subprocess
import sys

import pytest

from ...helpers import ROOT, free_port, run_environment


PROBE = f"{ROOT}/benchmarks/long_pass_memory.py"
# Measured here at these sizes: 0.97-1.14 of the prediction (one process, two with uneven forwards, a sequence-parallel
# group); what the model leaves out (autograd's bookkeeping, small buffers) stays within this band
TOLERANCE = (0.85, 1.25)


def probe(tmp_path, *options: str, processes: int = 1) -> list[dict]:
    tmp_path.mkdir(exist_ok=True)
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


@pytest.mark.slow
def test_a_sequence_parallel_group_holds_shards_as_the_memory_model_says(tmp_path):
    # Each process two prompts of 1,024 tokens with four completions; split, the group's four rows a half each
    alone = probe(tmp_path / "sp1", processes=2)
    split = probe(tmp_path / "sp2", "--sequence-parallel", "2", processes=2)
    for result in alone + split:
        assert TOLERANCE[0] <= result["ratio"] <= TOLERANCE[1], result
    # The same held tokens per rank, half a forward's working set: the largest forward a rank can take doubles
    assert max(r["measured_mib"] for r in split) < 0.8 * min(r["measured_mib"] for r in alone)
