"""The staging file: decoded media rows handed from decode processes to the writer.

A decode process does not send its decoded row back through a pipe (a pickle
of 150 KB per 224x224 image, unpickled and copied by the converting process).
It writes the row into one slot of a memory-mapped file, the staging file,
and sends back only the small values (the image size, the audio length). The
converting process copies the slot into the chunk it is filling, once.

Slots are reused in a fixed rotation: the pipeline's ``n``-th task uses slot
``n % depth``, and at most ``depth`` tasks are in flight past the oldest
unwritten one, so a slot is written again only after the writer has copied
it. The file is scratch: it lives in the store's work directory, is created
afresh (sparse, so untouched slots take no disk) by every run, and never
holds the only copy of a committed sample, so a crash loses nothing that a
rerun does not redo. It costs ``depth x row bytes`` of disk at most (page
cache, not pinned memory: the kernel writes it back or drops it as it needs).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Stage", "decode_staged"]


@dataclass(frozen=True)
class Stage:
    """Where and how decoded rows are staged.

    Parameters
    ----------
    path
        The staging file.
    depth
        Slots in the file (the pipeline's lookahead).
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
        return self.depth * int(np.prod(self.row_shape)) * np.dtype(self.dtype).itemsize

    def create(self) -> np.memmap[Any, Any]:
        """Create (or empty) the file, sparse and full size, and map it."""
        with open(self.path, "wb") as f:
            f.truncate(self.nbytes)
        _OPEN.pop(self, None)
        return self.open()

    def open(self) -> np.memmap[Any, Any]:
        """Map the file (once per process)."""
        view = _OPEN.get(self)
        if view is None:
            view = np.memmap(self.path, self.dtype, "r+", shape=(self.depth, *self.row_shape))
            _OPEN[self] = view
        return view

    def remove(self) -> None:
        """Unmap and delete the file."""
        _OPEN.pop(self, None)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


_OPEN: dict[Stage, np.memmap[Any, Any]] = {}


def decode_staged(
    stage: Stage, slot: int, decode: Callable[..., dict[str, Any]], payload: Any, *args: Any
) -> dict[str, Any]:
    """Run ``decode(payload, *args)`` and put its media value into ``slot``; return the rest.

    Runs in a decode process; ``decode`` is a module-level function.
    """
    values = decode(payload, *args)
    stage.open()[slot] = values.pop(stage.field)
    return values
