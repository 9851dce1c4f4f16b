"""Generation backends behind one interface: vLLM's offline `LLM` (GPU) and transformers `generate` (CPU or GPU)."""

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerBase

from .generation import generate_completions
from .tasks import GREEDY, Decoding


class HFBackend:
    """transformers `generate`, batched by prompt length, with a progress bar: greedy, or plain sampling seeded per
    call (the same prompts in the same order give the same answers)."""

    def __init__(
        self, model_name_or_path: str, tokenizer: PreTrainedTokenizerBase, batch_size: int = 8, dtype: str = "auto"
    ):
        from transformers import AutoModelForCausalLM

        self.tokenizer = tokenizer
        self.model = AutoModelForCausalLM.from_pretrained(model_name_or_path, dtype=dtype)
        if torch.cuda.is_available():
            self.model.to("cuda")
        self.batch_size = batch_size

    def generate(
        self,
        conversations: Sequence[list[dict[str, str]]],
        max_new_tokens: int,
        desc: str,
        decoding: Decoding = GREEDY,
    ) -> list[str]:
        if decoding.do_sample:
            torch.manual_seed(decoding.seed)  # every device's generator
        return generate_completions(
            self.model,
            self.tokenizer,
            conversations,
            max_new_tokens,
            self.batch_size,
            do_sample=decoding.do_sample,
            temperature=decoding.temperature,
            desc=desc,
        )


class VLLMBackend:
    """vLLM's offline engine, greedy or sampling with a seed per request; `max_model_len` covers the longest prompt
    plus the answer."""

    def __init__(self, model_name_or_path: str, max_model_len: int, tensor_parallel_size: int = 1):
        try:
            from vllm import LLM
        except ImportError:
            raise ImportError(
                "--backend vllm needs vLLM: pip install -e '.[vllm]' on a GPU machine, or use --backend hf."
            ) from None
        self.llm = LLM(
            model=model_name_or_path,
            max_model_len=max_model_len,
            tensor_parallel_size=tensor_parallel_size,
            enable_prefix_caching=True,
            generation_config="vllm",  # the sampling parameters below, not the model's saved defaults
        )

    def generate(
        self,
        conversations: Sequence[list[dict[str, str]]],
        max_new_tokens: int,
        desc: str,
        decoding: Decoding = GREEDY,
    ) -> list[str]:
        from vllm import SamplingParams

        seed = decoding.seed if decoding.do_sample else None
        params = SamplingParams(temperature=decoding.temperature, seed=seed, max_tokens=max_new_tokens)
        outputs = self.llm.chat(list(conversations), params, use_tqdm=True)
        return [output.outputs[0].text for output in outputs]


def make_backend(
    name: str, model_name_or_path: str, tokenizer: PreTrainedTokenizerBase, max_length: int, batch_size: int = 8
):
    """The generation backend `name` for a model; the hf backend reuses the tokenizer the harness loaded."""
    if name == "hf":
        return HFBackend(model_name_or_path, tokenizer, batch_size=batch_size)
    if name == "vllm":
        return VLLMBackend(model_name_or_path, max_model_len=max_length)
    raise ValueError(f"Unknown backend {name!r}: use 'vllm' (GPU) or 'hf'.")
