"""Build `frames.jsonl` for `--tasks frames`: the FRAMES benchmark's rows (google/frames-benchmark) with the plain
text of the Wikipedia articles each question links to, which are the context the model reads.

    python -m depo_trl.evaluation.frames --output data/eval/frames.jsonl

Run it once where the Hub and Wikipedia are reachable (`python -m depo_trl.evaluation.fetch --tasks frames` runs it
too); the evaluation then reads the file offline. An article that cannot be fetched is left out of its question's
context, and the command says how many were. The file appears under its name only once it is complete.
"""

import ast
import json
import os
from collections.abc import Callable, Iterable, Iterator
from urllib.parse import unquote, urlparse

from tqdm.auto import tqdm

from ..data.sources import read_records
from ..user_errors import ArgumentParser, UsageError, positive_int, reports_usage_errors, writable_folder
from .files import write_file


FRAMES_HUB_ID = "google/frames-benchmark"
WIKIPEDIA_API = "https://en.wikipedia.org/w/api.php"
Article = dict[str, str]  # {"title", "text"}, an item of `wiki_items`


def article_title(url: str) -> str:
    """The page a Wikipedia link names: `https://en.wikipedia.org/wiki/James_A._Garfield#Family` -> "James A.
    Garfield"."""
    return unquote(urlparse(url).path.split("/wiki/", 1)[-1]).replace("_", " ")


def wiki_links(record: dict) -> list[str]:
    """A row's article links; the benchmark's TSV holds them as a Python list written out as text."""
    links = record["wiki_links"]
    return list(ast.literal_eval(links)) if isinstance(links, str) else list(links)


def fetch_article(title: str, session) -> Article | None:
    """A Wikipedia article as plain text, redirects followed, through the MediaWiki API; None if there is none."""
    params = {
        "action": "query",
        "format": "json",
        "formatversion": 2,
        "prop": "extracts",
        "explaintext": 1,
        "redirects": 1,
        "titles": title,
    }
    response = session.get(WIKIPEDIA_API, params=params, timeout=60)
    response.raise_for_status()
    pages = response.json()["query"].get("pages", [])
    if not pages or pages[0].get("missing") or not pages[0].get("extract"):
        return None
    return {"title": pages[0]["title"], "text": pages[0]["extract"]}


def with_articles(records: Iterable[dict], fetch: Callable[[str], Article | None]) -> Iterator[tuple[dict, list[str]]]:
    """Each row with `wiki_items` (its linked articles, in link order) added, and the titles that could not be
    fetched. An article several questions link to is fetched once."""
    fetched: dict[str, Article | None] = {}
    for record in records:
        titles = [article_title(link) for link in wiki_links(record)]
        for title in titles:
            if title not in fetched:
                fetched[title] = fetch(title)
        articles = [fetched[title] for title in titles if fetched[title] is not None]
        yield {**record, "wiki_items": articles}, [title for title in titles if fetched[title] is None]


def build_frames(path: str, source: str = FRAMES_HUB_ID, split: str = "test", limit: int | None = None) -> int:
    """Write `frames.jsonl` at `path` from the benchmark `source` (a Hub id or a file) and Wikipedia; returns the
    number of linked articles that could not be fetched."""
    records = list(read_records(source, split=split, argument="--input"))[:limit]

    import requests

    session = requests.Session()
    # Wikipedia asks API clients to say who they are
    session.headers["User-Agent"] = "depo_trl-frames/0.1 (FRAMES evaluation data; python-requests)"
    missing: set[str] = set()
    with open(path, "w", encoding="utf-8") as handle:
        rows = with_articles(records, lambda title: fetch_article(title, session))
        try:
            for row, not_found in tqdm(rows, total=len(records), desc="FRAMES articles", unit="question"):
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
                missing.update(not_found)
        except requests.RequestException as error:
            reason = " ".join(str(error).split())[:200]
            raise UsageError(
                f"--input {source}: fetching the Wikipedia articles its questions link to failed ({reason}); run "
                "where en.wikipedia.org is reachable."
            ) from None
    return len(missing)


@reports_usage_errors("python -m depo_trl.evaluation.frames")
def main(argv: list[str] | None = None) -> None:
    parser = ArgumentParser(prog="python -m depo_trl.evaluation.frames", description=__doc__)
    parser.add_argument(
        "--output", required=True, help="The frames.jsonl to write, in the folder given as --data-dir."
    )
    parser.add_argument("--input", default=FRAMES_HUB_ID, help="The benchmark: a Hub id, or a .jsonl/.json file.")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=positive_int, default=None, help="Only the first N questions.")
    args = parser.parse_args(argv)
    writable_folder("--output", os.path.dirname(args.output) or ".")
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    missing = 0

    def build(path: str) -> None:
        nonlocal missing
        missing = build_frames(path, args.input, args.split, args.limit)

    write_file(args.output, build)
    with open(args.output, encoding="utf-8") as handle:
        questions = sum(1 for _ in handle)
    print(f"Wrote {questions} questions to {args.output}; {missing} linked articles could not be fetched.")


if __name__ == "__main__":
    main()
