"""The memory model that sizes the long pass (`depo_trl/distillation/long_pass/memory.py`): how long a forward is,
whether the window's forwards are held for the backward, and the bytes per token of a real model's shapes. What it
predicts against what the pass really takes: `test_memory_prediction.py`."""

import pytest
import torch
from transformers import Qwen2Config

from depo_trl.distillation import LongPassMemory, PassPlan, forward_size, holds, plan_pass
from depo_trl.distillation.long_pass.memory import head_kept_output_share


MEMORY = LongPassMemory(held=10.0, working=30.0)


def test_the_whole_window_is_one_forward_when_it_fits_alone():
    assert forward_size(MEMORY, window_tokens=100, largest_group=40, smallest_forward=20, available_bytes=4000) == 100


def test_forwards_shrink_to_fit_beside_what_every_forward_holds():
    # 100 tokens x 40 bytes do not fit in 3000; held parts 100 x 10 leave 2000 for one forward's 30 per token
    assert forward_size(MEMORY, 100, largest_group=40, smallest_forward=20, available_bytes=3000) == 66
    assert holds(MEMORY, held_tokens=100, tokens_per_forward=66, available_bytes=3000)


def test_forwards_that_would_split_a_prompt_are_sized_to_be_recomputed():
    # Beside the held parts only 66 tokens fit, less than a prompt with its rollouts (70): a split prompt would be held
    # once per piece, so the forward is what fits alone (3000 / 40 = 75), to be recomputed
    assert forward_size(MEMORY, 100, largest_group=70, smallest_forward=20, available_bytes=3000) == 75
    # Nothing fits: the smallest forward still runs
    assert forward_size(MEMORY, 100, largest_group=70, smallest_forward=20, available_bytes=0) == 20


def test_recomputed_forwards_keep_their_backbones_output_beside_the_last_forward():
    # The last forward (30 tokens) held, the other 70 tokens' outputs at 2 bytes, one working set, the fixed part
    memory = LongPassMemory(held=10.0, working=30.0, fixed=100.0, recomputed=2.0)
    assert (
        memory.peak_bytes(PassPlan.RECOMPUTED, held_tokens=100, tokens_per_forward=30)
        == 30 * 10 + 70 * 2 + 30 * 30 + 100
    )
    assert memory.peak_bytes(PassPlan.HELD, held_tokens=100, tokens_per_forward=30) == 100 * 10 + 30 * 30 + 100
    # A forward sized to be recomputed fits beside the others' outputs: (3000 - 100 x 2) / (40 - 2) = 73 tokens, not
    # the 75 that fit with nothing beside them
    size = forward_size(memory, 100, largest_group=70, smallest_forward=20, available_bytes=3100)
    assert size == 73
    assert memory.peak_bytes(PassPlan.RECOMPUTED, 100, size) <= 3100 < memory.peak_bytes(PassPlan.RECOMPUTED, 100, 74)


PLAIN, CHECKPOINTED = LongPassMemory(held=20.0, working=10.0), LongPassMemory(held=5.0, working=20.0)


@pytest.mark.parametrize(
    ("available", "forwards", "checkpointing_model", "plain_model"),
    [
        # 100 x 20 + 50 x 10 fit: no layer checkpoints needed
        (3000, 2, PassPlan.WITHOUT_LAYER_CHECKPOINTS, PassPlan.WITHOUT_LAYER_CHECKPOINTS),
        # Only the checkpointed layers' inputs fit (100 x 5 + 50 x 20); a model without them recomputes
        (2000, 2, PassPlan.HELD, PassPlan.RECOMPUTED),
        (1000, 2, PassPlan.RECOMPUTED, PassPlan.RECOMPUTED),
        # A single forward is the last: never recomputed, and run as the model is configured
        (1000, 1, PassPlan.HELD, PassPlan.HELD),
    ],
)
def test_the_pass_runs_the_cheapest_way_that_fits(available, forwards, checkpointing_model, plain_model):
    assert plan_pass(PLAIN, CHECKPOINTED, 100, 50, forwards, available) == checkpointing_model
    assert plan_pass(PLAIN, None, 100, 50, forwards, available) == plain_model


def test_the_lm_head_gradient_is_set_aside_before_any_token():
    # The fused head's float32 weight gradient (and its gathered copy) takes 1000 bytes whatever the forward's length
    memory = LongPassMemory(held=10.0, working=30.0, fixed=1000.0)
    assert forward_size(memory, 100, largest_group=40, smallest_forward=20, available_bytes=5000) == 100
    assert forward_size(memory, 100, largest_group=40, smallest_forward=20, available_bytes=4000) == 66
    assert holds(memory, held_tokens=100, tokens_per_forward=66, available_bytes=4000)
    assert not holds(memory, held_tokens=100, tokens_per_forward=66, available_bytes=3000)


def test_holding_counts_every_copy_of_a_split_prompt():
    assert holds(MEMORY, held_tokens=100, tokens_per_forward=20, available_bytes=1600)
    assert not holds(MEMORY, held_tokens=140, tokens_per_forward=20, available_bytes=1600)


def test_memory_model_of_qwen_7b_with_checkpointing():
    config = Qwen2Config(
        hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
        vocab_size=152064,
    )  # fmt: skip
    memory = LongPassMemory.of_model(
        config, dtype_bytes=2, layer_checkpointing=True, rollouts_per_prompt=8, keys_repeated_per_head=False
    )
    # Held: each layer's input, the final norm's input and output and the head's input, exactly from the shapes
    assert memory.held == 28 * 3584 * 2 + 3 * 3584 * 2
    # A recomputed forward keeps the backbone's output for the head: on a CPU all of it, on a GPU the completions'
    # (8 x 1000 of 23,368 tokens): 0.37 GiB for the 7 other rows of a recipe window
    assert memory.recomputed == 3584 * 2
    scored = LongPassMemory.of_model(
        config, 2, layer_checkpointing=True, rollouts_per_prompt=8, keys_repeated_per_head=False,
        kept_output_share=8000 / 23368,
    )  # fmt: skip
    assert scored.held == memory.held and 0.36 < 7 * 23368 * scored.recomputed / 2**30 < 0.38
    # One packed row of the recipes (15360 + 8 x 1001 tokens) keeps 4.8 GiB of layer inputs for the backward
    assert 4.7 < 23368 * memory.held / 2**30 < 4.9
    without = LongPassMemory.of_model(
        config, 2, layer_checkpointing=False, rollouts_per_prompt=8, keys_repeated_per_head=False
    )
    assert without.held > 20 * memory.held  # every layer's activations: why the recipes checkpoint
    # The LM head's float32 weight gradient and its bf16 cast, whatever the tokens, and its logits tile of 4096 tokens
    # x 32768 vocabulary entries (256 MiB)
    assert memory.fixed == without.fixed == 152064 * 3584 * (4 + 2)
    assert memory.working_bytes(23368) - 23368 * memory.working == 4096 * 32768 * 2
    # Under ZeRO-3 (the recipes') the head's bf16 weight is gathered beside them: 4.4 GB; a frozen head (LoRA): that
    settings = {"layer_checkpointing": True, "rollouts_per_prompt": 8, "keys_repeated_per_head": False}
    sharded = LongPassMemory.of_model(config, 2, gathered_head=True, **settings)
    assert sharded.fixed == 152064 * 3584 * (4 + 2 + 2) and 4.3 < sharded.fixed / 1e9 < 4.4
    assert LongPassMemory.of_model(config, 2, trainable_head=False, **settings).fixed == 0
    assert LongPassMemory.of_model(config, 2, trainable_head=False, gathered_head=True, **settings).fixed == (
        152064 * 3584 * 2
    )


def test_a_sequence_parallel_window_is_planned_for_what_one_rank_holds(monkeypatch):
    """The plan decides from a rank's shards: its held tokens and a forward's shard, not the whole row."""
    import torch
    from accelerate import Accelerator
    from transformers import Qwen2Config

    from depo_trl.distillation import LongPass, Rollouts
    from depo_trl.distillation.long_pass import runner

    decided = []
    monkeypatch.setattr(runner, "plan_pass", lambda *sizes: decided.append(sizes) or runner.PassPlan.HELD)
    monkeypatch.setattr(runner, "available_memory", lambda device: 10 * 2**30)
    group = type("Group", (), {"size": 4})()  # what `plan` reads of a sequence-parallel group
    long_pass = LongPass(Accelerator(cpu=True), None, 0, True, None, 0.8, 2, sequence_parallel=group)
    model = torch.nn.Module()
    model.config = Qwen2Config(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4)
    model.dtype = torch.float32
    model.get_output_embeddings = lambda: torch.nn.Linear(32, 64)
    prompt = torch.arange(1000)
    completions = torch.ones((2, 100), dtype=torch.long)
    rollouts = Rollouts([prompt, prompt], completions, torch.ones_like(completions), torch.ones_like(completions))
    plan = long_pass.plan(model, rollouts, torch.arange(2))
    [(plain, checkpointed, held, tokens_per_rank, count, available)] = decided
    row = 1000 + 2 * 101 - 1
    assert plan.tokens_per_forward == row and tokens_per_rank == plan.tokens_per_rank == -(-row // 4)
    assert held == plan.held_tokens == -(-row // 4) and count == 1


def test_the_head_keeps_the_scored_outputs_where_it_runs_its_triton_kernel(monkeypatch):
    import trl.kernels.chunked_logprob as kernels

    assert head_kept_output_share(torch.device("cpu"), scored_tokens=8000, row_tokens=23368) == 1.0
    # A process with nothing to distil keeps nothing, so the share agreed across processes is the others'
    assert head_kept_output_share(torch.device("cpu"), scored_tokens=0, row_tokens=0) == 0.0
    monkeypatch.setattr(kernels, "_TRITON_AVAILABLE", True)
    assert head_kept_output_share(torch.device("cuda"), scored_tokens=8000, row_tokens=23368) == 8000 / 23368
    assert head_kept_output_share(torch.device("cpu"), scored_tokens=8000, row_tokens=23368) == 1.0
    monkeypatch.setattr(kernels, "_TRITON_AVAILABLE", False)
    assert head_kept_output_share(torch.device("cuda"), scored_tokens=8000, row_tokens=23368) == 1.0
