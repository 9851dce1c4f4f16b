"""The assets `recipes/tiny/` runs on: a randomly initialised tiny Qwen2 with the toy-world tokenizer, and toy rows.

make tiny-assets        # regenerates the copy shipped in recipes/tiny/assets
"""

import json
import os

from ..model_utils import build_tiny_qwen2, save_model_and_tokenizer
from .world import build_toy_tokenizer, generate_rows


def write_tiny_assets(output_dir: str, num_rows: int = 64, seed: int = 0) -> None:
    """The model and data `recipes/tiny/` runs on: a randomly initialised tiny Qwen2 with the toy tokenizer in
    `model/`, and toy rows in `toy_world.jsonl`. `make tiny-assets` regenerates the copy shipped in the repository."""
    tokenizer = build_toy_tokenizer()
    model = build_tiny_qwen2(tokenizer, hidden_size=64, num_hidden_layers=2, max_position_embeddings=1024, seed=seed)
    model_dir = os.path.join(output_dir, "model")
    save_model_and_tokenizer(model, tokenizer, model_dir)
    with open(os.path.join(output_dir, "toy_world.jsonl"), "w", encoding="utf-8") as handle:
        for row in generate_rows(num_rows, seed):
            handle.write(json.dumps(row) + "\n")
