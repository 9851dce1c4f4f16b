"""The toy world: generator invariants, the chance baseline, the demo's pieces, and the run-exploration notebook."""

import os
import re

import pytest

from depo_trl.depo import main as train_main
from depo_trl.depo import parse_recipe
from depo_trl.toy.world import (
    CITIES,
    ToyWorldConfig,
    build_toy_tokenizer,
    chance_em,
    generate_row,
    generate_rows,
    warm_start_rows,
)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def documents(prompt: list[dict]) -> dict[str, str]:
    """{title: facts} of a toy prompt, parsed independently of the generator."""
    content = prompt[-1]["content"].split(" Question : ")[0]
    blocks = [block for block in re.split(r"Passage \d+ : ", content) if block.strip()]
    return {block.split(" ", 1)[0]: block.split(" ", 1)[1].strip() for block in blocks}


def answer_from(docs: dict[str, str], question: str) -> str:
    """Answer a toy question using `docs` only."""
    person = re.search(r"(?:was|employs) (\w+)", question).group(1)
    facts = dict(re.findall(r"(\w+) : (\w+)", docs[person]))
    if question.startswith("Who employs"):
        return facts["employer"]
    if question.startswith("Where"):
        return facts["born"]
    return dict(re.findall(r"(\w+) : (\w+)", docs[facts["born"]]))["country"]


@pytest.mark.parametrize("seed", [0, 7])
def test_generator_invariants(seed):
    rows = generate_rows(300, seed=seed)
    assert {row["question_type"] for row in rows} == {"born", "employer", "country"}
    for row in rows:
        short, long = documents(row["prompt"]), documents(row["long_prompt"])
        assert set(row["gold_titles"]) <= set(short) and set(short) <= set(long)
        assert all(short[title] == long[title] for title in short)
        assert len(short) == len(row["gold_titles"]) + 3 and len(long) == len(short) + 24
        gold_only = {title: short[title] for title in row["gold_titles"]}
        assert answer_from(gold_only, row["question"]) == row["answer"][0]
        assert answer_from(long, row["question"]) == row["answer"][0]  # distractors never contradict the gold
        assert row["solution"].endswith(f"Therefore , the answer is {row['answer'][0]} .")
    assert generate_rows(300, seed=seed) == rows
    assert generate_rows(300, seed=seed + 1) != rows


def test_rows_tokenize_without_unknown_words():
    tokenizer = build_toy_tokenizer()
    for row in generate_rows(100) + [generate_row(0, 0, ToyWorldConfig(long_distractors=40))]:
        for key in ("prompt", "long_prompt"):
            text = tokenizer.apply_chat_template(row[key], tokenize=False, add_generation_prompt=True)
            assert tokenizer.unk_token_id not in tokenizer(text)["input_ids"]
        assert tokenizer.unk_token_id not in tokenizer(row["solution"])["input_ids"]


def test_chance_baseline_on_a_hand_made_row():
    city_a, city_b, city_c = CITIES[:3]
    content = (
        f"Passage 1 : Rala born : {city_a} . employer : Zaqcorp . Passage 2 : {city_b} country : Eeeca . "
        f"Passage 3 : Vonus born : {city_b} . employer : Wextek . Question : Where was Rala born ?"
    )
    row = {"prompt": [{"role": "user", "content": content}], "answer": [city_a], "answer_type": "city"}
    assert chance_em(row) == pytest.approx(1 / 2)  # two distinct cities in the context
    long_content = content.replace("Question", f"Passage 4 : {city_c} country : Eeeca . Question")
    assert chance_em({**row, "long_prompt": [{"role": "user", "content": long_content}]}, "long") == 1 / 3
    assert chance_em({**row, "answer": ["Nowhere"]}) == 0.0


def test_warm_start_rows_are_a_distractor_curriculum():
    rows = warm_start_rows(300, seed=0, max_distractors=4)
    gold_documents = [2 if "In which country" in row["prompt"][0]["content"] else 1 for row in rows]
    distractors = [len(documents(row["prompt"])) - gold for row, gold in zip(rows, gold_documents)]
    assert set(distractors) == {0, 1, 2, 3, 4}
    assert all("Therefore , the answer is" in row["completion"][0]["content"] for row in rows)


@pytest.mark.slow
def test_notebook_runs_on_a_tiny_run(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    run_dir = tmp_path / "run"
    train_main(*parse_recipe([
        "--config", os.path.join(ROOT, "recipes", "tiny", "depo.yaml"), "--output_dir", str(run_dir),
        "--model_name_or_path", os.path.join(ROOT, "recipes", "tiny", "assets", "model"),
        "--dataset_name", os.path.join(ROOT, "recipes", "tiny", "assets", "toy_world.jsonl"),
        "--log_completions", "true", "--max_steps", "2",
    ]))  # fmt: skip
    notebook = nbformat.read(os.path.join(ROOT, "notebooks", "explore_run.ipynb"), as_version=4)
    os.environ["DEPO_RUN_DIR"] = str(run_dir)
    try:
        nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3").execute()
    finally:
        os.environ.pop("DEPO_RUN_DIR")
    outputs = "".join(
        output.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
    )
    assert "logged steps" in outputs and "completions_" in outputs
