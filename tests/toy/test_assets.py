"""The toy world's rows the tiny recipes train on (`depo_trl/toy/assets.py`, `make tiny-assets`): the shipped file is
what its generator writes."""

import json
import os

from depo_trl.toy.world import generate_rows

from ..helpers import ROOT


def test_shipped_tiny_assets_match_their_generator():
    with open(os.path.join(ROOT, "recipes", "tiny", "assets", "toy_world.jsonl")) as handle:
        shipped = [json.loads(line) for line in handle]
    assert shipped == json.loads(json.dumps(generate_rows(len(shipped), seed=0)))
