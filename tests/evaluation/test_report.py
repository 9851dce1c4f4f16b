"""`report.py`: the layout of results.md (Table 2's columns and average, LongBench v2, models scored leniently)."""

from depo_trl.evaluation.report import TABLE2_COLUMNS, results_table


def test_table_layout():
    scores = {task: {"f1": 50.0, "em": 40.0, "count": 1} for task in TABLE2_COLUMNS}
    scores["docmath"] = {"accuracy": 20.0, "count": 1}
    scores |= {"avg": 47.0, "longbench_v2": {"accuracy": 33.33, "unparsed": 1, "count": 3}}
    table = results_table({"model": scores})
    assert table.startswith("Scoring: each benchmark's official evaluation code (--scoring official). DocMath")
    assert "| model | 20.00 | " + " | ".join(["50.00"] * 9) + " | 47.00 |" in table
    assert "| model | 33.33 | 1 | 3 |" in table
    only_v2 = results_table({"model": scores, "other": {"longbench_v2": {"accuracy": 0.0, "unparsed": 0, "count": 1}}})
    assert "| other | - |" not in only_v2 and "| other | 0.00 | 0 | 1 |" in only_v2
    assert "DocMath" not in results_table({"other": {"longbench_v2": {"accuracy": 0.0, "unparsed": 0, "count": 1}}})
    # A model last scored in the lenient mode is marked as such
    mixed = results_table({"model": scores, "lenient-model": scores | {"scoring": "lenient"}})
    assert "rows marked (lenient): the project's lenient reading" in mixed
    assert "| lenient-model (lenient) | 20.00 |" in mixed and "| model | 20.00 |" in mixed
