"""One colocated DePO run for tests/vllm_engine/test_colocate.py:
`python colocated_run.py RESULT.json DEPO-TRAIN-ARGS...`.

Trains through the entry point's own `main`, with vLLM colocated in this process, then scores a fixed completion with
the engine: as training left it (synced before step 2's rollouts with the weights after step 1, which checkpoint-1
holds), and again after reloading the original weights, which measures the engine's bfloat16 rounding against the same
weights in float32.
"""

import json
import os
import sys

import torch
from safetensors.torch import load_file
from vllm import SamplingParams

from depo_trl.scripts.depo import main
from depo_trl.scripts.recipe import parse_recipe
from depo_trl.vllm_worker import reload_trained_weights
from tests.helpers import step_logs
from tests.vllm_engine.scoring import hf_log_probs, reference_sequence


def engine_log_probs(llm, sequence: list[int], prompt_length: int) -> list[float]:
    output = llm.generate(
        [{"prompt_token_ids": sequence}], SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False
    )[0]
    return [output.prompt_logprobs[i][sequence[i]].logprob for i in range(prompt_length, len(sequence))]


def run() -> None:
    result_path, arguments = sys.argv[1], sys.argv[2:]
    script_args, training_args, model_args, recipe_path = parse_recipe(arguments)
    trainer = main(script_args, training_args, model_args, recipe_path)
    model_dir, run_dir = model_args.model_name_or_path, training_args.output_dir
    llm = trainer.vllm_generation.llm
    sequence, prompt_length = reference_sequence(model_dir)
    served_trained = engine_log_probs(llm, sequence, prompt_length)
    original = load_file(os.path.join(model_dir, "model.safetensors"))
    llm.collective_rpc(reload_trained_weights, kwargs={"weights_iterator": iter(original.items())})
    llm.reset_prefix_cache()
    result = {
        "served_trained": served_trained,
        "served_original": engine_log_probs(llm, sequence, prompt_length),
        "trained": hf_log_probs(os.path.join(run_dir, "checkpoint-1"), sequence, prompt_length),
        "original": hf_log_probs(model_dir, sequence, prompt_length),
        "trained_bf16": hf_log_probs(os.path.join(run_dir, "checkpoint-1"), sequence, prompt_length, torch.bfloat16),
        "original_bf16": hf_log_probs(model_dir, sequence, prompt_length, torch.bfloat16),
        "logs": step_logs(run_dir),
    }
    with open(result_path, "w") as handle:
        json.dump(result, handle)


if __name__ == "__main__":
    run()
