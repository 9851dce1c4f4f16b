"""The rows `recipes/tiny/` trains on; the model is the toy world's shipped warm start (`shipped_warm_start/`).

make tiny-assets        # regenerates the copy shipped in recipes/tiny/assets
"""

import json
import os

from .world import generate_rows


def write_tiny_assets(output_dir: str, num_rows: int = 64, seed: int = 0) -> None:
    """Write the toy rows `recipes/tiny/` trains on to `<output_dir>/toy_world.jsonl`. `make tiny-assets` regenerates
    the copy shipped in the repository."""
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "toy_world.jsonl"), "w", encoding="utf-8") as handle:
        for row in generate_rows(num_rows, seed):
            handle.write(json.dumps(row) + "\n")
