"""The toy world's rows the tiny recipes train on (`depo_trl/toy/assets.py`, `make tiny-assets`): the shipped file is
what its generator writes."""

import json
import os

from depo_trl.toy.assets import write_tiny_assets
from depo_trl.toy.world import generate_rows

from ..helpers import ROOT


SHIPPED = os.path.join(ROOT, "recipes", "tiny", "assets", "toy_world.jsonl")


def test_shipped_tiny_assets_match_their_generator(tmp_path):
    with open(SHIPPED) as handle:
        shipped = [json.loads(line) for line in handle]
    assert shipped == json.loads(json.dumps(generate_rows(len(shipped), seed=0)))
    # ... and are the file `make tiny-assets` writes, byte for byte
    write_tiny_assets(str(tmp_path))
    with open(SHIPPED, encoding="utf-8") as handle:
        assert (tmp_path / "toy_world.jsonl").read_text(encoding="utf-8") == handle.read()
