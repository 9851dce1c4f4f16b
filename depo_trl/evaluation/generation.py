"""Batched generation with transformers `generate` (CPU or GPU): the evaluation harness's hf backend, also used by the
toy world."""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase


@contextmanager
def model_defaults_ignored(model: PreTrainedModel) -> Iterator[None]:
    """Hide the model's saved generation config (e.g. Qwen2.5-Instruct's temperature 0.7, top-p 0.8, repetition
    penalty 1.05) for the duration of the block, keeping only its special token ids.

    `generate` fills every setting a call leaves unset from the saved config, so greedy decoding asked for with
    `do_sample=False` would still apply its repetition penalty, and sampling its top-p; without it, decoding is exactly
    what the call says.
    """
    saved = model.generation_config
    model.generation_config = GenerationConfig(
        bos_token_id=saved.bos_token_id, eos_token_id=saved.eos_token_id, pad_token_id=saved.pad_token_id
    )
    try:
        yield
    finally:
        model.generation_config = saved


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

    Prompts are batched by length so that little compute goes to padding. Greedy (the argmax at every step) unless
    `do_sample`, then plain sampling at `temperature` (no top-k, top-p or penalties), whatever the model's saved
    generation config says.
    """
    texts = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    encoded = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    order = sorted(range(len(encoded)), key=lambda index: len(encoded[index]))
    completions: list[str] = [""] * len(encoded)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    # The tokenizer's end of turn, and the saved config's end-of-sequence ids (Qwen2.5 lists <|endoftext|> too)
    saved_eos = model.generation_config.eos_token_id
    saved_eos = [] if saved_eos is None else [saved_eos] if isinstance(saved_eos, int) else list(saved_eos)
    eos_token_ids = list(dict.fromkeys([tokenizer.eos_token_id, *saved_eos]))
    device = next(model.parameters()).device
    sampling = {"temperature": temperature, "top_k": 0, "top_p": 1.0} if do_sample else {}
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
            with torch.no_grad(), model_defaults_ignored(model):
                output = model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention_mask.to(device),
                    max_new_tokens=max_new_tokens,
                    do_sample=do_sample,
                    pad_token_id=pad_id,
                    eos_token_id=eos_token_ids,
                    **sampling,
                )
            decoded = tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)
            for index, text in zip(indices, decoded):
                completions[index] = text
            progress.update(len(indices))
    model.train(was_training)
    return completions
