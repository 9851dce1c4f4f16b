"""The context-length study of the paper's Fig. 1: MuSiQue questions asked with contexts of growing length, F1 and mean
sampling latency per length, and a pairwise judge of the answers' linguistic quality across lengths.

    python -m depo_trl.evaluation.context_study --model runs/qwen2.5-7b-instruct/depo-grpo \
        --input musique_ans_v1.0_dev.jsonl --lengths 1k,2k,4k,8k,16k,32k --limit 100 --backend vllm \
        --output-dir eval --judge-url http://localhost:8001/v1 --judge-model Qwen/Qwen2.5-72B-Instruct

Each question's context at each length is built by the training data's builder (gold paragraphs, then the question's
own hard negatives, then other questions' paragraphs, up to the length in tokens of the rendered chat prompt), asked
in the training template, answered greedily and scored in the lenient reading (`scoring.template_lenient`). Latency
is the wall time of one generate call per question (batch size 1: the prefill and decoding of one answer), averaged
over the questions; one untimed call warms the backend up first. The judge (`depo_trl.evaluation.judge`) compares
each question's answers at every pair of lengths.

Per model, under `<output-dir>/<model>/`: `context_study/<tokens>.jsonl` (every answer: `id, prompt_tokens, raw,
pred, answers, f1, em, latency_s`), `context_study.json` (F1, EM and latency by length, the judge's win-rate matrix
and counts), and F1 and latency rows in `scores.json`; at the top, `results.md` and `context_study.png` (F1 and
latency curves beside one win-rate heat map per model). Answers and judge replies on disk are not asked for again.
"""

import json
import os
import re
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from ..data.builder import ContextBuilder
from ..data.sources import QAExample, adapt_numbered, numbered_records
from ..data.template import user_messages
from ..model_utils import load_tokenizer
from ..user_errors import (
    ArgumentParser,
    UsageError,
    check_model_source,
    hub_failure,
    positive_int,
    reports_usage_errors,
    require_folder,
    writable_folder,
)
from .backends import make_backend
from .files import append_rows, write_json
from .judge import API_KEY_VARIABLES, CRITERIA, JudgeCache, JudgeClient, compare_lengths
from .report import merge_scores, model_folder_name, write_results
from .runner import read_predictions
from .scoring import template_lenient
from .tasks import TEMPLATE_MAX_NEW_TOKENS
from .tasks.multihop_qa import moderate_examples


DEFAULT_LENGTHS = "1k,2k,4k,8k,16k,32k"
WARM_UP_TOKENS = 8  # the untimed first call: enough to run every kernel once, so the first timed answer pays no setup
_LENGTH = re.compile(r"^(\d+(?:\.\d+)?)([kK]?)$")


def parse_lengths(spec: str) -> list[int]:
    """Comma-separated lengths in tokens, `1k` = 1024 (`0.5k,1k,2k`, or `512,1024`); sorted, at least two."""
    lengths = set()
    for part in filter(None, (part.strip() for part in spec.split(","))):
        match = _LENGTH.match(part)
        tokens = round(float(match[1]) * (1024 if match[2] else 1)) if match else 0
        if tokens <= 0:
            raise UsageError(f"--lengths {part}: not a length; use token counts or 0.5k, 1k, 2k, ... (1k = 1024).")
        lengths.add(tokens)
    if len(lengths) < 2:
        raise UsageError(f"--lengths {spec}: the study compares lengths; give at least two, e.g. {DEFAULT_LENGTHS}.")
    return sorted(lengths)


def length_label(tokens: int) -> str:
    """`0.5K`, `1K`, `1.5K`, `32K` for multiples of 512 tokens; the token count otherwise."""
    return f"{tokens / 1024:g}K" if tokens % 512 == 0 else str(tokens)


def musique_examples(input_path: str | None, data_dir: str | None) -> list[QAExample]:
    """Answerable MuSiQue questions from `--input` (MuSiQue's JSON-lines file), or `--data-dir` as the `musique` task
    reads it."""
    if input_path is None:
        return moderate_examples("musique", data_dir)
    examples, _ = adapt_numbered("musique", numbered_records(input_path, argument="--input"), f"--input {input_path}")
    if not examples:
        raise UsageError(f"--input {input_path}: no answerable MuSiQue question; pass MuSiQue's dev file.")
    return examples


@dataclass
class StudyQuestion:
    """A question with its user message and the message's rendered length in tokens at each study length."""

    example: QAExample
    contents: list[str]
    tokens: list[int]


def study_questions(
    examples: Sequence[QAExample], tokenizer: PreTrainedTokenizerBase, lengths: Sequence[int], limit: int, seed: int
) -> list[StudyQuestion]:
    """The first `limit` questions whose contexts the builder can make at every length (so every length asks the same
    questions), with distractors from all of `examples`."""
    builders = [ContextBuilder(tokenizer, examples, short_budget=n, long_budget=n, seed=seed) for n in lengths]
    questions = []
    for example in examples:
        built = [builder.build_contexts(example) for builder in builders]
        if any(isinstance(contexts, str) for contexts in built):  # the gold paragraphs alone exceed a length
            continue
        questions.append(StudyQuestion(example, [c.short_content for c in built], [c.short_tokens for c in built]))
        if len(questions) == limit:
            break
    return questions


def timed_answer(backend, question: StudyQuestion, index: int, max_new_tokens: int, desc: str) -> dict:
    """The greedy answer at length number `index`, scored, with the wall time of its generate call."""
    conversation = user_messages(question.contents[index])
    start = time.perf_counter()
    raw = backend.generate([conversation], max_new_tokens, desc=desc)[0]
    latency = time.perf_counter() - start
    # The lenient reading (the training rewards'): no official code produced the paper's Fig. 1
    score = template_lenient(raw, question.example.answers)
    row = {"id": question.example.id, "prompt_tokens": question.tokens[index], "raw": raw, "pred": score.pred}
    return row | {"answers": question.example.answers, **score.metrics, "latency_s": round(latency, 4)}


@dataclass
class StudySettings:
    lengths: list[int]
    output_dir: str
    backend: str = "hf"
    limit: int = 100
    max_new_tokens: int = TEMPLATE_MAX_NEW_TOKENS
    seed: int = 0
    judge: JudgeClient | None = None
    judge_concurrency: int = 8


def _mean(values: Sequence[float], digits: int) -> float:
    return round(statistics.fmean(values), digits)


def study_model(model: str, examples: Sequence[QAExample], settings: StudySettings) -> dict:
    """Answer what is missing at every length, judge, and write `context_study.json` and the `scores.json` rows."""
    folder = os.path.join(settings.output_dir, model_folder_name(model))
    os.makedirs(os.path.join(folder, "context_study"), exist_ok=True)
    try:
        tokenizer = load_tokenizer(model)
    except OSError as error:  # a Hub id that is neither cached nor reachable
        raise hub_failure("--model", model, error, "pass a model folder") from None
    questions = study_questions(examples, tokenizer, settings.lengths, settings.limit, settings.seed)
    if not questions:
        raise UsageError(
            f"--lengths {length_label(settings.lengths[0])}: no question's gold paragraphs fit this length with "
            f"{model}'s tokenizer; raise the smallest length."
        )
    backend, rows = None, []
    for index, length in enumerate(settings.lengths):
        path = os.path.join(folder, "context_study", f"{length}.jsonl")
        done = read_predictions(path)
        todo = [question for question in questions if question.example.id not in done]
        if todo and backend is None:
            backend = make_backend(
                settings.backend, model, tokenizer, max(settings.lengths) + settings.max_new_tokens, batch_size=1
            )
            backend.generate([user_messages(todo[0].contents[index])], WARM_UP_TOKENS, desc="warm-up (untimed)")
        for number, question in enumerate(todo, start=1):
            desc = f"{model_folder_name(model)} / {length_label(length)} / {number}/{len(todo)}"
            row = timed_answer(backend, question, index, settings.max_new_tokens, desc)
            append_rows(path, [row])  # an interrupted study keeps every answer it paid for
        predictions = read_predictions(path)
        rows.append([predictions[question.example.id] for question in questions])

    labels = [length_label(length) for length in settings.lengths]
    study = {
        "model": model,
        "lengths": settings.lengths,
        "labels": labels,
        "questions": len(questions),
        "backend": settings.backend,
        "latency": "wall time of one greedy generate call per question (batch size 1), mean over the questions",
        "f1": [_mean([row["f1"] for row in at_length], 2) for at_length in rows],
        "em": [_mean([row["em"] for row in at_length], 2) for at_length in rows],
        "latency_s": [_mean([row["latency_s"] for row in at_length], 4) for at_length in rows],
        "prompt_tokens": [_mean([row["prompt_tokens"] for row in at_length], 1) for at_length in rows],
        "judge": None,
    }
    if settings.judge is not None:
        pairwise = compare_lengths(
            [question.example.question for question in questions],
            [[at_length[q]["raw"] for at_length in rows] for q in range(len(questions))],
            settings.judge,
            JudgeCache(os.path.join(settings.output_dir, "judge_cache.jsonl")),
            settings.judge_concurrency,
        )
        study["judge"] = {
            "model": settings.judge.model,
            "prompt": "the paper's criteria (appendix C.4) in this project's words (depo_trl/evaluation/judge.py)",
            "criteria": list(CRITERIA),
            "win_rate": pairwise.win_rate,
            "judged": pairwise.judged,
            "malformed": len(pairwise.malformed_replies),
            "requests": pairwise.requests,
            "cached": pairwise.cached,
            "malformed_replies": pairwise.malformed_replies,
        }
    write_json(os.path.join(folder, "context_study.json"), study, ensure_ascii=False)
    merge_scores(
        folder,
        {
            "context_study_f1": dict(zip(labels, study["f1"])),
            "context_study_latency_s": dict(zip(labels, study["latency_s"])),
        },
    )
    return study


def plot_context_study(studies: dict[str, dict], path: str) -> None:
    """F1 and latency against length (one line per model), then one win-rate heat map per judged model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    judged = {model: study for model, study in studies.items() if study.get("judge")}
    figure, axes = plt.subplots(1, 2 + len(judged), figsize=(4.4 * (2 + len(judged)), 3.8), squeeze=False)
    f1_axis, latency_axis, *heat_axes = axes[0]
    ticks = sorted({length for study in studies.values() for length in study["lengths"]})
    for model, study in studies.items():
        f1_axis.plot(study["lengths"], study["f1"], marker="o", label=model)
        latency_axis.plot(study["lengths"], study["latency_s"], marker="o", label=model)
    for axis, label in ((f1_axis, "F1 x100"), (latency_axis, "mean latency (s per answer)")):
        axis.set_xscale("log", base=2)
        axis.set_xticks(ticks, [length_label(length) for length in ticks])
        axis.minorticks_off()
        axis.set_xlabel("prompt length (tokens)")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    f1_axis.set_title("MuSiQue F1 by context length")
    latency_axis.set_title("Sampling latency")
    f1_axis.legend(fontsize=7)
    for axis, (model, study) in zip(heat_axes, judged.items()):
        win_rate = study["judge"]["win_rate"]
        matrix = [[float("nan") if value is None else value for value in row] for row in win_rate]
        image = axis.imshow(matrix, vmin=0.0, vmax=1.0, cmap="RdBu")
        for i, row in enumerate(win_rate):
            for j, value in enumerate(row):
                if value is not None:
                    axis.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7)
        axis.set_xticks(range(len(study["labels"])), study["labels"])
        axis.set_yticks(range(len(study["labels"])), study["labels"])
        axis.set_xlabel("against (column)")
        axis.set_ylabel("win rate of (row)")
        axis.set_title(f"{model}: judged quality", fontsize=9)
        figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def run_study(models: Sequence[str], examples: Sequence[QAExample], settings: StudySettings) -> dict[str, dict]:
    """Study every model, then (re)write `context_study.png` and `results.md` over all studies in the output dir."""
    for model in models:
        study_model(model, examples, settings)
    studies = {}
    for name in sorted(os.listdir(settings.output_dir)):
        path = os.path.join(settings.output_dir, name, "context_study.json")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as handle:
                studies[name] = json.load(handle)
    plot_context_study(studies, os.path.join(settings.output_dir, "context_study.png"))
    write_results(settings.output_dir)
    return studies


@reports_usage_errors("python -m depo_trl.evaluation.context_study")
def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m depo_trl.evaluation.context_study", description=__doc__)
    parser.add_argument("--model", action="append", required=True, help="Hub id or path; repeat for several.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", help="MuSiQue's JSON-lines file (musique_ans_v1.0_dev.jsonl) or a Hub dataset id.")
    source.add_argument("--data-dir", help="A folder with musique_dev.jsonl, as for python -m depo_trl.evaluation.")
    parser.add_argument(
        "--lengths", default=DEFAULT_LENGTHS, help=f"Prompt lengths in tokens, 1k = 1024 (default {DEFAULT_LENGTHS})."
    )
    parser.add_argument("--limit", type=positive_int, default=100, help="Questions per length (default 100).")
    parser.add_argument("--backend", choices=["vllm", "hf"], default="vllm")
    parser.add_argument("--max-new-tokens", type=positive_int, default=TEMPLATE_MAX_NEW_TOKENS)
    parser.add_argument("--seed", type=int, default=0, help="Distractor choice and order (the builder's seed).")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument(
        "--judge-url", help="OpenAI-compatible base URL, e.g. http://localhost:8001/v1; no judge if unset."
    )
    parser.add_argument("--judge-model", help="The model name the judge endpoint serves.")
    parser.add_argument("--judge-concurrency", type=positive_int, default=8, help="Judge requests at once.")
    args = parser.parse_args(argv)
    if (args.judge_url is None) != (args.judge_model is None):
        missing = "--judge-model" if args.judge_model is None else "--judge-url"
        raise UsageError(f"{missing} not given: the judge needs both --judge-url and --judge-model.")
    if args.judge_url is not None and not args.judge_url.startswith(("http://", "https://")):
        raise UsageError(f"--judge-url {args.judge_url}: not an http(s) URL; pass e.g. http://localhost:8001/v1.")
    if args.data_dir is not None:
        require_folder("--data-dir", args.data_dir, "pass the folder that holds musique_dev.jsonl")
    writable_folder("--output-dir", args.output_dir)
    for model in args.model:
        check_model_source("--model", model)
    api_key = next((os.environ[name] for name in API_KEY_VARIABLES if os.environ.get(name)), None)
    judge = JudgeClient(args.judge_url, args.judge_model, api_key) if args.judge_url else None
    settings = StudySettings(
        lengths=parse_lengths(args.lengths),
        output_dir=args.output_dir,
        backend=args.backend,
        limit=args.limit,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        judge=judge,
        judge_concurrency=args.judge_concurrency,
    )
    os.makedirs(args.output_dir, exist_ok=True)
    run_study(args.model, musique_examples(args.input, args.data_dir), settings)
    with open(os.path.join(args.output_dir, "results.md"), encoding="utf-8") as handle:
        print(handle.read())


if __name__ == "__main__":
    main()
