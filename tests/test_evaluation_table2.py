"""Table 2's DocMath and Frames columns, its 10-column average, and LongBench v2: scoring by hand, loaders on fixtures
in each dataset's format, prompts, decoding settings, and an end-to-end CPU run that a second run leaves alone."""

import json
import os
import shutil

import pytest

from depo_trl.data.template import render_prompt
from depo_trl.evaluation.__main__ import main as evaluation_main
from depo_trl.evaluation.backends import HFBackend
from depo_trl.evaluation.frames import article_title, with_articles
from depo_trl.evaluation.runner import TABLE2_COLUMNS, parse_tasks, results_table
from depo_trl.evaluation.scoring import docmath_correct, extract_choice
from depo_trl.evaluation.tasks import TASKS, Decoding, load_docmath, load_frames, load_longbench_v2
from depo_trl.model_utils import load_tokenizer
from depo_trl.models.tiny import build_tiny_qwen2, build_word_level_tokenizer, save_model_and_tokenizer
from depo_trl.user_errors import UsageError


FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
FRAMES_DIR = os.path.join(FIXTURES, "frames")
LONGBENCH_V2_DIR = os.path.join(FIXTURES, "longbench_v2")


# DocMath: the same number written the ways models write it (QwenLong-L1's normalisation, read by math-verify)
@pytest.mark.parametrize(
    ("answer", "gold"),
    [
        ("12.5", 12.5),
        ("12.50", 12.5),
        ("12.5%", 12.5),  # the percent sign dropped, as QwenLong-L1 does
        ("12.5%", 0.125),  # a percentage for a fraction: a power of ten apart
        ("0.125", 12.5),
        ("$1,234.5 million", 1234.5),  # currency, thousands separator, unit word
        ("USD 1,234.5", 1234.5),
        ("€1,234.50", 1234.5),
        ("approximately 1,235", 1234.5678),  # within 0.15% of the gold
        ("12.35%", 0.12345678),  # a rounded percentage for an unrounded fraction
        ("12.34", 12.3356),  # equal once both are rounded up to 2 decimals
        ("\\frac{1}{8}", 0.125),  # LaTeX
        ("1/8", 0.125),
        ("(12.5)", 12.5),  # the template's "(insert answer here)" copied with its parentheses
        ("a decrease of 5.2%", -5.2),  # magnitudes are compared, as in QwenLong-L1
        ("$1,234 million (up from $1,000 million)", 1234.0),  # the number the answer starts with
        ("1.2 \\times 10^{3}", 1200.0),
    ],
)
def test_docmath_equal_numbers_score_1(answer, gold):
    assert docmath_correct(answer, gold)


@pytest.mark.parametrize(
    ("answer", "gold"),
    [
        ("12.6", 12.5),  # 0.8% off
        ("12.52", 12.5),  # 0.16% off: just outside the tolerance
        ("12.4%", 12.5),
        ("13%", 0.125),  # rounding a percentage to a whole number is not the gold
        ("1,240", 1234.5678),
        ("125.5", 12.5),  # off by a power of ten *and* a bit
        ("0.1", 0.125),
        ("2019", 12.5),  # a year in place of the answer
        ("none of the above", 12.5),
        ("", 12.5),
        ("-$5", 5.0),  # unreadable to math-verify, as to QwenLong-L1's regular expression
    ],
)
def test_docmath_near_misses_score_0(answer, gold):
    assert not docmath_correct(answer, gold)


def test_docmath_scores_the_extracted_answer():
    raw = "Revenue rose from $1,000 to $1,125.\n\nTherefore, the answer is **12.5%**."
    for mode in ("official", "lenient"):
        assert TASKS["docmath"].score(mode, raw, ["12.5"], "depo").metrics == {"accuracy": 100.0}
        assert TASKS["docmath"].score(mode, raw, ["12.0"], "longbench").metrics == {"accuracy": 0.0}
    assert TASKS["docmath"].score("lenient", raw, ["12.5"], "depo").pred == "12.5%"
    assert TASKS["docmath"].score("official", raw, ["12.5"], "depo").pred == "12.5"  # QwenLong-L1 reads digits only


@pytest.mark.parametrize(
    ("raw", "gold", "prompt_style", "pred", "f1"),
    [
        ("Kesh lies on it. Therefore, the answer is The Pellan Sea.", "The Pellan Sea", "depo", "The Pellan Sea", 100),
        # "pellan sea coast" vs "pellan sea": precision 2/3, recall 1 -> F1 0.8
        ("Therefore, the answer is the Pellan Sea coast", "The Pellan Sea", "depo", "the Pellan Sea coast", 80),
        # Frames keeps QwenLong-L1's prompt under --prompt-style longbench, so its answer is still extracted; "38
        # years" vs "38": precision 1/2, recall 1 -> F1 2/3, which QwenLong-L1 rounds to 0.67
        ("It flows on.\nTherefore, the answer is 38 years.", "38", "longbench", "38 years", (66.67, 67.0)),
        ("Therefore, the answer is the Baltic Sea.", "The Pellan Sea", "depo", "the Baltic Sea", 50),
    ],
)
def test_frames_f1_by_hand(raw, gold, prompt_style, pred, f1):
    lenient_f1, official_f1 = f1 if isinstance(f1, tuple) else (f1, f1)
    for mode, expected in (("lenient", lenient_f1), ("official", official_f1)):  # one line after the marker
        score = TASKS["frames"].score(mode, raw, [gold], prompt_style)
        assert score.pred == pred
        assert score.metrics["f1"] == pytest.approx(expected, abs=0.005)


@pytest.mark.parametrize(
    ("raw", "choice"),
    [
        ("The correct answer is (B)", "B"),  # LongBench v2's format
        ("The correct answer is C", "C"),
        ("Therefore, the answer is (A).", "A"),  # the training template's
        ("**The correct answer is (D)**", "D"),
        ("Answer: B", "B"),
        ("The answer is: (C) It was postponed", "C"),
        ("The answer choice is [D].", "D"),
        ("The answer is option A, since the log says so.", "A"),
        ("Option A is wrong and B too. The correct answer is C.", "C"),  # the answer statement, not the options
        # The first statement: what follows it is explanation (an "answer A" without "is" states nothing)
        ("The correct answer is (B). The answer A is wrong because the log says so.", "B"),
        ("The correct answer is (B), not answer (D).", "B"),
        ("The correct answer is (C).\n\nExplanation: the answer is not (A), since ...", "C"),
        ("<think>the answer is A</think>The correct answer is (D)", "D"),
        ("\\boxed{C}", "C"),
        ("B", "B"),
        ("(B) A storm closed the harbour", "B"),
        ("B.", "B"),
        # Unparsable: no option given, an article rather than an option, a lowercase letter, nothing at all
        ("I think the storm did it.", None),
        ("A storm closed the harbour.", None),
        ("The answer is b", None),
        ("The answer is Bob.", None),
        ("", None),
    ],
)
def test_longbench_v2_lenient_option_parsing(raw, choice):
    assert extract_choice(raw) == choice
    score = TASKS["longbench_v2"].score("lenient", raw, ["B"], "longbench")
    assert score.pred == choice and score.metrics == {"accuracy": 100.0 if choice == "B" else 0.0}


def test_docmath_loader_subsets_and_qwenlong_test_questions(tmp_path):
    # With QwenLong-L1's test prompts beside the subsets: only the questions those prompts hold
    examples = load_docmath(FIXTURES)
    assert [e.id for e in examples] == ["complong-testmini-0", "simplong-testmini-0", "simpshort-testmini-0"]
    assert examples[2].answers == ["12.5"] and examples[2].context.startswith("Revenue grew")
    shutil.copytree(os.path.join(FIXTURES, "docmath"), tmp_path / "docmath")
    os.remove(tmp_path / "docmath" / "docmath_all_test_200.jsonl")
    assert len(load_docmath(str(tmp_path))) == 4  # the four testmini subsets
    os.remove(tmp_path / "docmath" / "compshort_testmini.jsonl")
    with pytest.raises(UsageError, match=f"--data-dir {tmp_path}: docmath/ has no compshort_testmini.jsonl"):
        load_docmath(str(tmp_path))


def test_frames_and_longbench_v2_loaders(tmp_path):
    frames = load_frames(FRAMES_DIR)
    assert [e.answers for e in frames] == [["The Pellan Sea"], ["38"]]
    assert frames[0].context.startswith("Velmar Observatory\nVelmar Observatory is") and "\nOstrava River\n" in (
        frames[0].context
    )
    with pytest.raises(UsageError, match=f"--data-dir {tmp_path}: no frames.jsonl there.*depo_trl.evaluation.frames"):
        load_frames(str(tmp_path))
    v2 = load_longbench_v2(LONGBENCH_V2_DIR)
    assert [e.answers for e in v2] == [["B"], ["C"], ["A"]]
    assert v2[0].question.endswith("Choices:\n(A) The keeper was ill\n(B) A storm closed the harbour\n"
                                   "(C) The lighthouse was repaired\n(D) It was winter")  # fmt: skip


def test_prompts_and_answer_budgets():
    docmath = load_docmath(FIXTURES)[0]
    qwenlong = (  # QwenLong-L1's template_0shot (eval/docmath.py, eval/frames.py)
        "Please read the following text and answer the question below.\n\n<text>\n{doc}\n</text>\n\n{q}\n\n"
        'Format your response as follows: "Therefore, the answer is (insert answer here)".'
    )
    for style in ("depo", "longbench"):
        assert TASKS["docmath"].prompt(docmath, style) == qwenlong.format(doc=docmath.context, q=docmath.question)
        assert TASKS["docmath"].max_new_tokens(style) == TASKS["frames"].max_new_tokens(style) == 1024
    v2 = load_longbench_v2(LONGBENCH_V2_DIR)[0]
    for style in ("depo", "longbench"):  # LongBench v2's prompts/0shot.txt: the only format its pred.py reads
        assert TASKS["longbench_v2"].prompt(v2, style) == (
            "Please read the following text and answer the question below.\n\n<text>\n"
            f"{v2.context}\n</text>\n\nWhat is the correct answer to this question: {v2.question}\n\n"
            'Format your response as follows: "The correct answer is (insert answer here)".'
        )
        assert TASKS["longbench_v2"].max_new_tokens(style) == 128
    hotpotqa = TASKS["longbench_hotpotqa"]
    assert hotpotqa.max_new_tokens("longbench") == 32 and hotpotqa.max_new_tokens("depo") == 1024
    assert hotpotqa.prompt(v2, "depo") == render_prompt(v2.context, v2.question)


def test_groups_decoding_and_table_layout():
    assert parse_tasks("table2") == TABLE2_COLUMNS
    assert [TASKS[task].label for task in TABLE2_COLUMNS] == [
        "DocMath", "Frames", "2Wiki", "HotpotQA", "MuSiQue",
        "LB-2Wiki", "LB-HotpotQA", "LB-MuSiQue", "NarrativeQA", "Qasper",
    ]  # fmt: skip
    assert "longbench_v2" in parse_tasks("all") and "longbench_v2" not in parse_tasks("table2")
    assert TASKS["longbench_v2"].decoding == Decoding(temperature=0.1, seed=0)
    assert TASKS["docmath"].decoding.as_record() == {"do_sample": False}
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


def test_frames_preparation_without_network():
    assert article_title("https://en.wikipedia.org/wiki/James_A._Garfield#Family") == "James A. Garfield"
    assert article_title("https://en.wikipedia.org/wiki/Caf%C3%A9_au_lait") == "Café au lait"
    calls = []

    def fetch(title):
        calls.append(title)
        return None if title == "Gone Page" else {"title": title, "text": f"About {title}."}

    rows = [
        {"Prompt": "q1", "Answer": "a1", "wiki_links": "['https://en.wikipedia.org/wiki/Kesh', 'https://en.wikipedia.org/wiki/Gone_Page']"},
        {"Prompt": "q2", "Answer": "a2", "wiki_links": ["https://en.wikipedia.org/wiki/Kesh"]},
    ]  # fmt: skip
    out = list(with_articles(rows, fetch))
    assert out[0][0]["wiki_items"] == [{"title": "Kesh", "text": "About Kesh."}] and out[0][1] == ["Gone Page"]
    assert out[1][0]["wiki_items"] == [{"title": "Kesh", "text": "About Kesh."}] and out[1][1] == []
    assert calls == ["Kesh", "Gone Page"]  # each article fetched once


@pytest.fixture(scope="module")
def table2_model_dir(tmp_path_factory):
    texts = [render_prompt("", "")]
    for folder, _, names in os.walk(FIXTURES):
        texts += [
            open(os.path.join(folder, n), encoding="utf-8").read() for n in names if n.endswith(("json", "jsonl"))
        ]
    tokenizer = build_word_level_tokenizer(texts)
    model = build_tiny_qwen2(tokenizer, max_position_embeddings=4096)
    return save_model_and_tokenizer(model, tokenizer, tmp_path_factory.mktemp("table2-model"))


def test_sampling_is_seeded_on_the_hf_backend(table2_model_dir):
    backend = HFBackend(table2_model_dir, load_tokenizer(table2_model_dir), batch_size=2)
    conversations = [[{"role": "user", "content": f"Question: {word} ?"}] for word in ("storm", "ships", "roof")]
    sampled = [backend.generate(conversations, 6, "test", Decoding(temperature=1.0, seed=3)) for _ in range(2)]
    assert sampled[0] == sampled[1]
    assert backend.generate(conversations, 6, "test") == backend.generate(conversations, 6, "test")  # greedy


def test_end_to_end_table2_and_longbench_v2_then_nothing_new(table2_model_dir, tmp_path, monkeypatch):
    data = tmp_path / "data"
    shutil.copytree(os.path.join(FIXTURES, "longbench"), data)
    shutil.copytree(os.path.join(FIXTURES, "docmath"), data / "docmath")
    for name in ("hotpotqa_distractor_sample.json", "2wikimultihopqa_sample.json", "musique_sample.jsonl"):
        shutil.copy(os.path.join(FIXTURES, name), data / name)
    shutil.copy(os.path.join(FRAMES_DIR, "frames.jsonl"), data / "frames.jsonl")
    shutil.copy(os.path.join(LONGBENCH_V2_DIR, "longbench_v2.json"), data / "longbench_v2.json")
    output = tmp_path / "eval"
    argv = [
        "--model", table2_model_dir, "--tasks", "table2,longbench_v2", "--backend", "hf", "--max-length", "2048",
        "--output-dir", str(output), "--limit", "2", "--data-dir", str(data), "--max-new-tokens", "4",
    ]  # fmt: skip
    evaluation_main(argv)
    folder = output / os.path.basename(table2_model_dir)
    tasks = parse_tasks("table2,longbench_v2")
    for task in tasks:
        rows = [json.loads(line) for line in (folder / f"{task}.jsonl").read_text().splitlines()]
        assert len(rows) == 2, task
        metrics = {"accuracy"} if task in ("docmath", "longbench_v2") else {"f1", "em"}
        assert set(rows[0]) == {"id", "prompt_tokens", "raw", "answers", "official", "lenient"}, task
        assert set(rows[0]["lenient"]) == {"pred", *metrics}, task
    scores = json.loads((folder / "scores.json").read_text())
    assert scores["scoring"] == "official"
    assert scores["longbench_v2"]["decoding"] == {"do_sample": True, "temperature": 0.1, "seed": 0}
    assert scores["docmath"]["decoding"] == scores["frames"]["decoding"] == {"do_sample": False}
    assert scores["docmath"]["official_code"].endswith("eval/docmath.py")
    assert scores["longbench_v2"]["official_code"].endswith("pred.py")
    for task in tasks:
        rows = [json.loads(line) for line in (folder / f"{task}.jsonl").read_text().splitlines()]
        official = [row["official"] for row in rows if row["official"] is not None]
        metric = TASKS[task].metric
        assert scores[task]["count"] == len(official) and scores[task]["outputs"] == 2, task
        assert scores[task]["empty_outputs"] == sum(row["raw"] == "" for row in rows), task
        assert scores[task]["unparsed"] == sum(record["pred"] is None for record in official), task
        assert scores[task][metric] == scores[task]["official"][metric], task
        assert scores[task]["lenient"][metric] == pytest.approx(sum(row["lenient"][metric] for row in rows) / 2)
    headline = [scores["docmath"]["accuracy"], *(scores[task]["f1"] for task in tasks[1:10])]
    assert scores["avg"] == pytest.approx(sum(headline) / 10, abs=0.01)
    table = (output / "results.md").read_text()
    assert "| Model | DocMath | Frames | 2Wiki | HotpotQA | MuSiQue | LB-2Wiki | LB-HotpotQA | LB-MuSiQue | " in table
    assert "NarrativeQA | Qasper | Avg. |" in table and "| Model | LongBench v2 | unparsed | questions |" in table

    def no_generation(*args, **kwargs):
        raise AssertionError("the second run must not generate anything")

    monkeypatch.setattr("depo_trl.evaluation.runner.make_backend", no_generation)
    before = {task: (folder / f"{task}.jsonl").read_text() for task in tasks}
    evaluation_main(argv)
    assert {task: (folder / f"{task}.jsonl").read_text() for task in tasks} == before
    assert json.loads((folder / "scores.json").read_text()) == scores

    # Another scoring mode re-scores the predictions on disk: nothing generated, the files untouched
    evaluation_main([*argv, "--scoring", "lenient"])
    assert {task: (folder / f"{task}.jsonl").read_text() for task in tasks} == before
    lenient = json.loads((folder / "scores.json").read_text())
    assert lenient["scoring"] == "lenient"
    for task in tasks:
        assert {key: lenient[task][key] for key in lenient[task]["lenient"]} == scores[task]["lenient"], task
    headline = [lenient["docmath"]["accuracy"], *(lenient[task]["f1"] for task in tasks[1:10])]
    assert lenient["avg"] == pytest.approx(sum(headline) / 10, abs=0.01)
    assert f"| {os.path.basename(table2_model_dir)} (lenient) |" in (output / "results.md").read_text()


def test_predictions_from_before_the_scoring_modes_are_rescored_not_regenerated(
    table2_model_dir, tmp_path, monkeypatch
):
    """Rows in the old layout (`pred`, `accuracy`) get both readings from their raw output, without generation."""
    model_folder = tmp_path / "eval" / os.path.basename(table2_model_dir)
    model_folder.mkdir(parents=True)
    raws = {  # the fixture's gold letters are B, C, A
        "lbv2-written-0001": "The correct answer is (B). The answer A is wrong because the log says so.",
        "lbv2-written-0002": "the correct answer is (C)",  # pred.py matches "The correct answer is" as written
        "lbv2-written-0003": "",  # pred.py does not write an empty output
    }
    old_rows = [
        {"id": key, "prompt_tokens": 10, "raw": raw, "pred": "A", "answers": [gold], "accuracy": 0.0}
        for (key, raw), gold in zip(raws.items(), "BCA")
    ]
    (model_folder / "longbench_v2.jsonl").write_text("".join(json.dumps(row) + "\n" for row in old_rows))

    def no_generation(*args, **kwargs):
        raise AssertionError("rows on disk must not be generated again")

    monkeypatch.setattr("depo_trl.evaluation.runner.make_backend", no_generation)
    evaluation_main([
        "--model", table2_model_dir, "--tasks", "longbench_v2", "--backend", "hf", "--output-dir",
        str(tmp_path / "eval"), "--data-dir", LONGBENCH_V2_DIR,
    ])  # fmt: skip
    rows = [json.loads(line) for line in (model_folder / "longbench_v2.jsonl").read_text().splitlines()]
    assert [row["official"] for row in rows] == [
        {"pred": "B", "accuracy": 100.0},
        {"pred": None, "accuracy": 0.0},
        None,
    ]
    assert [row["lenient"] for row in rows] == [
        {"pred": "B", "accuracy": 100.0},
        {"pred": "C", "accuracy": 100.0},
        {"pred": None, "accuracy": 0.0},
    ]
    v2 = json.loads((model_folder / "scores.json").read_text())["longbench_v2"]
    assert v2["official"] == {"accuracy": 50.0, "count": 2, "unparsed": 1}  # the empty output left out
    assert v2["lenient"] == {"accuracy": 66.67, "count": 3, "unparsed": 1}
    assert v2["accuracy"] == 50.0 and v2["outputs"] == 3 and v2["empty_outputs"] == 1


def test_a_missing_frames_file_is_one_line_naming_data_dir(table2_model_dir, tmp_path, capsys):
    argv = [
        "--model",
        table2_model_dir,
        "--tasks",
        "frames",
        "--backend",
        "hf",
        "--output-dir",
        str(tmp_path / "eval"),
    ]
    with pytest.raises(SystemExit) as stopped:
        evaluation_main([*argv, "--data-dir", str(tmp_path)])
    message = capsys.readouterr().err.strip()
    assert stopped.value.code == 2 and "\n" not in message
    assert f"--data-dir {tmp_path}: no frames.jsonl there" in message and "depo_trl.evaluation.frames" in message
