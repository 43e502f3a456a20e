"""Paged arrays: the chunk files of one array, memory-mapped on demand.

No zarr-python here: a chunk file of our layout is raw C-order rows, so it is
mapped with :mod:`mmap` and viewed with numpy. Mappings are opened lazily and
kept in a least-recently-used set whose total size stays under a byte budget,
so the process's resident memory stays bounded over a whole epoch. Mappings
are per process: a forked or unpickled copy starts with none.

Files are reached through a provider: :class:`LocalFiles` for a store
directory, ``remote.RemoteFiles`` for a store at a URL (which downloads and
verifies a file into its local cache the first time it is needed). Both give a
local path, so everything after that is the same code.
"""

from __future__ import annotations

import mmap
import os
from collections import OrderedDict
from collections.abc import Iterable
from io import FileIO
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..errors import StoreFormatError
from ..format.layout import ArraySpec, irregular_file

PAGE = mmap.PAGESIZE


def check_chunk_files(root: Path, spec: ArraySpec) -> None:
    """Every chunk file of ``spec`` exists and has exactly the chunk size."""
    for k in range(spec.num_chunks):
        path = root / spec.chunk_key(k)
        try:
            st = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            raise StoreFormatError(path, f"chunk file is missing (array {spec.name!r}, chunk {k})") from None
        why = irregular_file(root, spec.chunk_key(k))
        if why:
            raise StoreFormatError(path, f"chunk is not a regular file inside the store: it {why}")
        if st.st_size != spec.chunk_bytes:
            what = "truncated" if st.st_size < spec.chunk_bytes else "longer than the format allows"
            raise StoreFormatError(path, f"chunk file is {what}: {st.st_size} bytes, expected {spec.chunk_bytes}")


class StoreFiles(Protocol):
    """Where a store's files are: a local directory, or a local cache of a URL."""

    root: Path
    location: str

    def where(self, key: str) -> str:
        """The file's location for messages (a path or a URL)."""

    def exists(self, key: str) -> bool:
        """Whether the store has this file."""

    def path(self, key: str) -> Path:
        """A local path of the file (downloaded and verified first if remote)."""

    def open(self, key: str) -> FileIO:
        """The file, opened unbuffered for reading."""

    def check_chunks(self, spec: ArraySpec) -> None:
        """Every chunk file of ``spec`` has the chunk size (before anything is mapped)."""

    def prefetch(self, keys: Iterable[str]) -> None:
        """Start making these files readable fast, in the background."""

    def fetch(self, keys: Iterable[str], progress: bool = False) -> None:
        """Make these files local now (a no-op for a local store)."""


class LocalFiles:
    """The files of a store directory.

    Parameters
    ----------
    root
        The store directory.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.location = str(root)

    def where(self, key: str) -> str:
        return str(self.root / key)

    def exists(self, key: str) -> bool:
        return (self.root / key).is_file()

    def path(self, key: str) -> Path:
        return self.root / key

    def open(self, key: str) -> FileIO:
        return open(self.root / key, "rb", buffering=0)

    def check_chunks(self, spec: ArraySpec) -> None:
        check_chunk_files(self.root, spec)

    def prefetch(self, keys: Iterable[str]) -> None:
        fadvise_willneed(self.root, keys)

    def fetch(self, keys: Iterable[str], progress: bool = False) -> None:
        pass


def fadvise_willneed(root: Path, keys: Iterable[str]) -> None:
    """Start reading whole files into the page cache, asynchronously (missing files are skipped)."""
    for key in keys:
        try:
            fd = os.open(root / key, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
        finally:
            os.close(fd)


class ChunkedArray:
    """Read-only access to one store array through memory-mapped chunk files.

    Parameters
    ----------
    root
        The store directory.
    spec
        The array's spec from the manifest (already validated).
    max_mapped_bytes
        Budget for mapped chunks; the least recently used are unmapped beyond it.
    files
        Where the chunk files are; default: the files under ``root``.
    """

    def __init__(
        self, root: Path, spec: ArraySpec, max_mapped_bytes: int | None = None, files: StoreFiles | None = None
    ) -> None:
        self.root = root
        self.spec = spec
        self.max_mapped_bytes = max_mapped_bytes
        self.files: StoreFiles = files if files is not None else LocalFiles(root)
        self._maps: OrderedDict[int, tuple[mmap.mmap, np.ndarray]] = OrderedDict()

    @property
    def shape(self) -> tuple[int, ...]:
        return self.spec.shape

    @property
    def dtype(self) -> np.dtype[Any]:
        return np.dtype(self.spec.dtype)

    def __len__(self) -> int:
        return self.spec.shape[0]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_maps": OrderedDict()}

    def chunk(self, k: int) -> np.ndarray:
        """Chunk ``k`` as a numpy view of its mapping (``chunk_rows`` rows)."""
        hit = self._maps.get(k)
        if hit is not None:
            self._maps.move_to_end(k)
            return hit[1]
        with self.files.open(self.spec.chunk_key(k)) as f:
            size = os.fstat(f.fileno()).st_size
            if size != self.spec.chunk_bytes:
                raise StoreFormatError(
                    self.root / self.spec.chunk_key(k),
                    f"chunk file changed size to {size} bytes, expected {self.spec.chunk_bytes}",
                )
            mapped = mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ)
        view = np.frombuffer(mapped, dtype=self.dtype).reshape(self.spec.chunk_rows, *self.spec.row_shape)
        self._maps[k] = (mapped, view)
        self._evict()
        return view

    def _evict(self) -> None:
        if self.max_mapped_bytes is None:
            return
        while len(self._maps) > 1 and len(self._maps) * self.spec.chunk_bytes > self.max_mapped_bytes:
            _, (mapped, _view) = self._maps.popitem(last=False)
            _close_map(mapped)

    def close(self) -> None:
        """Unmap every chunk."""
        while self._maps:
            _, (mapped, _view) = self._maps.popitem()
            _close_map(mapped)

    def prefetch(self, chunks: Any) -> None:
        """Start reading whole chunk files into the page cache (or downloading them), asynchronously."""
        self.files.prefetch([self.spec.chunk_key(int(k)) for k in chunks])

    def willneed(self, indices: np.ndarray) -> None:
        """Advise the kernel that the rows at ``indices`` are read next."""
        row_bytes = self.spec.row_bytes
        for k, local in _by_chunk(np.asarray(indices, dtype=np.int64), self.spec.chunk_rows):
            self.chunk(k)
            mapped = self._maps[k][0]
            for r in np.unique(local):
                start = int(r) * row_bytes
                aligned = start - start % PAGE
                mapped.madvise(mmap.MADV_WILLNEED, aligned, start + row_bytes - aligned)

    def take(self, indices: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Rows at ``indices`` (any order, repeats allowed), gathered chunk by chunk."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"index out of range for array {self.spec.name!r} of {len(self)} rows")
        if out is None:
            out = np.empty((len(indices), *self.spec.row_shape), self.dtype)
        for k, positions in _groups(indices, self.spec.chunk_rows):
            out[positions] = self.chunk(k)[indices[positions] - k * self.spec.chunk_rows]
        return out

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            i = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= i < len(self):
                raise IndexError(f"index {key} out of range for array {self.spec.name!r} of {len(self)} rows")
            return self.chunk(i // self.spec.chunk_rows)[i % self.spec.chunk_rows].copy()
        if isinstance(key, slice):
            rows = range(len(self))[key]  # no arange over the whole array: text byte arrays are huge
            return self.take(np.arange(rows.start, rows.stop, rows.step))
        return self.take(np.asarray(key))

    def read_into(self, out: np.ndarray, progress: Any = None) -> None:
        """Read the whole array sequentially into ``out`` (a flat byte buffer works)."""
        flat = out.reshape(-1).view(np.uint8)
        done = 0
        for k in range(self.spec.num_chunks):
            want = min(self.spec.chunk_bytes, self.spec.nbytes - done)
            with self.files.open(self.spec.chunk_key(k)) as f:
                got = f.readinto(flat[done : done + want].data)
            if got != want:
                raise StoreFormatError(self.root / self.spec.chunk_key(k), f"read {got} bytes, expected {want}")
            done += want
            if progress is not None:
                progress.update(want)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.empty(self.shape, self.dtype)
        self.read_into(out)
        return out if dtype is None else out.astype(dtype)


def _groups(indices: np.ndarray, rows: int) -> list[tuple[int, np.ndarray]]:
    """``(chunk, positions in indices)`` for every chunk that ``indices`` touch."""
    chunks = indices // rows
    order = np.argsort(chunks, kind="stable")
    bounds = np.flatnonzero(np.diff(chunks[order])) + 1
    return [(int(chunks[group[0]]), group) for group in np.split(order, bounds) if group.size]


def _by_chunk(indices: np.ndarray, rows: int) -> list[tuple[int, np.ndarray]]:
    """``(chunk, row numbers within the chunk)`` for every chunk that ``indices`` touch."""
    return [(k, indices[positions] - k * rows) for k, positions in _groups(indices, rows)]


def _close_map(mapped: mmap.mmap) -> None:
    try:
        mapped.close()
    except BufferError:
        pass  # a caller still holds a view; the mapping goes when the view does
