"""``pull``: copy a store from a URL to a local directory, verified and resumable.

Every file of the manifest is downloaded by parallel transfers into
``DEST/.pull/``, checked against its size and SHA-256, flushed to disk and
moved into place; ``manifest.json`` is written last, so an interrupted pull is
never mistaken for a finished store. Rerunning the same pull keeps the files that
are already in place and verified, and resumes a partial file where it
stopped (with a ranged request).
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import StoreError, StoreFormatError
from ..format.hashing import hash_file
from ..format.layout import write_bytes_atomic
from ..format.manifest import MANIFEST, PARTS_DIR, Manifest
from ..options import byte_bar
from .transfer import RETRIES, Remote, download

PULL_DIR = ".pull"


def pull(
    url: str,
    dest: str | os.PathLike[str],
    workers: int = 8,
    progress: bool = True,
    retries: int = RETRIES,
    storage_options: dict[str, Any] | None = None,
) -> Manifest:
    """Copy the store at ``url`` (any fsspec URL) into the directory ``dest``, verifying every file.

    Parameters
    ----------
    url
        The store's URL (``https://host/stores/pixmo``, ``s3://bucket/pixmo``).
    dest
        A new or empty directory, or one where a pull of the same store was
        interrupted (it is resumed) or finished (missing files are fetched).
    workers, progress
        Parallel transfers; show a progress bar (bytes).
    retries
        Consecutive failed requests tolerated per file before the pull stops.
    storage_options
        Passed to fsspec.

    Raises
    ------
    StoreError
        ``dest`` holds something else, or a transfer kept failing (rerun to resume).
    StoreFormatError
        A file on the server is missing or differs from the manifest.
    """
    remote = Remote(url, storage_options)
    raw, manifest = remote.read_manifest()
    root = Path(dest)
    if manifest.parts:
        _pull_parts(remote, raw, manifest, root, workers, progress, retries, storage_options)
        return manifest
    if _up_to_date(root, raw, manifest, remote.url):
        return manifest
    with _locked(root) as work:
        _pull_files(remote, manifest, root, work, workers, progress, retries)
        write_bytes_atomic(root / MANIFEST, raw)
    shutil.rmtree(root / PULL_DIR, ignore_errors=True)
    return manifest


def _pull_parts(
    remote: Remote,
    raw: bytes,
    manifest: Manifest,
    root: Path,
    workers: int,
    progress: bool,
    retries: int,
    storage_options: dict[str, Any] | None,
) -> None:
    """A store made of parts: each part pulled (and resumed) like a store, then the whole's manifest, last."""
    if (root / MANIFEST).exists() and (root / MANIFEST).read_bytes() != raw:
        raise StoreError(
            f"{root} holds another store (its manifest is not that of {remote.url}); pull into a new directory"
        )
    if root.is_dir() and any(e.name not in (PARTS_DIR, MANIFEST) for e in root.iterdir()):
        raise StoreError(f"{root} is not empty and is not an unfinished pull; pull into a new or empty directory")
    for part in manifest.parts:
        pull(remote.url_of(part["path"]), root / part["path"], workers, progress, retries, storage_options)
        if hash_file(root / part["path"] / MANIFEST)[1] != part["manifest_sha256"]:
            raise StoreFormatError(remote.url_of(part["path"]), "the part's manifest is not the one the store lists")
    write_bytes_atomic(root / MANIFEST, raw)


def _up_to_date(root: Path, raw: bytes, manifest: Manifest, url: str) -> bool:
    """True if ``root`` already holds this store; refuse a directory that holds anything else."""
    if (root / MANIFEST).exists():
        if (root / MANIFEST).read_bytes() != raw:
            raise StoreError(
                f"{root} holds another store (its manifest is not that of {url}); pull into a new directory"
            )
        if all(_size(root / name) == entry["size"] for name, entry in manifest.files.items()):
            shutil.rmtree(root / PULL_DIR, ignore_errors=True)
            return True
        (root / MANIFEST).unlink()  # files are missing: repair, and never look finished meanwhile
        return False
    if root.is_dir() and any(root.iterdir()) and not (root / PULL_DIR).is_dir():
        raise StoreError(f"{root} is not empty and is not an unfinished pull; pull into a new or empty directory")
    return False


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return -1


@contextmanager
def _locked(root: Path) -> Iterator[Path]:
    """The pull's work directory, locked against a second pull into the same place."""
    work = root / PULL_DIR
    work.mkdir(parents=True, exist_ok=True)
    fd = os.open(work / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(f"another process is pulling into {root}; wait for it to finish") from None
        yield work
    finally:
        os.close(fd)


def _pull_files(
    remote: Remote, manifest: Manifest, root: Path, work: Path, workers: int, progress: bool, retries: int
) -> None:

    files = sorted(manifest.files.items())
    total = sum(entry["size"] for _, entry in files)
    with (
        byte_bar(total, f"pulling {remote.url}", progress) as bar,
        ThreadPoolExecutor(max(1, workers)) as pool,
    ):
        futures = [pool.submit(_pull_one, remote, name, entry, root, work, retries, bar) for name, entry in files]
        _first_error(futures)


def _first_error(futures: list[Future[None]]) -> None:
    """Wait for every transfer; at the first failure cancel those not started and raise it."""
    for future in futures:
        try:
            future.result()
        except BaseException:
            for other in futures:
                other.cancel()
            raise


def _pull_one(remote: Remote, name: str, entry: dict[str, Any], root: Path, work: Path, retries: int, bar: Any) -> None:
    final = root / name
    if final.exists():
        if final.stat().st_size == entry["size"] and hash_file(final)[1] == entry["sha256"]:
            bar.update(entry["size"])
            return
        final.unlink()
    partial = work / name
    resumed = partial.exists()
    try:
        download(remote, name, entry, partial, resume=True, retries=retries, progress=bar, fsync=True)
    except StoreFormatError:
        if not resumed:
            raise
        download(remote, name, entry, partial, retries=retries, progress=bar, fsync=True)  # not this file's bytes
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(partial, final)
