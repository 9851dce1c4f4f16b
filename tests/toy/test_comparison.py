"""The comparison of the arms in the toy world (`depo_trl/toy/comparison.py`): its statistics against hand
computations, and a run of two arms over two seeds."""

import json

import pytest

from depo_trl.toy.comparison import comparison_table, mean_interval, point_at


def test_benchmark_statistics_against_hand_computations():
    mean, half_width = mean_interval([0.1, 0.2, 0.3])
    # sd = 0.1, t(0.975, 2 df) = 4.303: 4.303 * 0.1 / sqrt(3)
    assert mean == pytest.approx(0.2) and half_width == pytest.approx(4.303 * 0.1 / 3**0.5)
    assert mean_interval([0.5]) == (0.5, 0.0)
    points = [{"step": 0, "seconds": 0.0}, {"step": 10, "seconds": 5.0}, {"step": 20, "seconds": 9.0}]
    assert point_at(points, 8.9)["step"] == 10 and point_at(points, 9.0)["step"] == 20

    def run(name, seed, long_em):
        point = {"step": 10, "seconds": 1.0, "long_em": long_em, "long_sampled_em": 0, "short_em": 0}
        return {"configuration": name, "seed": seed, "points": [point | {"short_sampled_em": 0}]}

    runs = [run("long", 0, 0.1), run("long", 1, 0.2), run("depo", 0, 0.3), run("depo", 1, 0.5)]
    table = "\n".join(comparison_table(runs, lambda r: r["points"][-1], "t", "long"))
    # paired differences 0.2 and 0.3: mean 0.25, sd 0.0707, t(1 df) = 12.706: half-width 0.635, not significant
    assert "| depo | 0.400 ± 1.271 |" in table and "+0.250 ± 0.635 |" in table and "| long |" in table


@pytest.mark.slow
def test_benchmark_runs_two_arms_over_two_seeds(tmp_path):
    from depo_trl.toy.comparison import main as benchmark_main

    run_dir = tmp_path / "bench"
    benchmark_main(
        ["--arms", "depo", "long", "--steps", "2", "--eval-every", "1", "--seeds", "0", "1", "--eval-rows", "6",
         "--run-dir", str(run_dir)]
    )  # fmt: skip
    results = json.loads((run_dir / "results.json").read_text())
    assert [(run["configuration"], run["seed"]) for run in results["runs"]] == [
        ("depo", 0), ("depo", 1), ("long", 0), ("long", 1)
    ]  # fmt: skip
    assert all([point["step"] for point in run["points"]] == [0, 1, 2] for run in results["runs"])
    shortest = min(run["points"][-1]["seconds"] for run in results["runs"])
    assert results["equal_time_budget"] == pytest.approx(shortest)
    markdown = (run_dir / "results.md").read_text()
    assert "### Equal steps (2)" in markdown and "| depo |" in markdown and "long EM - long (paired)" in markdown
    assert (run_dir / "long_em.png").stat().st_size > 0
