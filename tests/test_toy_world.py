"""The toy world: generator invariants, the chance baseline, the shipped warm start, the benchmark's statistics."""

import json
import re
from dataclasses import asdict

import pytest
import torch
from transformers import AutoModelForCausalLM

from depo_trl.model_utils import load_tokenizer
from depo_trl.toy.comparison import comparison_table, mean_interval, point_at
from depo_trl.toy.training import ToySettings, evaluate, train_arm
from depo_trl.toy.warm_start import SHIPPED_WARM_START, WarmStartSettings, read_record
from depo_trl.toy.world import (
    CITIES,
    COMPANIES,
    PEOPLE,
    ToyWorldConfig,
    build_toy_tokenizer,
    chance_em,
    generate_row,
    generate_rows,
    warm_start_rows,
)
from depo_trl.user_errors import UsageError


def documents(prompt: list[dict]) -> list[tuple[str, str, str]]:
    """(person, city, company) of each document of a toy prompt, parsed independently of the generator."""
    content = prompt[-1]["content"].split(" Question : ")[0]
    return [tuple(line.split()) for line in content.split(" .") if line.strip()]


def answer_from(docs: list[tuple[str, str, str]], question: str) -> str:
    """Answer a toy question using `docs` only; fails unless exactly one document is about the person asked."""
    person = re.search(r"(?:was|employs) (\w+)", question).group(1)
    (facts,) = [doc for doc in docs if doc[0] == person]
    return facts[1] if question.startswith("Where") else facts[2]


def test_name_pools_are_disjoint_and_large_enough_for_the_longest_sweep():
    assert not (set(PEOPLE) & set(CITIES) or set(PEOPLE) & set(COMPANIES) or set(CITIES) & set(COMPANIES))
    assert generate_row(0, 0, ToyWorldConfig(short_distractors=3, long_distractors=60))


@pytest.mark.parametrize("seed", [0, 7])
def test_generator_invariants(seed):
    rows = generate_rows(300, seed=seed)
    assert {row["question_type"] for row in rows} == {"born", "employer"}
    for row in rows:
        short, long = documents(row["prompt"]), documents(row["long_prompt"])
        assert set(short) <= set(long) and len(short) == 1 + 3 and len(long) == 1 + 24
        for docs in (short, long):  # one document per person, one person per city: nothing to contradict the gold
            assert len({doc[0] for doc in docs}) == len({doc[1] for doc in docs}) == len(docs)
            assert all(len(doc) == 3 for doc in docs)
        gold = [doc for doc in short if doc[0] in row["gold_titles"]]
        assert len(gold) == 1 and answer_from(gold, row["question"]) == row["answer"][0]
        assert answer_from(long, row["question"]) == row["answer"][0]
        distractors = [doc for doc in long if doc not in gold]
        with pytest.raises(ValueError):  # the distractors alone do not answer it
            answer_from(distractors, row["question"])
        assert row["solution"].endswith(f"Therefore , the answer is {row['answer'][0]} .")
    assert generate_rows(300, seed=seed) == rows
    assert generate_rows(300, seed=seed + 1) != rows


def test_reasoning_chains_copy_the_subjects_document():
    for row in generate_rows(50):
        person, city, company = next(doc for doc in documents(row["prompt"]) if doc[0] in row["gold_titles"])
        expected = f"{person} {city} ." if row["question_type"] == "born" else f"{person} {city} {company} ."
        assert row["solution"].startswith(expected)


@pytest.mark.parametrize(("short", "long"), [(-1, 3), (4, 3), (3, 64)])
def test_impossible_distractor_counts_are_refused(short, long):
    with pytest.raises(UsageError, match="need 0 <= short <= long <= 63"):
        ToyWorldConfig(short_distractors=short, long_distractors=long)


def test_rows_tokenize_without_unknown_words():
    tokenizer = build_toy_tokenizer()
    for row in generate_rows(100) + [generate_row(0, 0, ToyWorldConfig(long_distractors=63))]:
        for key in ("prompt", "long_prompt"):
            text = tokenizer.apply_chat_template(row[key], tokenize=False, add_generation_prompt=True)
            assert tokenizer.unk_token_id not in tokenizer(text)["input_ids"]
        assert tokenizer.unk_token_id not in tokenizer(row["solution"])["input_ids"]


def test_chance_baseline_on_a_hand_made_row():
    (city_a, city_b, city_c), (company_a, company_b) = CITIES[:3], COMPANIES[:2]
    content = (
        f"Rala {city_a} {company_a} . Vonus {city_b} {company_a} . Kemi {city_c} {company_b} . "
        "Question : Where was Rala born ?"
    )
    row = {"prompt": [{"role": "user", "content": content}], "answer": [city_a], "answer_type": "city"}
    assert chance_em(row) == pytest.approx(1 / 3)  # three cities in the context
    employer = {**row, "answer": [company_a], "answer_type": "company"}
    assert chance_em(employer) == pytest.approx(1 / 2)  # two distinct companies
    long_content = content.replace("Question", f"Tomen {CITIES[3]} {COMPANIES[2]} . Question")
    assert chance_em({**employer, "long_prompt": [{"role": "user", "content": long_content}]}, "long") == 1 / 3
    assert chance_em({**row, "answer": ["Nowhere"]}) == 0.0


def test_warm_start_rows_are_a_distractor_curriculum():
    rows = warm_start_rows(300, seed=0, max_distractors=4)
    assert {len(documents(row["prompt"])) - 1 for row in rows} == {0, 1, 2, 3, 4}
    assert all("Therefore , the answer is" in row["completion"][0]["content"] for row in rows)


def test_the_shipped_warm_start_matches_its_settings_and_is_in_depos_regime():
    record, settings = read_record(SHIPPED_WARM_START), WarmStartSettings()
    assert record["settings"] == asdict(settings)
    model = AutoModelForCausalLM.from_pretrained(SHIPPED_WARM_START)
    config = model.config
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (
        settings.hidden_size,
        settings.num_layers,
        settings.num_heads,
    )
    tokenizer = load_tokenizer(SHIPPED_WARM_START)
    assert tokenizer.get_vocab() == build_toy_tokenizer().get_vocab()
    # The regime, as recorded on its 200 held-out questions: sampled short-context EM >= 0.75 and >= 2x chance,
    # long-context EM at most half the short-context EM
    recorded = record["evaluation"]
    assert recorded["short_sampled_em"] >= max(0.75, 2 * recorded["short_chance"])
    assert recorded["long_sampled_em"] <= recorded["short_sampled_em"] / 2
    assert recorded["long_em"] <= recorded["short_em"] / 2
    # ... and re-measured here, greedily on the first 100 of them (the recorded figures are not just numbers in a file)
    settings = ToySettings(eval_rows=100)
    rows = settings.eval_set()
    with torch.random.fork_rng(devices=[]):
        measured = evaluate(model, tokenizer, rows, settings, show_progress=False)
    assert measured["short_em"] >= 0.75 and measured["long_em"] <= measured["short_em"] / 2


def test_evaluating_during_a_run_leaves_the_run_unchanged(tmp_path):
    settings = ToySettings(eval_rows=8, train_rows=16, prompts_per_step=2, num_generations=4)
    runs = [
        train_arm("depo", SHIPPED_WARM_START, str(tmp_path / f"run{every}"), settings, max_steps=2,
                  show_progress=False, evaluate_every=every)
        for every in (0, 1)
    ]  # fmt: skip
    assert [point["step"] for point in runs[1].points] == [1, 2] and runs[0].points == []
    assert runs[1].points[1]["seconds"] == pytest.approx(sum(runs[1].step_seconds))
    for first, second in zip(runs[0].trainer.model.parameters(), runs[1].trainer.model.parameters()):
        assert torch.equal(first, second)


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
