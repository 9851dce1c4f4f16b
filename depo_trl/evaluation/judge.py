"""The pairwise judge of the context-length study: an OpenAI-compatible chat endpoint is asked which of two answers to
the same question is better written, once with each answer shown first.

Requests run concurrently in a bounded pool; connection errors, timeouts, HTTP 429 and 5xx are retried with
exponential backoff; every reply is cached on disk, keyed by (judge model, prompt), so an interrupted study resumes
without asking (or paying) twice. A reply without a readable verdict is counted as malformed, never guessed.

The judge compares formal linguistic quality only, along the three dimensions of the paper's judge (appendix C.4):
grammar and correctness, fluency and naturalness, structure and logic. The prompt's wording is this project's, not the
paper's; its setup (a pair of answers, both presentation orders averaged) follows the paper.
"""

import hashlib
import itertools
import json
import re
import statistics
import threading
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

import requests
from tqdm.auto import tqdm

from ..user_errors import UsageError
from .files import append_rows, read_rows


API_KEY_VARIABLES = ("DEPO_JUDGE_API_KEY", "OPENAI_API_KEY")  # the first one set is sent as the bearer token
CRITERIA = ("Grammar and correctness", "Fluency and naturalness", "Structure and logic")
JUDGE_PROMPT = """You are comparing two answers to the same question on the quality of their written language alone. \
Do not judge whether an answer is factually right, complete or on topic: judge only how well it is written, along \
three dimensions:

1. Grammar and correctness: spelling, punctuation and syntax are right, words are chosen precisely, and the text \
follows the conventions of standard written English.
2. Fluency and naturalness: the text reads easily and flows from one sentence to the next, without awkward, \
unnatural or redundant phrasing.
3. Structure and logic: the text is well organised, and its chain of argument is clear and consistent with itself.

The order in which the answers are shown and their length must not affect your judgement.

[Question]
{question}

[Answer A]
{answer_a}

[Answer B]
{answer_b}

Compare the two answers briefly on each dimension, then end with one line that is exactly "Verdict: A", \
"Verdict: B" or "Verdict: tie"."""
_VERDICT_LINE = re.compile(r"^\W*verdict\W*:\W*(a|b|tie)\W*$", re.IGNORECASE)
# How a verdict scores the answer shown as A (the one shown as B scores 1 minus this)
_SCORE_OF_A = {"A": 1.0, "B": 0.0, "TIE": 0.5}


def judge_prompt(question: str, answer_a: str, answer_b: str) -> str:
    return JUDGE_PROMPT.format(question=question, answer_a=answer_a.strip(), answer_b=answer_b.strip())


def parse_verdict(reply: str) -> str | None:
    """The verdict ("A", "B" or "TIE") of the reply's "Verdict:" lines; None if there is none or they disagree."""
    verdicts = {match[1].upper() for line in reply.splitlines() if (match := _VERDICT_LINE.match(line.strip()))}
    return verdicts.pop() if len(verdicts) == 1 else None


class JudgeCache:
    """Judge replies on disk, one JSON line per reply, keyed by a hash of (judge model, prompt); safe across threads.
    Each reply is synced to disk as it arrives; a last line cut short by a kill is dropped (see `files.py`)."""

    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()
        self._replies: dict[str, str] = {row["key"]: row["reply"] for row in read_rows(path)}

    @staticmethod
    def key(model: str, prompt: str) -> str:
        return hashlib.sha256(json.dumps([model, prompt]).encode()).hexdigest()

    def get(self, model: str, prompt: str) -> str | None:
        return self._replies.get(self.key(model, prompt))

    def put(self, model: str, prompt: str, reply: str) -> None:
        key = self.key(model, prompt)
        with self._lock:
            self._replies[key] = reply
            append_rows(self.path, [{"key": key, "model": model, "reply": reply}])


@dataclass
class JudgeClient:
    """`POST {url}/chat/completions`, greedy, retried on transient failures with exponential backoff."""

    url: str
    model: str
    api_key: str | None = None
    max_retries: int = 5
    backoff_s: float = 1.0
    timeout_s: float = 300.0
    max_tokens: int = 512

    def complete(self, prompt: str) -> str:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        body = {
            "model": self.model,
            "messages": [{"role": "user", "content": prompt}],
            "temperature": 0.0,
            "max_tokens": self.max_tokens,
        }
        for attempt in range(self.max_retries + 1):
            try:
                response = requests.post(
                    f"{self.url.rstrip('/')}/chat/completions", json=body, headers=headers, timeout=self.timeout_s
                )
            except (requests.ConnectionError, requests.Timeout) as error:
                failure = type(error).__name__
            else:
                if response.status_code == 429 or response.status_code >= 500:
                    failure = f"HTTP {response.status_code}"
                elif not response.ok:  # a wrong model name, key or URL: retrying cannot help
                    raise UsageError(
                        f"--judge-url {self.url}: HTTP {response.status_code} "
                        f"({' '.join(response.text.split())[:200]})"
                        f"; check --judge-url, --judge-model and the key in {' or '.join(API_KEY_VARIABLES)}."
                    )
                else:
                    return response.json()["choices"][0]["message"]["content"] or ""
            if attempt < self.max_retries:
                time.sleep(self.backoff_s * 2**attempt)
        raise UsageError(
            f"--judge-url {self.url}: no answer after {self.max_retries + 1} tries (last: {failure}); check that the "
            "server is up, then run again: the replies received so far are cached."
        )


def ask_judge(
    client: JudgeClient, cache: JudgeCache, prompts: Sequence[str], concurrency: int
) -> tuple[list[str], int]:
    """The reply to every prompt, from the cache or from at most `concurrency` requests at a time; each reply is
    cached as it arrives. Returns the replies in order and the number of requests made."""
    todo = [prompt for prompt in dict.fromkeys(prompts) if cache.get(client.model, prompt) is None]
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        futures = {pool.submit(client.complete, prompt): prompt for prompt in todo}
        try:
            for future in tqdm(as_completed(futures), total=len(futures), desc="Judging", unit="request"):
                cache.put(client.model, futures[future], future.result())
        except BaseException:
            pool.shutdown(cancel_futures=True)  # a failure no retry fixed: stop now, the cache keeps what arrived
            raise
    return [cache.get(client.model, prompt) for prompt in prompts], len(todo)


@dataclass
class PairwiseResult:
    """`win_rate[i][j]`: how often the answer at length i beats the one at length j (a tie counts one half), the two
    presentation orders averaged; `judged[i][j]`: the readable verdicts behind it. The diagonal is None."""

    win_rate: list[list[float | None]]
    judged: list[list[int]]
    malformed_replies: list[dict]
    requests: int
    cached: int


def compare_lengths(
    questions: Sequence[str],
    answers: Sequence[Sequence[str]],
    client: JudgeClient,
    cache: JudgeCache,
    concurrency: int = 8,
) -> PairwiseResult:
    """Judge every question's answers at every pair of lengths (`answers[q][i]`: question q at length i), in both
    orders, and turn the verdicts into a win-rate matrix.

    The win rate of i over j is the mean of its two per-order win rates: over the readable verdicts with i shown as
    A, and over those with j shown as A. An order without any is left out of the mean; a pair without any is None.
    """
    size = len(answers[0]) if answers else 0
    pairs = list(itertools.combinations(range(size), 2))
    jobs = [  # (question, length shown as A, length shown as B)
        (q, first, second) for q in range(len(questions)) for i, j in pairs for first, second in ((i, j), (j, i))
    ]
    prompts = [judge_prompt(questions[q], answers[q][a], answers[q][b]) for q, a, b in jobs]
    replies, requests_made = ask_judge(client, cache, prompts, concurrency)

    scores_of_a: dict[tuple[int, int], list[float]] = defaultdict(list)
    malformed = []
    for (q, a, b), reply in zip(jobs, replies):
        verdict = parse_verdict(reply)
        if verdict is None:
            malformed.append({"question": questions[q], "shown_as_a": a, "shown_as_b": b, "reply": reply})
        else:
            scores_of_a[a, b].append(_SCORE_OF_A[verdict])
    win_rate: list[list[float | None]] = [[None] * size for _ in range(size)]
    judged = [[0] * size for _ in range(size)]
    for i, j in pairs:
        shown_first, shown_second = scores_of_a[i, j], [1.0 - score for score in scores_of_a[j, i]]
        per_order = [statistics.fmean(scores) for scores in (shown_first, shown_second) if scores]
        judged[i][j] = judged[j][i] = len(shown_first) + len(shown_second)
        if per_order:
            win_rate[i][j] = statistics.fmean(per_order)
            win_rate[j][i] = 1.0 - win_rate[i][j]
    return PairwiseResult(win_rate, judged, malformed, requests_made, len(set(prompts)) - requests_made)
