"""``retry_failed``: fetch again the rows of a finished store that failed transiently.

The result is the store a first run would have made had those rows
succeeded: the same rows in source order, the same chunk files, the failure
record and manifest counts of that run. It is made like a conversion, by the
same writer, with each source row taken from where it already is:

* a row the store holds is copied from the store (not fetched or decoded);
* a row that failed for a lasting reason (``http-404``, an undecodable
  image, ...) is recorded again with its old failure record;
* a row that failed for a transient reason (:func:`is_transient`: a timeout, a
  connection error, HTTP 5xx, 408 or 429, an open host circuit) is fetched and
  decoded again.

Protocol (crash-safe at every step, resumed by rerunning the same command):

1. the new store is written into ``OUT/.convert/retry`` by a
   :class:`~.writer.StoreWriter` (resumable like any conversion; the old store
   at ``OUT`` stays valid and untouched meanwhile);
2. once it is finished (its manifest written), :func:`swap_in` deletes the old
   manifest (``OUT`` is no longer a finished store), moves every file of the
   new store into ``OUT`` with its manifest last, deletes the old files the
   new store does not have, and removes ``OUT/.convert``. A rerun that finds a
   finished ``OUT/.convert/retry`` completes the move first.

The store must have been made with the same options as the retry (the writer
refuses others with :class:`~tensorstore_ds.errors.OptionsMismatchError`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import OptionsMismatchError, SampleError
from ..format.manifest import MANIFEST, WORK_DIR, Manifest
from ..store.store import Store, open_store
from .hosts import CIRCUIT_OPEN

__all__ = ["Previous", "is_transient", "retry_root", "swap_in"]

_TRANSIENT = frozenset({"timeout", "connection-error", CIRCUIT_OPEN, "http-408", "http-429"})


def is_transient(reason: str) -> bool:
    """Whether a failure with ``reason`` may well succeed on a later try."""
    return reason in _TRANSIENT or (reason.startswith("http-5") and len(reason) == 8)


def retry_root(out: Path) -> Path:
    """Where the retried store is built before it replaces ``out``."""
    return out / WORK_DIR / "retry"


class Previous:
    """What a finished store already holds, row by source row.

    Parameters
    ----------
    out
        The finished store.
    options, source
        The retry's content options and source description; they must be the store's.
    """

    def __init__(self, out: Path, options: dict[str, Any], source: dict[str, Any]) -> None:
        self.store: Store = open_store(out)
        manifest = self.store.manifest
        for key in [*options, *(k for k in manifest.options if k not in options)]:
            if manifest.options.get(key) != options.get(key):
                raise OptionsMismatchError(out, key, manifest.options.get(key), options.get(key))
        if manifest.source.get("fingerprint") != source.get("fingerprint"):
            raise OptionsMismatchError(out, "source", manifest.source.get("spec"), source.get("spec"))
        rows = self.store.array("source_row")
        self.index = {int(r): i for i, r in enumerate(rows[0 : len(rows)])}
        self.failures = {int(f["row"]): f for f in self.store.failures()}
        self.retried = sorted(r for r, f in self.failures.items() if is_transient(str(f["reason"])))
        self.media = [name for name in self.store.manifest.arrays if name in ("images", "image_size", "audio")]
        self.media += ["audio_length"] if "audio" in self.media else []

    def outcome(self, row: int) -> tuple[str, Any] | None:
        """``("kept", store index)``, ``("failed", SampleError)``, or None for a row to fetch again."""
        if row in self.index:
            return "kept", self.index[row]
        record = self.failures.get(row)
        if record is not None and not is_transient(str(record["reason"])):
            return "failed", (str(record["key"]), SampleError(str(record["reason"]), str(record["detail"])))
        return None

    def values(self, index: int) -> dict[str, Any]:
        """The media values of stored sample ``index`` (views into the store's chunk files)."""
        return {name: self.store.array(name)[index] for name in self.media}

    def close(self) -> None:
        """Unmap the store's files."""
        self.store.close()


def swap_in(out: Path) -> Manifest:
    """Replace the store at ``out`` by the finished retried store; idempotent after a crash."""
    new = retry_root(out)
    manifest = Manifest.read(new)
    (out / MANIFEST).unlink(missing_ok=True)
    for name in _files(new):
        if name != MANIFEST:
            target = out / name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(new / name, target)
    keep = set(manifest.files) | {MANIFEST}
    for name in _files(out):
        if name not in keep:
            (out / name).unlink()
    os.replace(new / MANIFEST, out / MANIFEST)
    shutil.rmtree(out / WORK_DIR, ignore_errors=True)
    return manifest


def _files(root: Path) -> Iterator[str]:
    """Store-relative names of the files under ``root``, outside its work directories."""
    for directory, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel = Path(directory).relative_to(root)
        for name in files:
            yield str(rel / name) if str(rel) != "." else name
