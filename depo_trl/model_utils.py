"""Loading tokenizers the way users' checkpoints need (the tiny models for tests and the toy world are in
`depo_trl.models.tiny`)."""

import json

from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast
from transformers.utils import cached_file


# `tokenizer_class` values written for tokenizers saved from a `tokenizers` object rather than a model-specific class.
_GENERIC_TOKENIZER_CLASSES = {"PreTrainedTokenizerFast", "TokenizersBackend"}


def load_tokenizer(name_or_path: str, **kwargs) -> PreTrainedTokenizerBase:
    """Load a tokenizer from the Hub or a local folder, honouring a generic saved tokenizer.

    `AutoTokenizer` picks the tokenizer class from the model's `config.json` (e.g. `Qwen2Tokenizer` for `qwen2`) even
    when the folder holds a different, generic tokenizer (such as the word-level ones of the toy world), which then
    tokenizes text into nothing. When `tokenizer_config.json` names a generic class, load exactly that tokenizer.
    """
    config_file = cached_file(
        name_or_path,
        "tokenizer_config.json",
        revision=kwargs.get("revision"),
        _raise_exceptions_for_missing_entries=False,
        _raise_exceptions_for_connection_errors=False,
    )
    tokenizer_class = None
    if config_file is not None:
        with open(config_file, encoding="utf-8") as handle:
            tokenizer_class = json.load(handle).get("tokenizer_class")
    if tokenizer_class in _GENERIC_TOKENIZER_CLASSES:
        return PreTrainedTokenizerFast.from_pretrained(name_or_path, **kwargs)
    return AutoTokenizer.from_pretrained(name_or_path, **kwargs)
