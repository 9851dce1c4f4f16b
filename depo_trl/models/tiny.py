"""Tiny local models for tests, the tiny recipes' data and the toy world: nothing here downloads. Tokenizers are
trained locally with `tokenizers`, models are built from a config.
"""

import os
from collections.abc import Iterable

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM


# ChatML, as used by Qwen2.5: the tiny models speak the same format as the real ones.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN = "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"
SPECIAL_TOKENS = [PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN]


def build_word_level_tokenizer(texts: Iterable[str], chat_template: str = CHATML_TEMPLATE) -> PreTrainedTokenizerFast:
    """Train a word-level tokenizer on `texts` (words and punctuation marks become tokens), with a ChatML template.

    Words not seen in `texts` map to `<unk>`; decoding joins tokens with spaces.
    """
    tokenizer = Tokenizer(models.WordLevel(unk_token=UNK_TOKEN))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator(texts, trainer=trainers.WordLevelTrainer(special_tokens=SPECIAL_TOKENS))
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token=UNK_TOKEN,
        pad_token=PAD_TOKEN,
        eos_token=EOS_TOKEN,
        additional_special_tokens=[BOS_TOKEN],
        model_max_length=1 << 20,
    )
    fast.chat_template = chat_template
    return fast


def build_tiny_qwen2(
    tokenizer: PreTrainedTokenizerBase,
    hidden_size: int = 32,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 4096,
    seed: int = 0,
) -> Qwen2ForCausalLM:
    """A randomly initialised Qwen2-architecture causal LM sized for a CPU, matching `tokenizer`'s vocabulary."""
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.convert_tokens_to_ids(BOS_TOKEN),
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def save_model_and_tokenizer(model, tokenizer: PreTrainedTokenizerBase, output_dir: str | os.PathLike) -> str:
    """Save both into `output_dir` so that `load_tokenizer` and `from_pretrained` load them back."""
    output_dir = os.fspath(output_dir)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir
