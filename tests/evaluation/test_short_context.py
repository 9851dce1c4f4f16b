"""The lm-evaluation-harness glue: benchmark names, metric extraction, and a run of local harness tasks over fixture
data with a tiny model (tests/fixtures/lm_eval/), written into the evaluation harness's layout."""

import json
import os

import pytest

from depo_trl.evaluation.short_context import BENCHMARKS, benchmark_scores, evaluate_short_context, parse_benchmarks
from depo_trl.evaluation.short_context import main as short_context_main
from depo_trl.models.tiny import build_tiny_qwen2, build_word_level_tokenizer, save_model_and_tokenizer
from depo_trl.user_errors import UsageError

from . import FIXTURES


LM_EVAL_TASKS = os.path.join(FIXTURES, "lm_eval")


def test_benchmark_names():
    assert [b.task for b in parse_benchmarks("all")] == [
        "gsm8k", "hendrycks_math", "mmlu", "gpqa_main_zeroshot", "arc_challenge", "hellaswag", "bbh",
    ]  # fmt: skip
    custom = parse_benchmarks("GSM8K, arc_easy:acc_norm, gsm8k:exact_match:strict-match")
    assert [(b.label, b.task, b.metric) for b in custom] == [
        ("GSM8K", "gsm8k", "exact_match,flexible-extract"),
        ("arc_easy", "arc_easy", "acc_norm,none"),
        ("gsm8k", "gsm8k", "exact_match,strict-match"),
    ]
    assert parse_benchmarks("mmlu,mmlu") == [BENCHMARKS["mmlu"]]
    with pytest.raises(UsageError, match="--tasks squad: not one of"):
        parse_benchmarks("squad")


def test_a_metric_the_harness_did_not_report_is_named():
    results = {"results": {"arc_easy": {"alias": "arc_easy", "acc,none": 0.5, "acc_stderr,none": 0.1}}}
    assert benchmark_scores(results, parse_benchmarks("arc_easy:acc")) == {"arc_easy": 50.0}
    with pytest.raises(UsageError, match=r"no acc_norm,none for it, but \['acc,none', 'acc_stderr,none'\]"):
        benchmark_scores(results, parse_benchmarks("arc_easy:acc_norm"))


@pytest.fixture(scope="module")
def fixture_model_dir(tmp_path_factory):
    """A tiny Qwen2 whose word-level vocabulary covers the local tasks' questions and answers."""
    texts = [open(os.path.join(LM_EVAL_TASKS, name)).read() for name in os.listdir(LM_EVAL_TASKS)]
    tokenizer = build_word_level_tokenizer([*texts, "Question : Answer"])
    return save_model_and_tokenizer(build_tiny_qwen2(tokenizer), tokenizer, tmp_path_factory.mktemp("lm-eval-model"))


def test_local_harness_tasks_land_in_scores_and_results_table(fixture_model_dir, tmp_path):
    output = tmp_path / "eval"
    folder = output / os.path.basename(fixture_model_dir)
    folder.mkdir(parents=True)
    # A Table 2 score already there stays
    (folder / "scores.json").write_text(json.dumps({"musique": {"f1": 12.5, "em": 0.0, "count": 2}}))
    short_context_main([
        "--model", fixture_model_dir, "--tasks", "depo_fixture_choice:acc,depo_fixture_generate:exact_match",
        "--backend", "hf", "--include-path", LM_EVAL_TASKS, "--output-dir", str(output), "--batch-size", "1",
    ])  # fmt: skip
    scores = json.loads((folder / "scores.json").read_text())
    assert scores["musique"]["f1"] == 12.5
    # Identical choices, the first gold in 3 of 4 rows: the harness's argmax takes the first, whatever the model
    assert scores["short_context"]["depo_fixture_choice"] == 75.0
    assert scores["short_context"]["depo_fixture_generate"] in (0.0, 50.0, 100.0)
    record = json.loads((folder / "short_context.json").read_text())
    assert record["lm_eval_version"] == "0.4.13"
    assert record["n-samples"]["depo_fixture_choice"]["effective"] == 4
    assert record["benchmarks"]["depo_fixture_choice"] == {"task": "depo_fixture_choice", "metric": "acc,none"} | {
        "accuracy": 75.0
    }
    assert (folder / "lm_eval_cache_rank0.db").is_file()
    table = (output / "results.md").read_text()
    assert "Short-context benchmarks (lm-evaluation-harness), accuracy x100:" in table
    assert "| Model | depo_fixture_choice | depo_fixture_generate |" in table and "| 75.00 |" in table


def test_unknown_harness_task_is_one_line(fixture_model_dir, tmp_path):
    with pytest.raises(UsageError, match="--tasks no_such_task: not a task of lm-eval 0.4.13"):
        evaluate_short_context(fixture_model_dir, parse_benchmarks("no_such_task:acc"), str(tmp_path), backend="hf")
