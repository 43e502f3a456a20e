"""The store writer: samples in, chunk files out, resumable after any crash.

Samples arrive in source order. Media rows are buffered into one chunk at a
time; a full chunk is committed by writing its chunk files, then a part file
with the chunk's small per-sample values, text and failures, then the state
file, each atomically. A rerun reads the state and continues from the first
source row after the last committed chunk, so the finished store is identical
to an uninterrupted run. ``finish`` compacts the parts into the small arrays,
the caption index and ``failures.jsonl``, then writes the manifest last.

Writing elsewhere: when the conversion has decode processes
(:meth:`StoreWriter.use_processes`), one of them gathers, writes (with
``fsync``) and hashes each chunk file (see ``chunkio``); the writer only notes
where each row is. The part file and the state follow once that write has
returned, so the order above (chunk files, part file, state) still holds
chunk by chunk, and at most one chunk is on its way while the next fills.
The digest is kept in the part file (``files``); ``finish`` hashes only the
files it has no digest for (small arrays, the caption index).

An operating-system error while writing (a full disk, a quota, an I/O error)
raises :class:`~tensorstore_ds.errors.StoreWriteError`, which keeps ``errno``
and says how many samples are committed; the rerun resumes from there.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import OptionsMismatchError, StoreError, StoreLockedError, StoreWriteError
from ..format.hashing import ALGORITHM, checksum_files, store_files
from ..format.layout import (
    TEMP_FILE,
    ArraySpec,
    write_group_metadata,
    write_json_atomic,
)
from ..format.manifest import FORMAT_VERSION, MANIFEST, RESERVED_DIRS, WORK_DIR, Manifest
from .chunkio import ChunkBuffers, ChunkWrite, Staged, read_staged, settle_chunk_file, write_chunk_from
from .compact import compact, read_json
from .staging import StagedRow

SMALL_CHUNK_ROWS = 2**20
_Pending = tuple[int, int, list[ChunkWrite], dict[str, Any]]  # chunk, buffer, its files, its state and part


@dataclass(frozen=True)
class Column:
    """One per-sample array the writer fills.

    Parameters
    ----------
    name
        Array name in the store.
    row_shape
        Shape of one sample's value.
    dtype
        Numpy dtype name.
    media
        Media arrays are written chunk by chunk during conversion; the others
        are small and are compacted into few files at the end.
    """

    name: str
    row_shape: tuple[int, ...]
    dtype: str
    media: bool


@dataclass(frozen=True)
class Plan:
    """What a conversion writes, fixed before the first sample.

    Parameters
    ----------
    columns
        Per-sample arrays.
    text
        Text columns and their encodings.
    chunk_rows
        Samples per media chunk file.
    options
        Preprocessing options; a resume must match them exactly.
    source
        Source description (kind, spec, fingerprint).
    """

    columns: tuple[Column, ...]
    text: dict[str, str]
    chunk_rows: int
    options: dict[str, Any]
    source: dict[str, Any]


class StoreWriter:
    """Writes one store; use :meth:`open`, then :meth:`add`, then :meth:`finish`.

    Parameters
    ----------
    root
        The store directory.
    plan
        What to write.
    """

    def __init__(self, root: Path, plan: Plan) -> None:
        self.root = root
        self.plan = plan
        self.work = root / WORK_DIR
        self._lock_fd: int | None = None
        self._made_work = False  # this writer created the work directory (so it may remove it)
        self.finished = False
        self.chunks = 0
        self.next_row = 0
        self.converted = 0
        self.failed = 0
        self.committed = 0  # samples in committed chunks
        self._buffers = {c.name: np.empty((plan.chunk_rows, *c.row_shape), c.dtype) for c in plan.columns if c.media}
        self._part: dict[str, Any] = self._empty_part()
        self.offload: Callable[..., Future[Any] | None] | None = None  # runs a function in another process
        self._shared: ChunkBuffers | None = None
        self._staged: dict[str, Staged] = {c.name: [] for c in plan.columns if c.media}
        self._pending: deque[_Pending] = deque()

    # --- lifecycle ----------------------------------------------------------

    @classmethod
    def open(cls, root: str | os.PathLike[str], plan: Plan, overwrite: bool = False) -> StoreWriter:
        """Lock ``root`` and start or resume a conversion into it."""
        writer = cls(Path(root), plan)
        writer._made_work = not writer.work.exists()
        with writer._writing():
            writer.root.mkdir(parents=True, exist_ok=True)
            writer._lock()
        try:
            with writer._writing():
                if overwrite:
                    writer._clear()
                writer._resume()
        except BaseException:
            writer.close()
            raise
        return writer

    def _lock(self) -> None:
        self.work.mkdir(exist_ok=True)
        fd = os.open(self.work / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise StoreLockedError(self.root, int(holder) if holder.isdigit() else -1) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd

    def close(self) -> None:
        """Release the lock (the kernel also releases it if the process dies)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _clear(self) -> None:
        is_store = any((self.root / p).exists() for p in (MANIFEST, "zarr.json", f"{WORK_DIR}/state.json"))
        others = [e.name for e in self.root.iterdir() if e.name not in RESERVED_DIRS]
        if others and not is_store:
            self._refuse(
                f"refusing to overwrite {self.root}: it holds {sorted(others)[:5]} and is not a tensorstore_ds store"
            )
        for entry in self.root.iterdir():
            if entry.name in RESERVED_DIRS:
                continue
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        for entry in self.work.iterdir():
            if entry.name != "lock":
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()

    def _refuse(self, message: str) -> None:
        """Refuse a directory that is not ours, leaving it exactly as it was."""
        if self._made_work:
            self.close()
            shutil.rmtree(self.work, ignore_errors=True)
        raise StoreError(message)

    def _resume(self) -> None:
        if (self.root / MANIFEST).exists():
            self._check_options(Manifest.read(self.root).options)
            self.finished = True
            return
        others = [e.name for e in self.root.iterdir() if e.name not in RESERVED_DIRS]
        state_path = self.work / "state.json"
        if not state_path.exists():
            if others:
                self._refuse(
                    f"{self.root} is not empty and is not a tensorstore_ds store "
                    f"(holds {sorted(others)[:5]}); choose an empty directory or overwrite=True"
                )
            self._write_state()  # first: a crash between the two must not make the store look foreign
            write_group_metadata(self.root, FORMAT_VERSION)
            return
        if not (self.root / "zarr.json").exists():
            write_group_metadata(self.root, FORMAT_VERSION)
        state = read_json(state_path, "resume state")
        try:
            stored, source = dict(state["options"]), dict(state["source"])
            counts = [state[k] for k in ("chunks", "next_row", "converted", "failed")]
            if not all(type(c) is int and c >= 0 for c in counts):
                raise ValueError(f"counts {counts} are not non-negative integers")
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreError(
                f"the resume state {state_path} is damaged ({exc!r}); rerun with overwrite=True to start over"
            ) from None
        self._check_options(stored)
        if source.get("fingerprint") != self.plan.source.get("fingerprint"):
            raise OptionsMismatchError(self.root, "source", source.get("spec"), self.plan.source.get("spec"))
        self.chunks, self.next_row, self.converted, self.failed = counts
        self.committed = self.converted

    def _check_options(self, stored: dict[str, Any]) -> None:
        given = self.plan.options
        # In the plan's order: an option the user gave is named before the values derived from it.
        for key in [*given, *(k for k in stored if k not in given)]:
            if stored.get(key) != given.get(key):
                raise OptionsMismatchError(self.root, key, stored.get(key), given.get(key))

    # --- samples -------------------------------------------------------------

    def _empty_part(self) -> dict[str, Any]:
        small: dict[str, list[Any]] = {c.name: [] for c in self.plan.columns if not c.media}
        return {"small": small, "text": {t: [] for t in self.plan.text}, "failures": [], "files": {}}

    def add(self, row: int, values: dict[str, Any], text: dict[str, Any]) -> None:
        """Append one converted sample from source ``row``."""
        slot = self.converted - self.chunks * self.plan.chunk_rows
        for column in self.plan.columns:
            if column.media:
                value = values[column.name]
                if isinstance(value, StagedRow) and self.offload is not None:  # gathered by the chunk's writer
                    self._staged[column.name].append((slot, value))
                elif isinstance(value, StagedRow):  # read straight in from the staging file
                    value.read_into(self._buffers[column.name][slot])
                    value.release()
                else:
                    self._buffers[column.name][slot] = value
            else:
                value = values[column.name]
                numpy = isinstance(value, (np.ndarray, np.generic))  # audio_length is an np.int32 scalar
                self._part["small"][column.name].append(value.tolist() if numpy else value)
        for name in self.plan.text:
            self._part["text"][name].append(text.get(name))
        self.converted += 1
        self.next_row = row + 1
        if slot + 1 == self.plan.chunk_rows:
            with self._writing():
                self._commit(slot + 1)

    def add_failure(self, row: int, key: str, reason: str, detail: str) -> None:
        """Record that source ``row`` failed; it is left out of the arrays."""
        self._part["failures"].append({"row": row, "key": key, "reason": reason, "detail": detail})
        self.failed += 1
        self.next_row = row + 1

    def use_processes(self, offload: Callable[..., Future[Any] | None]) -> None:
        """Have chunk files written and hashed by ``offload`` (a decode process) from a shared buffer."""
        media = [(c.name, c.row_shape, c.dtype) for c in self.plan.columns if c.media]
        with self._writing():
            self._shared = ChunkBuffers(self.work / "chunks.buf", media, self.plan.chunk_rows)
        self.offload = offload
        self._buffers = self._shared.arrays(self.chunks % 2)

    def _commit(self, rows: int) -> None:
        k, b = self.chunks, self.chunks % 2
        writes: list[ChunkWrite] = []
        for column in self.plan.columns:
            if column.media and rows:  # a part of failures only has no media chunk
                spec = ArraySpec(column.name, (rows, *column.row_shape), column.dtype, self.plan.chunk_rows)
                staged, self._staged[column.name] = self._staged[column.name], []
                writes.append((spec, self._write_elsewhere(b, spec, k, staged), staged))
        self._pending.append((k, b, writes, {**self._counts(k + 1), "part": self._part}))
        self.chunks += 1
        self._part = self._empty_part()
        self._settle(keep=1 if self._shared is not None else 0)  # the other buffer is free again
        if self._shared is not None:
            self._buffers = self._shared.arrays(self.chunks % 2)

    def settle_written(self) -> None:
        """Commit the pending chunks whose files are already written elsewhere (never waits).

        Called while the conversion waits (a stalled row at the head): every
        full chunk before it is then committed, so a kill loses none of them.
        """
        while self._pending and all(f is not None and f.done() for _, f, _ in self._pending[0][2]):
            with self._writing():
                self._settle(keep=len(self._pending) - 1)

    def settle(self) -> None:
        """Before the decode processes and the staging file go: commit the chunks being written elsewhere,
        and read the staged rows of the chunk being filled into it."""
        with self._writing():
            self._settle(keep=0)
            for name, staged in self._staged.items():
                read_staged(staged, self._buffers[name], release=True)
                staged.clear()
        self.offload = None

    def _write_elsewhere(self, b: int, spec: ArraySpec, k: int, staged: Staged) -> Future[Any] | None:
        if self._shared is None or self.offload is None:
            return None
        offset = self._shared.regions[b][spec.name][0]
        gather = (staged[0][1].stage, [(i, row.slot) for i, row in staged]) if staged else None
        return self.offload(write_chunk_from, str(self._shared.path), offset, self.root, spec, k, gather)

    def _settle(self, keep: int) -> None:
        """Finish the oldest pending commits, in order, until ``keep`` are left: chunk files, part, state."""
        while len(self._pending) > keep:
            k, b, writes, state = self._pending[0]
            part = state.pop("part")
            buffers = self._shared.arrays(b) if self._shared is not None else self._buffers
            for spec, future, staged in writes:
                digest = settle_chunk_file(self.root, spec, k, future, staged, buffers[spec.name])
                if digest is not None:
                    part["files"][spec.chunk_key(k)] = {"size": digest[0], ALGORITHM: digest[1]}
            write_json_atomic(self.work / "parts" / f"{k:08d}.json", part)
            write_json_atomic(self.work / "state.json", state)
            self.committed = state["converted"]
            self._pending.popleft()
            self.committed_chunk(k, [spec.chunk_key(k) for spec, _, _ in writes])

    def committed_chunk(self, k: int, keys: list[str]) -> None:
        """Hook: chunk ``k``'s files (``keys``), part and state are durable (a conversion into a URL uploads them)."""

    def _counts(self, chunks: int) -> dict[str, Any]:
        return {
            "chunks": chunks,
            "next_row": self.next_row,
            "converted": self.converted,
            "failed": self.failed,
            "options": self.plan.options,
            "source": self.plan.source,
        }

    def _write_state(self) -> None:
        write_json_atomic(self.work / "state.json", self._counts(self.chunks))
        self.committed = self.converted

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Turn an operating-system error into a StoreWriteError that says how to resume."""
        try:
            yield
        except StoreError:
            raise
        except OSError as exc:
            where = exc.filename if isinstance(exc.filename, (str, os.PathLike)) else self.root
            raise StoreWriteError(self.root, where, exc.errno, exc.strerror or str(exc), self.committed) from exc

    # --- the end -------------------------------------------------------------

    def finish(self, counts: dict[str, Any], progress: bool | None = False) -> Manifest:
        """Write the tail chunk, compact the parts, checksum every file, write the manifest last."""
        if self.finished:
            manifest = Manifest.read(self.root)
            self._remove_work()  # left behind by a crash after the manifest, or by our own lock
            return manifest
        with self._writing():
            return self._finish(counts, progress)

    def _finish(self, counts: dict[str, Any], progress: bool | None) -> Manifest:
        # Negative when a crash hit after the tail was committed: it is committed already.
        tail = self.converted - self.chunks * self.plan.chunk_rows
        if tail > 0 or self._part["failures"]:
            self._commit(max(tail, 0))
        self._settle(keep=0)
        if self._shared is not None:
            self._shared.close()
        arrays, failures_by_reason, known = self._compact()
        manifest = Manifest(
            num_samples=self.converted,
            arrays=arrays,
            text=dict(self.plan.text),
            options=self.plan.options,
            source=self.plan.source,
            counts={
                **counts,
                "converted": self.converted,
                "failed": self.failed,
                "failed_by_reason": failures_by_reason,
            },
        )
        self._remove_temp_files()
        names = store_files(self.root)
        hashed = checksum_files(self.root, [n for n in names if n not in known], progress=progress)
        manifest.files = {n: known[n] if n in known else hashed[n] for n in names}
        manifest.write(self.root)
        self._remove_work()
        self.finished = True
        return manifest

    def _remove_temp_files(self) -> None:
        """Delete the temporary files of atomic writes that a killed run left behind."""
        for directory, _, files in os.walk(self.root):
            for name in files:
                if TEMP_FILE.fullmatch(name):
                    os.unlink(os.path.join(directory, name))

    def _remove_work(self) -> None:
        shutil.rmtree(self.work / "parts", ignore_errors=True)
        (self.work / "state.json").unlink(missing_ok=True)
        self.close()
        shutil.rmtree(self.work, ignore_errors=True)

    def _compact(self) -> tuple[dict[str, ArraySpec], dict[str, int], dict[str, dict[str, Any]]]:
        parts = [self.work / "parts" / f"{k:08d}.json" for k in range(self.chunks)]
        return compact(self.root, self.plan, parts, self.converted, SMALL_CHUNK_ROWS)
