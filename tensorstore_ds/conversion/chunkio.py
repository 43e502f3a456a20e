"""Chunk files written by a decode process, from a buffer file the converting process fills.

Writing a chunk file costs a copy of every byte into the page cache, a sync
and a hash: about a quarter of a millisecond of CPU per 224x224 sample, which
would cap a conversion at a few thousand samples per second whatever its
cores. So when the conversion has decode processes, the writer fills its
chunk in a :class:`ChunkBuffers` file (two chunk-sized buffers, mapped) and
hands the finished buffer to a decode process, which writes the chunk file
atomically with ``fsync`` and returns its size and SHA-256
(:func:`write_chunk_from`). The writer fills the other buffer meanwhile; a
buffer is filled again only once the chunk written from it is settled. The
file lives in the store's work directory; it is rewritten in place, so the
kernel writes little of it back to disk.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..format.hashing import hash_file
from ..format.layout import ArraySpec, write_chunk

__all__ = ["ChunkBuffers", "write_chunk_from"]


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


def write_chunk_from(buffer: str, offset: int, root: Path, spec: ArraySpec, k: int) -> tuple[int, str]:
    """In a decode process: write chunk ``k`` of ``spec`` from ``buffer`` at ``offset``; its size and SHA-256."""
    rows = spec.shape[0]
    nbytes = rows * spec.row_bytes
    fd = os.open(buffer, os.O_RDONLY)
    try:
        data = bytearray(nbytes)
        if os.preadv(fd, [data], offset) != nbytes:
            raise OSError(f"short read from the chunk buffer {buffer}")
    finally:
        os.close(fd)
    array: Any = np.frombuffer(data, spec.dtype).reshape(spec.shape)
    write_chunk(root, spec, k, array, fsync=True)
    return hash_file(root / spec.chunk_key(k))
