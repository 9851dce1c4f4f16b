"""`python -m depo_trl.toy.demo` (`make demo`): it says when its time cap stopped the RL phase early."""

import functools
import json

import pytest

from depo_trl.toy import demo
from depo_trl.toy.training import ToySettings


@pytest.mark.slow
def test_the_demo_says_when_its_time_cap_stopped_it_early(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(demo, "ToySettings", functools.partial(ToySettings, eval_rows=16, prompts_per_step=2))
    demo.main(["--run-dir", str(tmp_path), "--steps", "5", "--minutes", "0.0001"])  # the cap passes in step 1
    output = capsys.readouterr().out
    assert "The 0.0001-minute cap stopped the RL phase after 1 of 5 steps (--minutes).\n" in output
    assert "depo, 1 steps of 5 (stopped by the 0.0001-minute cap) (" in output
    results = json.loads((tmp_path / "demo_results.json").read_text())
    assert (results["steps"], results["max_steps"], results["stopped_by_time_cap"]) == (1, 5, True)
