"""The configurations real runs take and the simple tests do not: evaluation during training, several optimizer steps
per generation batch, sliding-window models, sampling generation configs, vLLM's importance-sampling correction."""

import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM
from trl import GRPOTrainer

from depo_trl.evaluation.generation import generate_completions
from depo_trl.evaluation.runner import EvalSettings
from depo_trl.evaluation.tasks import truncate_middle
from depo_trl.model_utils import load_tokenizer
from depo_trl.models.tiny import build_tiny_qwen2
from depo_trl.rollout_context import rollout_rows

from ..helpers import (
    NUM_GENERATIONS,
    ROOT,
    WARM_START,
    accumulated_gradients,
    generation_batch,
    largest_difference,
    make_rows,
    make_trainer,
    saved_weights,
)


def restore_rng_around(function):
    """Wrap `function` so that the global random states are the same after it as before it."""

    def wrapped(*args, **kwargs):
        states = torch.get_rng_state(), random.getstate(), np.random.get_state()
        try:
            return function(*args, **kwargs)
        finally:
            torch.set_rng_state(states[0])
            random.setstate(states[1])
            np.random.set_state(states[2])

    return wrapped


@pytest.mark.parametrize("distillation", ["kd", "iw"])
@pytest.mark.parametrize(
    "schedule",
    [{"steps_per_generation": 2, "gradient_accumulation_steps": 1}, {"num_iterations": 2}],
    ids=["steps_per_generation-2-ga-1", "num_iterations-2"],
)
def test_evaluation_between_steps_leaves_training_unchanged(tiny_model_dir, tmp_path, distillation, schedule):
    # Two prompts per training micro-batch, one per evaluation batch: a state taken from the evaluation batch
    # would be the wrong size as well as the wrong rollouts.
    rows = make_rows(num_rows=8)
    train, evaluation = Dataset.from_list(rows[:6]), Dataset.from_list(rows[6:])
    common = {
        "distillation": distillation,
        "per_device_train_batch_size": 2 * NUM_GENERATIONS,
        "per_device_eval_batch_size": NUM_GENERATIONS,
        "max_steps": 4,
        **schedule,
    }
    plain = make_trainer(tiny_model_dir, train, tmp_path / "plain", **common)
    plain.train()
    evaluated = make_trainer(
        tiny_model_dir,
        train,
        tmp_path / "evaluated",
        eval_dataset=evaluation,
        eval_strategy="steps",
        eval_steps=1,
        **common,
    )
    evaluated.evaluate = restore_rng_around(evaluated.evaluate)
    evaluated.train()
    assert sum("eval_loss" in log for log in evaluated.state.log_history) == 4
    for (name, trained), (_, reference) in zip(
        evaluated.model.named_parameters(), plain.model.named_parameters(), strict=True
    ):
        assert torch.equal(trained, reference), name


def sliding_window_model(tokenizer):
    """Layer 0 attends to everything, layer 1 to the last 4 positions: a window far shorter than the prompts."""
    model = build_tiny_qwen2(tokenizer, hidden_size=32, num_hidden_layers=2)
    config = model.config
    config.use_sliding_window, config.sliding_window, config.max_window_layers = True, 4, 1
    config.layer_types = ["full_attention", "sliding_attention"]
    model = type(model)(config)
    model.config._attn_implementation = "sdpa"
    return model


@pytest.mark.parametrize("distillation", ["kd", "iw"])
def test_shared_prefix_matches_the_naive_pass_on_a_sliding_window_model(tiny_model_dir, tmp_path, distillation):
    dataset = Dataset.from_list(make_rows(num_rows=4, num_distractors=4))
    tokenizer = load_tokenizer(tiny_model_dir)
    torch.manual_seed(0)
    model = sliding_window_model(tokenizer)
    common = {"distillation": distillation, "per_device_train_batch_size": 8, "optim": "sgd"}
    naive = make_trainer(tiny_model_dir, dataset, tmp_path / "naive", model=model, share_long_prefix=False, **common)
    batch = generation_batch(naive, dataset, num_prompts=2)
    long_prompt_ids = batch["distillation"][0].rollouts.long_prompt_ids
    assert min(len(ids) for ids in long_prompt_ids) > 4 * model.config.sliding_window
    reference = accumulated_gradients(naive, [batch])

    shared_model = type(model)(model.config)
    shared_model.load_state_dict(model.state_dict())
    shared = make_trainer(tiny_model_dir, dataset, tmp_path / "shared", model=shared_model, **common)
    assert shared.long_pass.share_prefix
    gradients = accumulated_gradients(shared, [dict(batch)])
    for name, grad in reference.items():
        torch.testing.assert_close(gradients[name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.fixture
def sampling_model_dir(tmp_path, tiny_tokenizer):
    """A tiny model whose saved generation config samples, as Qwen2.5-Instruct's does."""
    model = build_tiny_qwen2(tiny_tokenizer, hidden_size=32, num_hidden_layers=2, seed=3)
    model.generation_config.update(do_sample=True, temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.05)
    model.save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    return str(tmp_path)


def test_evaluation_decodes_greedily_whatever_the_generation_config(sampling_model_dir):
    model = AutoModelForCausalLM.from_pretrained(sampling_model_dir)
    assert model.generation_config.do_sample
    tokenizer = load_tokenizer(sampling_model_dir)
    conversations = [row["prompt"] for row in make_rows(num_rows=6)]
    runs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        runs.append(generate_completions(model, tokenizer, conversations, max_new_tokens=8, show_progress=False))
    assert runs[0] == runs[1]
    # Greedy means the argmax of the raw logits at every step, decoded one prompt at a time by hand
    for conversation, completion in zip(conversations, runs[0]):
        ids = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, return_dict=False)
        ids = torch.tensor([ids])
        generated = []
        with torch.no_grad():
            for _ in range(8):
                next_id = int(model(ids).logits[0, -1].argmax())
                if next_id == tokenizer.eos_token_id:
                    break
                generated.append(next_id)
                ids = torch.cat([ids, torch.tensor([[next_id]])], dim=1)
        assert completion == tokenizer.decode(generated, skip_special_tokens=True)
    assert model.generation_config.do_sample  # the model's own config is left as it was


def test_a_max_length_that_leaves_no_room_for_the_prompt_is_rejected(tiny_tokenizer):
    with pytest.raises(ValueError, match="--max-length 512 .* --max-new-tokens 1024"):
        EvalSettings(tasks=["hotpotqa"], max_length=512, max_new_tokens=1024)
    with pytest.raises(ValueError, match="--max-length 1024 .*1024 new tokens, the default"):
        EvalSettings(tasks=["hotpotqa"], max_length=1024)  # the template's default answer budget is 1024
    EvalSettings(tasks=["hotpotqa"], max_length=512, prompt_style="longbench")  # LongBench answers are short
    with pytest.raises(ValueError, match="at least one token"):
        truncate_middle("alba was born in rome .", tiny_tokenizer, 0)
    text = " ".join(["alba was born in rome ."] * 20)
    truncated, length = truncate_middle(text, tiny_tokenizer, 10)
    assert length == 10 and len(tiny_tokenizer(truncated)["input_ids"]) == 10


@pytest.mark.slow
def test_depo_train_console_script_runs_the_tiny_recipe(tmp_path):
    script = os.path.join(os.path.dirname(sys.executable), "depo-train")
    assert os.path.isfile(script), "the package is not installed with its console scripts (pip install -e .)"
    recipe = os.path.join(ROOT, "recipes", "tiny", "depo.yaml")
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    command = [script, "--config", recipe, "--output_dir", str(tmp_path / "run"), "--max_steps", "1"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=environment)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "run" / "model.safetensors").is_file()
    # The warm start earns reward, so the one step moved the weights it saved
    assert largest_difference(saved_weights(tmp_path / "run"), saved_weights(WARM_START)) > 0


def test_behaviour_pass_runs_without_gradient_checkpointing(tiny_model_dir, tiny_dataset, tmp_path):
    trainer = make_trainer(
        tiny_model_dir,
        tiny_dataset,
        tmp_path,
        distillation="iw",
        gradient_checkpointing=True,
        gradient_checkpointing_kwargs={"use_reentrant": True},
    )
    model = trainer.model
    model.gradient_checkpointing_enable(trainer.args.gradient_checkpointing_kwargs)  # as `train()` does
    seen = []
    forward = model.forward

    def recording_forward(*args, **kwargs):
        if not torch.is_grad_enabled():
            seen.append(model.is_gradient_checkpointing)
        return forward(*args, **kwargs)

    model.forward = recording_forward
    trainer._behaviour_logps(generation_batch(trainer, tiny_dataset, num_prompts=1))
    assert seen and not any(seen)
    assert model.is_gradient_checkpointing  # restored afterwards


def proxy_and_long_term_gradients(trainer, batch):
    """Gradients of the proxy term alone (distillation_coef 0) and of the long-context term alone."""
    trainer.args.distillation_coef = 0.0
    proxy = accumulated_gradients(trainer, [batch])
    trainer.args.distillation_coef = 1.0
    full = accumulated_gradients(trainer, [batch])
    return proxy, {name: full[name] - proxy[name] for name in full}


@pytest.mark.parametrize("ratio", [0.0, 0.5])
def test_iw_term_is_corrected_by_vllm_importance_sampling_ratio(
    tiny_model_dir, tiny_dataset, tmp_path, monkeypatch, ratio
):
    gradients = proxy_and_long_term_gradients
    plain = make_trainer(tiny_model_dir, tiny_dataset, tmp_path, distillation="iw")
    plain_batch = generation_batch(plain, tiny_dataset, num_prompts=2)
    proxy, long_term = gradients(plain, plain_batch)

    # The same rollouts as if vLLM had sampled them and TRL's correction gave every token the ratio `ratio`
    generate = GRPOTrainer._generate_and_score_completions

    def with_ratio(self, inputs):
        output = generate(self, inputs)
        output["importance_sampling_ratio"] = torch.full_like(output["completion_mask"], ratio, dtype=torch.float32)
        return output

    monkeypatch.setattr(GRPOTrainer, "_generate_and_score_completions", with_ratio)
    corrected = make_trainer(tiny_model_dir, tiny_dataset, tmp_path, distillation="iw")
    batch = generation_batch(corrected, tiny_dataset, num_prompts=2)
    corrected.use_vllm = corrected.vllm_importance_sampling_correction = True  # TRL's proxy loss reads the ratio
    corrected_proxy, corrected_long_term = gradients(corrected, batch)
    assert torch.equal(batch["completion_ids"], plain_batch["completion_ids"])
    for name in proxy:
        torch.testing.assert_close(corrected_proxy[name], ratio * proxy[name], rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(corrected_long_term[name], ratio * long_term[name], rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("threshold", [-1e9, 0.0], ids=["drops-negative-advantages", "no-sampler-drift"])
def test_iw_term_applies_trl_off_policy_mask(tiny_model_dir, tiny_dataset, tmp_path, threshold):
    """TRL's mask keeps a rollout with a negative advantage only if the sampler's KL from pi_old is at most the
    threshold. Without vLLM the sampler is pi_old (KL 0): a threshold below 0 drops every negative-advantage rollout
    (for the IW term, the same as a zero advantage); a threshold of 0 keeps all, though the long-context policy is far
    from the short-context sampler."""
    masked = make_trainer(
        tiny_model_dir, tiny_dataset, tmp_path, distillation="iw", off_policy_mask_threshold=threshold
    )
    batch = generation_batch(masked, tiny_dataset, num_prompts=2)
    assert (batch["advantages"] < 0).any()
    _, masked_long_term = proxy_and_long_term_gradients(masked, batch)
    reference = make_trainer(tiny_model_dir, tiny_dataset, tmp_path, distillation="iw")
    reference_batch = generation_batch(reference, tiny_dataset, num_prompts=2)
    assert torch.equal(reference_batch["completion_ids"], batch["completion_ids"])
    if threshold < 0:
        term = reference_batch["distillation"][0]
        term.advantages = term.advantages.clamp(min=0.0)
    _, reference_long_term = proxy_and_long_term_gradients(reference, reference_batch)
    for name, gradient in reference_long_term.items():
        torch.testing.assert_close(masked_long_term[name], gradient, rtol=1e-4, atol=1e-7)


def test_mixed_arm_evaluates_on_the_short_prompt(tiny_dataset):
    rows = [row for row in tiny_dataset for _ in range(NUM_GENERATIONS)]
    assert rollout_rows(rows, "mixed", training=False, seed=0, step=0) is rows
    flipped = rollout_rows(rows, "mixed", training=True, seed=0, step=0)
    assert any(rollout["prompt"] == row["long_prompt"] for rollout, row in zip(flipped, rows))


def test_moe_model_requesting_router_logits_runs_the_shared_long_pass(tiny_model_dir, tiny_dataset, tmp_path):
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    tokenizer = load_tokenizer(tiny_model_dir)
    config = Qwen3MoeConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, num_experts=4, num_experts_per_tok=2,
        output_router_logits=True, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    trainer = make_trainer(tiny_model_dir, tiny_dataset, tmp_path, model=Qwen3MoeForCausalLM(config))
    assert trainer.long_pass.share_prefix
    # The fused head's load-balancing loss would read the placeholder attention mask and fail
    gradients = accumulated_gradients(trainer, [generation_batch(trainer, tiny_dataset, num_prompts=2)])
    assert gradients and all(torch.isfinite(gradient).all() for gradient in gradients.values())
