"""Converting straight into object storage: the store writer, with chunk files uploaded as they are committed.

``convert(SOURCE, "s3://bucket/prefix/store")`` (any writable fsspec URL)
writes the store into a local scratch directory with the ordinary
:class:`~tensorstore_ds.conversion.writer.StoreWriter`, and uploads each media
chunk file by background threads (:class:`~tensorstore_ds.store.objects.Uploader`)
as soon as the writer has committed it, while decoding goes on. An uploaded
chunk file is hashed, recorded in the scratch directory's ledger
(``uploaded.jsonl``: name, size, SHA-256) and deleted locally.

Local disk is bounded: at most :data:`MAX_PENDING` committed chunk files wait
for upload (the writer blocks when they do), plus the chunk being filled in
memory, plus the small per-sample arrays, caption index and resume state,
which stay local until the end. So the scratch directory holds at most
``(MAX_PENDING + 1) x chunk size`` (144 MiB with the default 16 MiB chunks)
plus the store's small files, whatever the store's size.

Crash-resume. The writer's resume state lives in the scratch directory
(``$TENSORSTORE_DS_CACHE/upload/<hash of the URL>`` by default). A chunk
file is deleted only after its upload succeeded and the ledger says so; so a
rerun after SIGKILL continues after the last committed chunk and uploads the
committed chunks the killed run had not uploaded yet.

The end. ``finish`` compacts the small arrays as usual, uploads every
remaining file in parallel, deletes objects under the URL that the store does
not list (left by an older, overwritten conversion), and uploads
``manifest.json`` last, listing every file's size and SHA-256 (the uploaded
chunks' from the ledger). Then it deletes the lease and the scratch directory.

Two conversions into one URL: a :class:`~tensorstore_ds.store.objects.Lease`
at ``URL/.convert/lease.json`` refuses the second (see its documented limits).
A Dask task waits for a held lease to expire instead (up to its TTL): Dask
retries a shard whose worker was lost on another worker at once, and the lost
worker's lease must run out first.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from pathlib import Path
from typing import Any, cast

from ..errors import StoreError
from ..format.hashing import hash_file, store_files
from ..format.layout import TEMP_FILE, write_json_atomic
from ..format.manifest import MANIFEST, Manifest
from ..options import cache_root
from ..store.objects import LEASE, SETTLE, TTL, Lease, Uploader, delete, put_bytes, sizes
from ..store.transfer import Remote
from .writer import Plan, StoreWriter

UPLOAD_WORKERS = 4
MAX_PENDING = 8
LEDGER = "uploaded.jsonl"


def scratch_for(url: str, scratch_root: str | os.PathLike[str] | None = None) -> Path:
    """The local scratch directory of a conversion into ``url``."""
    base = Path(scratch_root) if scratch_root is not None else cache_root() / "upload"
    return base / hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]


def open_url_writer(
    url: str,
    plan: Plan,
    overwrite: bool = False,
    storage_options: dict[str, Any] | None = None,
    scratch_root: str | os.PathLike[str] | None = None,
) -> StoreWriter:
    """A writer for the store at ``url``: refuses a foreign prefix, takes the lease, resumes from scratch."""
    remote = Remote(url, storage_options)
    present = sizes(remote)
    if MANIFEST in present and not overwrite:
        return FinishedRemote(remote, plan)
    if present and MANIFEST not in present and LEASE not in present:
        shown = ", ".join(sorted(present)[:3])
        raise StoreError(
            f"{remote.url} is not empty and is not a tensorstore_ds store (holds {shown}); "
            "choose an empty prefix or overwrite=True"
        )
    lease = Lease(remote).acquire(wait=TTL + SETTLE if _in_dask_task() else 0.0)
    try:
        if overwrite:
            for name in present:
                if name != LEASE:
                    delete(remote, name)
        scratch = scratch_for(remote.url, scratch_root)
        scratch.mkdir(parents=True, exist_ok=True)
        if overwrite:
            (scratch / LEDGER).unlink(missing_ok=True)
        writer = cast(UploadingWriter, UploadingWriter.open(scratch / "store", plan, overwrite=overwrite))
        writer.attach(remote, lease, scratch)
        return writer
    except BaseException:
        _release(lease)
        raise


class FinishedRemote(StoreWriter):
    """The writer of a store already finished at its URL: ``finish`` returns its manifest."""

    def __init__(self, remote: Remote, plan: Plan) -> None:
        super().__init__(Path(remote.url), plan)
        _, self.manifest = remote.read_manifest()
        self._check_options(self.manifest.options)
        self.finished = True
        self.next_row = int(self.manifest.counts.get("rows_read", 0))

    def finish(self, counts: dict[str, Any], progress: bool | None = False) -> Manifest:
        return self.manifest


class UploadingWriter(StoreWriter):
    """A :class:`StoreWriter` into local scratch whose chunk files go to a URL as they are committed."""

    def attach(self, remote: Remote, lease: Lease, scratch: Path) -> None:
        """Start uploading (and upload what a killed run committed but did not upload)."""
        self.remote, self.lease, self.scratch = remote, lease, scratch
        self._ledger_lock = threading.Lock()
        self._uploaded = _read_ledger(scratch / LEDGER)
        self._finishing = False
        self.uploader = Uploader(remote, UPLOAD_WORKERS, MAX_PENDING, done=self._done)
        for name in store_files(self.root):
            if name in self._uploaded:
                (self.root / name).unlink()
            elif self._is_chunk(name) and not self.finished and _chunk_index(name) < self.chunks:
                self.uploader.submit(name, self.root / name)  # committed, not uploaded: a killed run's

    def _is_chunk(self, name: str) -> bool:
        media = {c.name for c in self.plan.columns if c.media}
        return name.split("/", 1)[0] in media and "/c/" in name and not TEMP_FILE.fullmatch(name.rsplit("/", 1)[-1])

    def _done(self, name: str, path: Path) -> None:
        """An uploaded chunk file: recorded in the ledger, then deleted locally."""
        size, digest = hash_file(path)
        with self._ledger_lock:
            self._uploaded[name] = {"size": size, "sha256": digest}
            with open(self.scratch / LEDGER, "a", encoding="utf-8") as f:
                f.write(json.dumps({"name": name, "size": size, "sha256": digest}) + "\n")
                f.flush()
                os.fsync(f.fileno())
        path.unlink()

    def _commit(self, rows: int) -> None:
        self.lease.check()
        super()._commit(rows)

    def committed_chunk(self, k: int, keys: list[str]) -> None:
        """Chunk ``k`` is durable (files, part, state): upload its files (the tail waits for ``finish``)."""
        if not self._finishing:
            for key in keys:
                self.uploader.submit(key, self.root / key)

    def finish(self, counts: dict[str, Any], progress: bool | None = False) -> Manifest:
        """Finish locally, upload the rest in parallel, then the manifest; release the lease."""
        try:
            self.uploader.drain()
            self._finishing = True
            local = super().finish(counts, progress)
            manifest = self._complete(local)
            self._upload_rest(manifest, progress)
            put_bytes(self.remote, MANIFEST, (self.root / MANIFEST).read_bytes())
        finally:
            self.close()
        shutil.rmtree(self.scratch, ignore_errors=True)
        return manifest

    def _complete(self, manifest: Manifest) -> Manifest:
        """The manifest with every file: the uploaded chunks from the ledger, the rest hashed here."""
        from ..format.hashing import checksum_files

        chunks = {s.chunk_key(k) for s in manifest.arrays.values() for k in range(s.num_chunks)}
        local = store_files(self.root)  # a file still here is hashed here, whatever the ledger says
        uploaded = {n: e for n, e in self._uploaded.items() if n in chunks and n not in set(local)}
        files = {**uploaded, **checksum_files(self.root, local)}
        manifest.files = dict(sorted(files.items()))
        write_json_atomic(self.root / MANIFEST, manifest.to_json())
        return manifest

    def _upload_rest(self, manifest: Manifest, progress: bool | None) -> None:
        uploader = Uploader(self.remote, UPLOAD_WORKERS, 4 * UPLOAD_WORKERS)
        try:
            for name in manifest.files:
                if (self.root / name).is_file():  # the rest was uploaded as it was committed
                    uploader.submit(name, self.root / name)
            uploader.drain()
        finally:
            uploader.close()
        for name in sizes(self.remote):
            if name not in manifest.files and name not in (LEASE, MANIFEST):
                delete(self.remote, name)

    def close(self) -> None:
        """Stop uploading and release the lease (a rerun resumes; uploads not done are redone)."""
        uploader = getattr(self, "uploader", None)
        if uploader is not None:
            uploader.close()
            self.uploader = None  # type: ignore[assignment]
            _release(self.lease)
        super().close()


def _chunk_index(name: str) -> int:
    """``k`` of a chunk file ``ARRAY/c/k/0/...``; a file past the resume state is rewritten, not uploaded."""
    return int(name.split("/c/", 1)[1].split("/", 1)[0])


def _in_dask_task() -> bool:
    """Whether this runs as a Dask task (whose retry after a lost worker must outwait the dead worker's lease)."""
    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):
        return False
    return True


def _release(lease: Lease) -> None:
    """Release the lease; if storage refuses even that, it expires by itself (never hide the first error)."""
    try:
        lease.release()
    except Exception:
        pass


def _read_ledger(path: Path) -> dict[str, dict[str, Any]]:
    """Uploaded files by name; a torn last line (a kill mid-write) is ignored."""
    found: dict[str, dict[str, Any]] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return found
    for line in lines:
        try:
            doc = json.loads(line)
            found[doc["name"]] = {"size": int(doc["size"]), "sha256": str(doc["sha256"])}
        except (ValueError, KeyError, TypeError):
            continue
    return found
