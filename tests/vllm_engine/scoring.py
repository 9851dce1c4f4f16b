"""The trainer's side of the served-weights checks: a fixed completion and its log-probabilities under a checkpoint."""

import torch
from transformers import AutoModelForCausalLM

from depo_trl.model_utils import load_tokenizer


def reference_sequence(model_dir: str) -> tuple[list[int], int]:
    """Token ids of a fixed chat exchange rendered with the model's template, and where the answer starts."""
    tokenizer = load_tokenizer(model_dir)
    question = [{"role": "user", "content": "Which river flows through Paris?"}]
    answer = [{"role": "assistant", "content": "The Seine flows through Paris, Therefore, the answer is the Seine."}]
    prompt = tokenizer.apply_chat_template(question, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(question + answer, tokenize=False)
    return tokenizer(full, add_special_tokens=False)["input_ids"], len(
        tokenizer(prompt, add_special_tokens=False)["input_ids"]
    )


def hf_log_probs(model_dir, sequence: list[int], prompt_length: int, dtype=torch.float32) -> list[float]:
    """Log-probabilities of `sequence[prompt_length:]` under the checkpoint in `model_dir` (transformers), its weights
    in `dtype`."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    with torch.no_grad():
        logits = model(torch.tensor([sequence])).logits[0, prompt_length - 1 : -1].float()
    targets = torch.tensor(sequence[prompt_length:])
    return torch.log_softmax(logits, -1).gather(-1, targets[:, None])[:, 0].tolist()
