"""Sequence parallelism for the long pass (`depo_trl/distillation/long_pass/sequence_parallel.py`): a window split over
two processes gives each process's own log-probs and the gradient of the processes' own passes."""

import json
import subprocess
import sys

import pytest
from transformers import Qwen2Config

from depo_trl.distillation.long_pass.sequence_parallel import allowed_sizes

from ...helpers import ROOT, free_port, run_environment


@pytest.mark.slow
@pytest.mark.parametrize(
    "case",
    [
        "held",  # rows of 41 + 3 x 6 - 1 = 57 and 30 + 17 = 46 tokens: one split with padding, one evenly
        "empty",  # process 1 has no rollout in the pass: it computes process 0's rows with it
        "recomputed",  # every forward but the last recomputed in the backward, its exchanges again
        "checkpointed",  # under the model's layer checkpoints, recomputed layer by layer in the backward
    ],
)
def test_a_window_split_over_two_processes_equals_their_own_passes(tmp_path, case):
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
        "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
        f"{ROOT}/tests/distillation/long_pass/sequence_parallel_run.py", str(tmp_path), case,
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, env=run_environment())
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert [report["rows"] for report in reports] == [6, 0 if case == "empty" else 3]
    for report in reports:
        assert report["gradient_size"] > 1e-3  # the loss moves the parameters
        assert report["log_prob_gap"] < 1e-5 and report["gradient_gap"] < 1e-5 * report["gradient_size"], report


def test_the_sizes_a_model_allows_divide_its_query_heads_and_the_processes():
    qwen_7b = Qwen2Config(num_attention_heads=28, num_key_value_heads=4)
    assert allowed_sizes(qwen_7b, 8) == [1, 2, 4]  # 8 does not divide 28 query heads
    llama_8b = Qwen2Config(num_attention_heads=32, num_key_value_heads=8)
    assert allowed_sizes(llama_8b, 8) == [1, 2, 4, 8]
    assert allowed_sizes(qwen_7b, 6) == [1, 2]  # 3 and 6 divide no 28


def test_a_model_whose_long_pass_cannot_pack_rows_is_refused_before_any_group_is_made():
    from types import SimpleNamespace

    from depo_trl.distillation.long_pass.sequence_parallel import SequenceParallelGroup
    from depo_trl.user_errors import UsageError

    config = Qwen2Config(num_attention_heads=4, num_key_value_heads=2, attn_implementation="sdpa")
    processes = SimpleNamespace(num_processes=2, process_index=0)
    assert SequenceParallelGroup.for_model(config, 1, processes, shares_prefix=False) is None
    # e.g. a layer type the packed row cannot reproduce: each rank would compute every member's rows whole
    with pytest.raises(UsageError, match="sp_size 2: sequence parallelism splits packed rows"):
        SequenceParallelGroup.for_model(config, 2, processes, shares_prefix=False)
    eager = Qwen2Config(num_attention_heads=4, num_key_value_heads=2, attn_implementation="eager")
    with pytest.raises(UsageError, match="runs SDPA or flash-attention, not 'eager'"):
        SequenceParallelGroup.for_model(eager, 2, processes, shares_prefix=True)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"rollout_context": "long", "distillation": "none"}, "has none"),
        (
            {"rollout_context": "short", "distillation": "kd", "share_long_prefix": False},
            "set share_long_prefix: true",
        ),
    ],
)
def test_a_configuration_without_a_splittable_long_pass_is_refused_at_launch(monkeypatch, settings, message):
    from depo_trl import DePOConfig
    from depo_trl.user_errors import UsageError

    # What `accelerate launch` with zero3-sp.yaml and --parallelism_config_sp_size 2 sets
    monkeypatch.setenv("ACCELERATE_USE_PARALLELISM_CONFIG", "true")
    monkeypatch.setenv("PARALLELISM_CONFIG_SP_SIZE", "2")
    with pytest.raises(UsageError, match=f"parallelism_config_sp_size 2: .*{message}"):
        DePOConfig(output_dir="unused", use_cpu=True, **settings)
    assert DePOConfig(output_dir="unused", use_cpu=True).distillation == "kd"  # DePO itself splits


def test_a_size_the_config_did_not_see_is_refused_by_the_trainer(monkeypatch, tiny_model_dir, tiny_dataset, tmp_path):
    # The size comes to the trainer after its config was checked, as a `parallelism_config` given in Python does
    from transformers import AutoModelForCausalLM

    from depo_trl import DePOTrainer
    from depo_trl.distillation.long_pass import sequence_parallel
    from depo_trl.user_errors import UsageError

    from ...helpers import alternating_reward, cpu_depo_config, load_tokenizer

    args = cpu_depo_config(str(tmp_path), rollout_context="long", distillation="none", num_generations=4,
                           per_device_train_batch_size=4)  # fmt: skip
    monkeypatch.setattr(sequence_parallel, "launched_size", lambda: 2)
    with pytest.raises(UsageError, match="parallelism_config_sp_size 2: .*has none"):
        DePOTrainer(
            model=AutoModelForCausalLM.from_pretrained(tiny_model_dir),
            reward_funcs=alternating_reward,
            args=args,
            train_dataset=tiny_dataset,
            processing_class=load_tokenizer(tiny_model_dir),
        )
