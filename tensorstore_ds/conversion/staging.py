"""The staging file: decoded media rows handed from decode processes to the store's chunk files.

A decode process does not send its decoded row back through a pipe (a pickle
of 150 KB per 224x224 image, unpickled and copied by the converting process).
It writes the row into one slot of a file, the staging file, with one
``pwrite``, and sends back only the small values (the image size, the audio
length). The converting process never reads the row: when a chunk is full,
the decode process that writes the chunk file gathers its rows from their
slots (``chunkio``), so the pixels cross the converting process not at all.
(Without decode processes, the converting process reads each row into its
chunk with one ``preadv``.)

Slots are lent out, not taken in rotation. The pipeline takes a free slot for
each sample it sends to decode, and the row (:class:`StagedRow`) holds it
until its chunk file is written; then it is given back. Free slots are reused
last-in first-out, so the file's pages in use stay few (those of the rows in
flight) however deep the lookahead. A conversion sizes the file for its
lookahead plus two chunks (the chunk being filled and the one being written),
which is the most that can be held at once. The file is scratch: it lives in
the store's work directory, is created afresh (sparse, so untouched slots
take no disk) by every run, and never holds the only copy of a committed
sample, so a crash loses nothing that a rerun does not redo.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import SampleError

__all__ = ["Stage", "StagedRow", "StagedRows", "decode_batch", "decode_staged"]


@dataclass(frozen=True)
class Stage:
    """Where and how decoded rows are staged.

    Parameters
    ----------
    path
        The staging file.
    depth
        Slots in the file: the rows that can be staged at once.
    field
        The media value staged (``images`` or ``audio``); the other values
        travel back by pickle.
    row_shape, dtype
        One row of that value.
    """

    path: str
    depth: int
    field: str
    row_shape: tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        """Size of the file: every slot."""
        return self.depth * self.row_bytes

    @property
    def row_bytes(self) -> int:
        """Bytes of one slot."""
        return int(np.prod(self.row_shape)) * np.dtype(self.dtype).itemsize

    def create(self) -> StagedRows:
        """Create (or empty) the file, sparse and full size; return its reader."""
        _close(self)
        with open(self.path, "wb") as f:
            f.truncate(self.nbytes)
        return StagedRows(self)

    def write(self, slot: int, row: np.ndarray) -> None:
        """Write one row into ``slot`` (the file is opened once per process)."""
        fd = _OPEN.get(self)
        if fd is None:
            fd = _OPEN[self] = os.open(self.path, os.O_RDWR)
        data = np.ascontiguousarray(row, self.dtype)
        if data.nbytes != self.row_bytes:
            raise ValueError(f"a staged row has {data.nbytes} bytes, not {self.row_bytes}")
        if os.pwrite(fd, data.data.cast("B"), slot * self.row_bytes) != self.row_bytes:
            raise OSError(f"short write to the staging file {self.path}")

    def remove(self) -> None:
        """Delete the file."""
        _close(self)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


class StagedRows:
    """The converting process's side of the staging file: its free slots, and reading rows.

    Taking and giving back a slot are single list operations, atomic under the
    GIL, so fetch threads and the consumer may do them at once.
    """

    def __init__(self, stage: Stage) -> None:
        self.stage = stage
        self.row_bytes = stage.row_bytes
        self.fd = os.open(stage.path, os.O_RDONLY)
        self._free = list(range(stage.depth - 1, -1, -1))  # a stack: slot 0 first, the last given back next

    def take(self) -> int | None:
        """A free slot, or None when every slot is held."""
        try:
            return self._free.pop()
        except IndexError:
            return None

    def give_back(self, slot: int) -> None:
        """Make ``slot`` free again."""
        self._free.append(slot)

    @property
    def free(self) -> int:
        """Slots free now."""
        return len(self._free)

    def row(self, slot: int) -> StagedRow:
        """The row in ``slot``: it holds the slot until :meth:`StagedRow.release`."""
        return StagedRow(self, slot)

    def read_into(self, slot: int, out: np.ndarray) -> None:
        """Read slot ``slot`` into ``out`` (C-contiguous, one row): one ``preadv``, one copy."""
        if os.preadv(self.fd, [out.data.cast("B")], slot * self.row_bytes) != self.row_bytes:
            raise OSError(f"short read from the staging file {self.stage.path}")

    def close(self) -> None:
        """Close the file."""
        os.close(self.fd)


class StagedRow:
    """A decoded row still in the staging file; it holds its slot until released.

    The writer either has a decode process gather it into a chunk file (by
    :attr:`stage` and :attr:`slot`) or reads it into its chunk
    (:meth:`read_into`); then it calls :meth:`release`.
    """

    __slots__ = ("rows", "slot")

    def __init__(self, rows: StagedRows, slot: int) -> None:
        self.rows, self.slot = rows, slot

    @property
    def stage(self) -> Stage:
        """The staging file the row is in."""
        return self.rows.stage

    def read_into(self, out: np.ndarray) -> None:
        """Copy the row into ``out``."""
        self.rows.read_into(self.slot, out)

    def release(self) -> None:
        """Give the slot back (once; the row cannot be read after)."""
        if self.slot >= 0:
            self.rows.give_back(self.slot)
            self.slot = -1

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.empty(self.rows.stage.row_shape, self.rows.stage.dtype)
        self.read_into(out)
        return out if dtype is None else out.astype(dtype)


_OPEN: dict[Stage, int] = {}  # this process's file descriptor of each staging file


def _close(stage: Stage) -> None:
    fd = _OPEN.pop(stage, None)
    if fd is not None:
        os.close(fd)


def decode_batch(
    stage: Stage | None, decode: Callable[..., dict[str, Any]], jobs: list[tuple[int, Any, tuple[Any, ...]]]
) -> list[dict[str, Any] | SampleError]:
    """Decode several ``(slot, payload, args)`` jobs in one decode-process task: one pickle, one future.

    A :class:`SampleError` is returned in place of its sample's values; any
    other exception (a bug, not a bad sample) fails the whole batch.
    """
    out: list[dict[str, Any] | SampleError] = []
    for slot, payload, args in jobs:
        try:
            out.append(decode_staged(stage, slot, decode, payload, *args) if stage else decode(payload, *args))
        except SampleError as exc:
            out.append(exc)
    return out


def decode_staged(
    stage: Stage, slot: int, decode: Callable[..., dict[str, Any]], payload: Any, *args: Any
) -> dict[str, Any]:
    """Run ``decode(payload, *args)`` and put its media value into ``slot``; return the rest.

    Runs in a decode process; ``decode`` is a module-level function.
    """
    values = decode(payload, *args)
    stage.write(slot, values.pop(stage.field))
    return values
