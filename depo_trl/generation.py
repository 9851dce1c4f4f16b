"""Batched generation with transformers `generate` (CPU or GPU), shared by the evaluation harness and the toy world."""

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase


def generate_completions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[list[dict[str, str]]],
    max_new_tokens: int = 64,
    batch_size: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    show_progress: bool = True,
    desc: str = "Generating",
) -> list[str]:
    """Decode one completion per conversation (chat template applied, generation prompt added), in input order.

    Prompts are batched by length so that little compute goes to padding; greedy unless `do_sample`.
    """
    texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    encoded = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    order = sorted(range(len(encoded)), key=lambda index: len(encoded[index]))
    completions: list[str] = [""] * len(encoded)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    sampling = {"do_sample": True, "temperature": temperature, "top_k": 0, "top_p": 1.0} if do_sample else {}
    was_training = model.training
    model.eval()
    with tqdm(total=len(order), desc=desc, unit="prompt", disable=not show_progress) as progress:
        for start in range(0, len(order), batch_size):
            indices = order[start : start + batch_size]
            width = max(len(encoded[index]) for index in indices)
            input_ids = torch.full((len(indices), width), pad_id, dtype=torch.long)
            attention_mask = torch.zeros((len(indices), width), dtype=torch.long)
            for row, index in enumerate(indices):  # left padding: every prompt ends where generation starts
                ids = encoded[index]
                input_ids[row, width - len(ids) :] = torch.tensor(ids)
                attention_mask[row, width - len(ids) :] = 1
            with torch.no_grad():
                output = model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention_mask.to(device),
                    max_new_tokens=max_new_tokens,
                    pad_token_id=pad_id,
                    eos_token_id=tokenizer.eos_token_id,
                    **sampling,
                )
            decoded = tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)
            for index, text in zip(indices, decoded):
                completions[index] = text
            progress.update(len(indices))
    model.train(was_training)
    return completions
