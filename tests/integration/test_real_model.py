"""A real pretrained model through the whole pipeline on a CPU: SmolLM2-135M-Instruct from the package registry,
real MuSiQue rows, its real chat template; build, train (DePO, bounded long pass), evaluate."""

import importlib.util
import json
import os

import pytest
from transformers import AutoModelForCausalLM

from depo_trl.data.build import main as build_main
from depo_trl.evaluation.__main__ import main as evaluation_main
from depo_trl.model_utils import load_tokenizer
from depo_trl.models import smollm2
from depo_trl.scripts.depo import main as train_main
from depo_trl.scripts.recipe import parse_recipe

from ..helpers import ROOT


FIXTURES = os.path.join(ROOT, "tests", "fixtures")
SHORT_BUDGET, LONG_BUDGET = 512, 1024

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec(smollm2.PACKAGE) is None or importlib.util.find_spec("gguf") is None,
        reason=f"SmolLM2 is not installed ({smollm2.INSTALL}; `make install` does it)",
    ),
]


@pytest.fixture(scope="module")
def smollm2_dir(tmp_path_factory):
    return smollm2.convert(str(tmp_path_factory.mktemp("smollm2")))


@pytest.fixture(scope="module")
def built_data(smollm2_dir, tmp_path_factory):
    output = tmp_path_factory.mktemp("data") / "musique_depo"
    build_main(
        ["--source", "musique", "--input", os.path.join(FIXTURES, "musique_sample.jsonl"), "--tokenizer",
         smollm2_dir, "--short-budget", str(SHORT_BUDGET), "--long-budget", str(LONG_BUDGET), "--output-dir",
         str(output), "--num-samples", "6", "--no-progress"]
    )  # fmt: skip
    return str(output)


def test_the_converted_checkpoint_loads_like_a_hub_model(smollm2_dir):
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir)
    tokenizer = load_tokenizer(smollm2_dir)
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 30
    assert model.config.vocab_size == len(tokenizer) == 49152
    # A real BPE tokenizer: ordinary words are single tokens, nothing is unknown
    ids = tokenizer("Paris is the capital of France.", add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids and tokenizer.decode(ids) == "Paris is the capital of France."
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Question: Who wrote Hamlet?"}], tokenize=False, add_generation_prompt=True
    )
    assert rendered.startswith("<|im_start|>system\n") and rendered.endswith("<|im_start|>assistant\n")
    assert tokenizer.eos_token == "<|im_end|>"


def test_the_builder_makes_real_rows_within_the_budgets(built_data, smollm2_dir):
    from datasets import load_from_disk

    rows = load_from_disk(built_data)["train"]
    assert len(rows) >= 5
    tokenizer = load_tokenizer(smollm2_dir)
    for row in rows:
        for key, budget in (("prompt", SHORT_BUDGET), ("long_prompt", LONG_BUDGET)):
            rendered = tokenizer.apply_chat_template(row[key], tokenize=False, add_generation_prompt=True)
            assert "Please read the following text" in rendered and rendered.count("<|im_start|>") == 3
            assert len(tokenizer(rendered, add_special_tokens=False)["input_ids"]) <= budget
        assert row["long_tokens"] > row["short_tokens"]


def test_two_depo_steps_then_a_greedy_evaluation(smollm2_dir, built_data, tmp_path):
    recipe = os.path.join(ROOT, "recipes", "smollm2-135m-instruct", "depo.yaml")
    run = tmp_path / "run"
    trainer = train_main(
        *parse_recipe(
            ["--config", recipe, "--model_name_or_path", smollm2_dir, "--dataset_name", built_data,
             "--output_dir", str(run), "--max_steps", "2", "--max_long_prompt_length", str(LONG_BUDGET),
             "--distillation_forward_tokens", "1100", "--num_generations", "2", "--per_device_train_batch_size", "4",
             "--max_completion_length", "16"]
        )
    )  # fmt: skip
    steps = [log for log in trainer.state.log_history if "loss" in log]
    assert len(steps) == 2 and all("depo/kd_fraction" in log and log["depo/long_prompt_tokens"] > 0 for log in steps)
    assert trainer.args.distillation_forward_tokens == 1100

    evaluation_main(
        ["--model", str(run), "--tasks", "longbench_hotpotqa", "--backend", "hf", "--limit", "3",
         "--max-length", "4096", "--max-new-tokens", "16", "--data-dir", os.path.join(FIXTURES, "longbench"),
         "--output-dir", str(tmp_path / "eval")]
    )  # fmt: skip
    with open(tmp_path / "eval" / "run" / "longbench_hotpotqa.jsonl") as handle:
        predictions = [json.loads(line) for line in handle]
    assert len(predictions) == 3 and all(prediction["raw"].strip() for prediction in predictions)
