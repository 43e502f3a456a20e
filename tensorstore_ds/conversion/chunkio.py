"""Chunk files written by a decode process, gathered from the staging file and a buffer file.

Writing a chunk file costs a copy of every byte into the page cache, a sync
and a hash, and copying each decoded row into the chunk costs as much again:
together more than a quarter of a millisecond of CPU per 224x224 sample,
which would cap a conversion at a few thousand samples per second whatever
its cores. So when the conversion has decode processes, the converting
process only notes where each row of a chunk is: in its staging slot (see
``staging``), where the decoder left it, or, for a row that was not decoded
in this run (a row a retry keeps), in a :class:`ChunkBuffers` file (two
chunk-sized buffers, mapped) that the writer fills. A decode process gathers
the rows, hashes the chunk, writes it atomically with ``fsync`` and returns
its size and SHA-256 (:func:`write_chunk_from`). The writer fills the other
buffer meanwhile; a buffer (and the chunk's staging slots) is reused only
once the chunk written from it is settled. The buffer file lives in the
store's work directory and is rewritten in place, so the kernel writes little
of it back to disk; a chunk of staged rows never touches it.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..format.layout import ArraySpec, write_bytes_atomic, write_chunk

if TYPE_CHECKING:
    from .staging import Stage, StagedRow

Gather = tuple["Stage", list[tuple[int, int]]]  # the staging file, and (row in the chunk, slot) of each staged row
Staged = list[tuple[int, "StagedRow"]]  # (row in the chunk, its staged row) of a chunk's staged rows
ChunkWrite = tuple[ArraySpec, "Future[Any] | None", Staged]  # a chunk file, the write elsewhere, its staged rows

__all__ = ["ChunkBuffers", "ChunkWrite", "Staged", "read_staged", "settle_chunk_file", "write_chunk_from"]


class ChunkBuffers:
    """Two buffers of one chunk of every media column, in one file, mapped.

    Parameters
    ----------
    path
        The buffer file (created or resized here).
    columns
        ``(name, row_shape, dtype)`` of each media column.
    chunk_rows
        Rows of one chunk.
    """

    def __init__(self, path: Path, columns: list[tuple[str, tuple[int, ...], str]], chunk_rows: int) -> None:
        self.path = path
        self.regions: list[dict[str, tuple[int, tuple[int, ...], str]]] = [{}, {}]
        offset = 0
        for b in (0, 1):
            for name, row_shape, dtype in columns:
                self.regions[b][name] = (offset, (chunk_rows, *row_shape), dtype)
                offset += chunk_rows * int(np.prod(row_shape)) * np.dtype(dtype).itemsize
        with open(path, "wb") as f:
            f.truncate(max(offset, 1))
        self._map: np.ndarray = np.memmap(path, np.uint8, "r+", shape=(max(offset, 1),))

    def arrays(self, b: int) -> dict[str, np.ndarray]:
        """Buffer ``b``'s array for each media column (views of the mapping)."""
        out = {}
        for name, (offset, shape, dtype) in self.regions[b].items():
            nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
            out[name] = self._map[offset : offset + nbytes].view(dtype).reshape(shape)
        return out

    def close(self) -> None:
        """Unmap the file."""
        mapping = getattr(self._map, "_mmap", None)
        self._map = np.empty(0, np.uint8)
        if mapping is not None:
            mapping.close()


def write_chunk_from(
    buffer: str, offset: int, root: Path, spec: ArraySpec, k: int, gather: Gather | None = None
) -> tuple[int, str]:
    """In a decode process: write chunk ``k`` of ``spec``; return its size and SHA-256.

    Rows listed in ``gather`` (``stage, [(row, slot), ...]``) are read from
    their staging slots, the others from ``buffer`` at ``offset``; the chunk
    is hashed in memory before it is written (zero-padded, atomically, with
    ``fsync``).
    """
    rows, row_bytes = spec.shape[0], spec.row_bytes
    data = bytearray(spec.chunk_bytes)  # zero-padded past the last row, as Zarr reads it
    staged = gather[1] if gather is not None else []
    in_buffer = sorted(set(range(rows)) - {i for i, _ in staged})
    _read_runs(buffer, offset, [(i, i) for i in in_buffer], row_bytes, data)
    if gather is not None:
        _read_runs(gather[0].path, 0, sorted(staged), row_bytes, data)
    digest = hashlib.sha256(data).hexdigest()
    write_bytes_atomic(root / spec.chunk_key(k), memoryview(data), fsync=True)
    return len(data), digest


def _read_runs(path: str, base: int, rows: list[tuple[int, int]], row_bytes: int, out: bytearray) -> None:
    """Read row ``src`` of ``path`` (rows from ``base``) into row ``dst`` of ``out``, for each ``(dst, src)``.

    Rows consecutive in both are read by one ``preadv``.
    """
    if not rows:
        return
    view = memoryview(out)
    fd = os.open(path, os.O_RDONLY)
    try:
        start = 0
        for end in range(1, len(rows) + 1):
            if end < len(rows) and rows[end] == (rows[end - 1][0] + 1, rows[end - 1][1] + 1):
                continue
            (dst, src), n = rows[start], (end - start) * row_bytes
            if os.preadv(fd, [view[dst * row_bytes : dst * row_bytes + n]], base + src * row_bytes) != n:
                raise OSError(f"short read from {path}")
            start = end
    finally:
        os.close(fd)


def settle_chunk_file(
    root: Path, spec: ArraySpec, k: int, future: Future[Any] | None, staged: Staged, buffer: np.ndarray
) -> tuple[int, str] | None:
    """In the converting process: wait for chunk ``k``'s file, written elsewhere; release its staged rows.

    Returns its size and SHA-256, or None when it was written here instead
    (no process took it, or that process died): then the staged rows are
    read into ``buffer`` first, and the file is hashed with the others at the
    end. An ``OSError`` from the writing process (a full disk) is raised.
    """
    digest = None
    if future is not None:
        try:
            digest = future.result()
        except OSError:
            raise
        except Exception:  # the writing process died: write it here
            digest = None
    if digest is None:
        read_staged(staged, buffer)
        write_chunk(root, spec, k, buffer[: spec.shape[0]], fsync=True)
    for _, row in staged:
        row.release()
    return digest


def read_staged(staged: Staged, buffer: np.ndarray, release: bool = False) -> None:
    """Read staged rows into their places in ``buffer`` (when no decode process gathers them)."""
    for i, row in staged:
        row.read_into(buffer[i])
        if release:
            row.release()
