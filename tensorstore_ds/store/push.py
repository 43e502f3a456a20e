"""``push``: copy a finished local store to a URL (``s3://``, ``gs://``, any writable fsspec URL).

The mirror of :mod:`~tensorstore_ds.store.pull`. Every file of the manifest is
uploaded by parallel transfers (:class:`~tensorstore_ds.store.objects.Uploader`)
with a progress bar in bytes; ``manifest.json`` goes last, so a reader never
takes an unfinished push for a store.

Resuming. While it runs, a push rewrites a small ledger,
``URL/.push/<manifest hash>.json``, listing the files it has uploaded. A
rerun of the same push skips every file the ledger lists whose size at the
destination is right, and a file that is there with the right size but not in
the ledger is read back and hashed: it is skipped only if its SHA-256 matches
the manifest. So no file already verified at the destination is uploaded
again. The ledger is deleted once the manifest is up.

Refusals. A destination whose ``manifest.json`` differs from the store's, or
that holds files of anything but an unfinished push of this very store, is
refused with a :class:`~tensorstore_ds.errors.StoreError` that says what is
there.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from ..errors import StoreError
from ..format.manifest import MANIFEST, Manifest
from ..options import byte_bar
from .objects import Uploader, delete, get_bytes, put_bytes, sizes
from .transfer import BLOCK, RETRIES, Remote, check_file_entries

PUSH_DIR = ".push"
LEDGER_EVERY = 2.0


def push(
    store: str | os.PathLike[str],
    url: str,
    workers: int = 8,
    progress: bool = True,
    retries: int = RETRIES,
    storage_options: dict[str, Any] | None = None,
) -> Manifest:
    """Upload the finished store directory ``store`` to ``url``; the manifest goes last.

    Parameters
    ----------
    store
        A finished store directory.
    url
        Where it goes: an empty prefix, an unfinished push of the same store
        (resumed), or a finished one (missing files are uploaded again).
    workers, progress, retries
        Parallel uploads; a progress bar (bytes); failed requests tolerated per file.
    storage_options
        Passed to fsspec (credentials, ``endpoint_url``...).

    Raises
    ------
    StoreError
        The destination holds something else, or an upload kept failing (rerun to resume).
    """
    root = Path(store)
    manifest = Manifest.read(root)
    raw = (root / MANIFEST).read_bytes()
    check_file_entries(manifest, str(root / MANIFEST))
    remote = Remote(url, storage_options)
    if manifest.parts:  # a store made of parts: each part pushed like a store, then the whole's manifest
        existing = get_bytes(remote, MANIFEST, retries)
        if existing is not None and existing != raw:
            raise StoreError(
                f"{remote.url} holds a different store (its manifest is not that of {root}); push elsewhere"
            )
        for part in manifest.parts:
            push(root / part["path"], remote.url_of(part["path"]), workers, progress, retries, storage_options)
        put_bytes(remote, MANIFEST, raw, retries)
        return manifest
    tag = hashlib.sha256(raw).hexdigest()
    present = sizes(remote, retries)
    ledger_name = f"{PUSH_DIR}/{tag[:16]}.json"
    if MANIFEST in present:
        if get_bytes(remote, MANIFEST, retries) != raw:
            raise StoreError(
                f"{remote.url} holds a different store (its manifest is not that of {root}); push elsewhere"
            )
        if all(present.get(n) == e["size"] for n, e in manifest.files.items()):
            return manifest
        delete(remote, MANIFEST)  # files are checked below; never look finished while any is missing
    _refuse_foreign(remote, manifest, present, ledger_name)
    done = _ledger(remote, ledger_name, manifest, present, retries)
    todo = [n for n in sorted(manifest.files) if n not in done]
    todo = [n for n in todo if not _verified_there(remote, n, manifest.files[n], present)]
    _upload(remote, root, manifest, todo, done, ledger_name, tag, workers, progress, retries)
    put_bytes(remote, MANIFEST, raw, retries)
    delete(remote, ledger_name)
    return manifest


def _refuse_foreign(remote: Remote, manifest: Manifest, present: dict[str, int], ledger_name: str) -> None:
    """Refuse a destination holding anything but this store's files and this push's ledger."""
    foreign = sorted(n for n in present if n not in manifest.files and n not in (ledger_name, MANIFEST))
    if foreign:
        raise StoreError(
            f"{remote.url} holds {len(foreign)} file(s) that are not part of this store "
            f"({', '.join(foreign[:3])}{'...' if len(foreign) > 3 else ''}); push into a new or empty prefix"
        )


def _ledger(remote: Remote, name: str, manifest: Manifest, present: dict[str, int], retries: int) -> set[str]:
    """Files an earlier run of this push uploaded, that are still there with their size."""
    raw = get_bytes(remote, name, retries) if name in present else None
    if raw is None:
        return set()
    try:
        listed = json.loads(raw).get("files", {})
    except (ValueError, AttributeError):
        return set()
    return {
        n
        for n, digest in listed.items()
        if n in manifest.files and manifest.files[n]["sha256"] == digest and present.get(n) == manifest.files[n]["size"]
    }


def _verified_there(remote: Remote, name: str, entry: dict[str, Any], present: dict[str, int]) -> bool:
    """A file already at the destination, with the manifest's size and SHA-256 (read back to check)."""
    if present.get(name) != entry["size"]:
        return False
    digest, pos = hashlib.sha256(), 0
    while pos < entry["size"]:
        data = remote.read(name, pos, min(entry["size"], pos + BLOCK))
        if not data:
            return False
        digest.update(data)
        pos += len(data)
    return digest.hexdigest() == entry["sha256"]


def _upload(
    remote: Remote,
    root: Path,
    manifest: Manifest,
    todo: list[str],
    done: set[str],
    ledger_name: str,
    tag: str,
    workers: int,
    progress: bool,
    retries: int,
) -> None:

    total = sum(e["size"] for e in manifest.files.values())
    lock = threading.Lock()
    bar = byte_bar(
        total, f"pushing to {remote.url}", progress, initial=total - sum(manifest.files[n]["size"] for n in todo)
    )

    def uploaded(name: str, path: Path) -> None:
        with lock:
            done.add(name)
            bar.update(manifest.files[name]["size"])

    uploader = Uploader(remote, workers, max_pending=2 * max(1, workers), done=uploaded, retries=retries)
    last = time.monotonic()
    try:
        with bar:
            for name in todo:
                uploader.submit(name, root / name)
                if time.monotonic() - last > LEDGER_EVERY:
                    _write_ledger(remote, ledger_name, manifest, done, lock, tag, retries)
                    last = time.monotonic()
            uploader.drain()
    except BaseException:
        try:  # keep what was uploaded for the rerun
            _write_ledger(remote, ledger_name, manifest, done, lock, tag, retries)
        except Exception:
            pass
        raise
    finally:
        uploader.close()


def _write_ledger(
    remote: Remote, name: str, manifest: Manifest, done: set[str], lock: threading.Lock, tag: str, retries: int
) -> None:
    with lock:
        files = {n: manifest.files[n]["sha256"] for n in sorted(done)}
    put_bytes(remote, name, json.dumps({"manifest_sha256": tag, "files": files}).encode(), retries)
