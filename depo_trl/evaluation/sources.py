"""Where each benchmark file comes from, and how it is fetched into `--data-dir`.

A task's data (`EvalTask.data`) is a tuple of `DataFile`s: the name its loader reads under `--data-dir`, and its
source, one of:

- `HubFile`: a file of a Hub dataset repository at a pinned revision, or one member of a zip archive there;
- `HubSplit`: a split of a Hub dataset, read with `datasets` and written as JSON lines;
- `WebFile`: a published URL, or one member of a zip archive there;
- `BuiltFile`: a file a command of this project builds from other sources.

`fetch(path)` writes the file whole (see `files.write_file`): a kill or a failure leaves nothing under `path`. A
download from a URL goes to `<path>.download` first and is resumed from there by the next try; the Hub's files are
cached (and resumed) by `huggingface_hub`.
"""

import io
import json
import os
import shutil
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass

from tqdm.auto import tqdm

from ..data.sources import read_records
from ..user_errors import in_hub_cache
from .files import write_file, write_whole


USER_AGENT = "depo_trl-fetch/0.1 (evaluation data; python-urllib)"
TIMEOUT_S = 60  # per blocking socket operation, not for the whole download
CHUNK_BYTES = 1 << 20


@dataclass(frozen=True, kw_only=True)
class DataFile:
    """A file a task reads under `--data-dir`.

    Attributes:
        name: its path under `--data-dir`, where `python -m depo_trl.evaluation.fetch` puts it.
        also: other names the loader reads in its place when `name` is not there (the original's file name, the test
            fixtures' samples).
    """

    name: str
    also: tuple[str, ...] = ()

    @property
    def origin(self) -> str:
        """Where it comes from, in words and exact names, for the documentation and the error messages."""
        raise NotImplementedError

    def fetch(self, path: str) -> None:
        """Write the file, whole, at `path`."""
        raise NotImplementedError

    def fetchable_offline(self) -> bool:
        """Whether it can be fetched with the network off (offline mode): from the local Hub cache."""
        return False

    def find(self, data_dir: str | None) -> str | None:
        """The first of its names that is a file under `data_dir`; None if none is (or no `data_dir`)."""
        if data_dir is None:
            return None
        paths = (os.path.join(data_dir, name) for name in (self.name, *self.also))
        return next((path for path in paths if os.path.isfile(path)), None)


@dataclass(frozen=True, kw_only=True)
class HubFile(DataFile):
    """`filename` of the Hub dataset `repo_id` at `revision`, or its zip archive's `member`."""

    repo_id: str
    filename: str
    revision: str
    member: str | None = None

    @property
    def origin(self) -> str:
        where = f"{self.filename} of the Hub dataset {self.repo_id} (revision {self.revision})"
        return f"{self.member} in {where}" if self.member else where

    def download(self) -> str:
        """The file in the local Hub cache, downloaded there first if needed."""
        from huggingface_hub import hf_hub_download

        return hf_hub_download(self.repo_id, self.filename, repo_type="dataset", revision=self.revision)

    def fetch(self, path: str) -> None:
        cached = self.download()
        write_file(path, lambda temporary: copy_out(cached, self.member, temporary))

    def fetchable_offline(self) -> bool:
        return in_hub_cache(self.repo_id, "dataset")

    def records(self) -> list[dict]:
        """Its records, read from the local Hub cache, for a task whose file is not under `--data-dir`."""
        cached = self.download()
        if self.member is None:
            return list(read_records(cached, argument="--data-dir"))
        with zipfile.ZipFile(cached) as archive, archive.open(self.member) as member:
            return [json.loads(line) for line in io.TextIOWrapper(member, encoding="utf-8") if line.strip()]


@dataclass(frozen=True, kw_only=True)
class HubSplit(DataFile):
    """The split `split` (of `config`) of the Hub dataset `repo_id`, as JSON lines; `gated` when the Hub asks users to
    accept its terms before downloading."""

    repo_id: str
    split: str
    config: str | None = None
    gated: bool = False

    @property
    def origin(self) -> str:
        config = f", config {self.config}" if self.config else ""
        gated = " (gated: accept its terms on the Hub, then log in with `hf auth login`)" if self.gated else ""
        return f"split {self.split}{config} of the Hub dataset {self.repo_id}{gated}"

    def records(self) -> list[dict]:
        """Its rows, through `datasets.load_dataset` (which caches them)."""
        from datasets import load_dataset

        return list(load_dataset(self.repo_id, self.config, split=self.split))

    def fetch(self, path: str) -> None:
        rows = self.records()
        write_whole(path, lambda handle: handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))

    def fetchable_offline(self) -> bool:
        return in_hub_cache(self.repo_id, "dataset")


@dataclass(frozen=True, kw_only=True)
class WebFile(DataFile):
    """The file at `url`, or its zip archive's `member`; `published_by` says who links to it, and at which commit."""

    url: str
    published_by: str
    member: str | None = None

    @property
    def origin(self) -> str:
        where = f"{self.url} (linked from {self.published_by})"
        return f"{self.member} in {where}" if self.member else where

    def fetch(self, path: str) -> None:
        archive = f"{path}.download"
        download(self.url, archive)
        try:
            write_file(path, lambda temporary: copy_out(archive, self.member, temporary))
        except zipfile.BadZipFile:
            os.remove(archive)  # whole, but a page in its place: the next try downloads it again
            raise ValueError(f"{self.url} sent something other than a zip archive (a quota or error page?)") from None
        except MissingMember:
            os.remove(archive)  # whole, but another archive: likewise
            raise
        os.remove(archive)


@dataclass(frozen=True, kw_only=True)
class BuiltFile(DataFile):
    """A file `build(path)` writes from its sources, `made_from` in words."""

    made_from: str
    build: Callable[[str], None]

    @property
    def origin(self) -> str:
        return self.made_from

    def fetch(self, path: str) -> None:
        write_file(path, self.build)


class MissingMember(ValueError):
    """A zip archive without the member a source names."""


def copy_out(source: str, member: str | None, target: str) -> None:
    """Copy `source`, or its zip archive's `member`, to `target`."""
    if member is None:
        shutil.copyfile(source, target)
        return
    with zipfile.ZipFile(source) as archive:
        if member not in archive.namelist():
            raise MissingMember(f"the archive has no {member}")
        with archive.open(member) as packed, open(target, "wb") as handle:
            shutil.copyfileobj(packed, handle, CHUNK_BYTES)


def download(url: str, target: str) -> None:
    """`url` into `target` with a progress bar, continuing a `target` that an earlier try left part-way where the
    server takes a byte range (else starting again)."""
    have = os.path.getsize(target) if os.path.isfile(target) else 0
    headers = {"User-Agent": USER_AGENT} | ({"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT_S)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:  # nothing after what we have: the earlier try got it all
            return
        raise
    with response:
        resumed = have > 0 and getattr(response, "status", None) == 206
        have = have if resumed else 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length else None
        name = os.path.basename(target).removesuffix(".download")
        with (
            open(target, "ab" if resumed else "wb") as handle,
            tqdm(total=total, initial=have, unit="B", unit_scale=True, desc=name) as progress,
        ):
            while chunk := response.read(CHUNK_BYTES):
                handle.write(chunk)
                progress.update(len(chunk))
    if total is not None and os.path.getsize(target) != total:
        raise OSError(
            f"{url}: the transfer stopped at {os.path.getsize(target)} of {total} bytes; run again to resume"
        )
