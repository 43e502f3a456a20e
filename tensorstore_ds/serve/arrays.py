"""What serving reads: arrays gathered by rows, and text columns.

Every array kind a dataset serves from follows :class:`ServedArray`:

- :class:`~tensorstore_ds.serve.shm.RamArray`: a whole array in shared memory;
- :class:`~tensorstore_ds.store.chunked.ChunkedArray`: chunk files mapped on
  demand (paged mode, local or a remote store's cache);
- :class:`ConcatArray`: one field of several stores, as one array.

``take(indices, out)`` gathers rows in the order given (repeats allowed) into
``out`` when given, else into new memory, and returns it. The caller checks
the range: indices are in ``[0, len)``. ``willneed(indices)`` tells the array
which rows come next (paged arrays advise the kernel; RAM arrays do nothing).

Text columns follow :class:`ServedText`: ``take(indices) -> list``, one
decoded value per index.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class ServedArray(Protocol):
    """An array that a dataset gathers batches from."""

    @property
    def dtype(self) -> np.dtype[Any]:
        """Element type."""

    @property
    def shape(self) -> tuple[int, ...]:
        """Rows first, then the row shape."""

    def take(self, indices: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Rows at ``indices`` (int64, in range), into ``out`` if given."""

    def willneed(self, indices: np.ndarray) -> None:
        """The rows at ``indices`` are read next."""


@runtime_checkable
class ServedText(Protocol):
    """A text column that a dataset serves values from."""

    def take(self, indices: np.ndarray) -> list[Any]:
        """Decoded values at ``indices`` (in range)."""


def split_rows(offsets: np.ndarray, idx: np.ndarray) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """``(part, positions in idx, rows within the part)`` for every part that ``idx`` touches.

    ``offsets`` holds the first row of each part, then the total.
    """
    which = np.searchsorted(offsets, idx, side="right") - 1
    out = []
    for s in np.unique(which):
        positions = np.flatnonzero(which == s)
        out.append((int(s), positions, idx[positions] - offsets[s]))
    return out


class ConcatArray:
    """The arrays of one field in several stores, as one array (rows only, no copy of the whole).

    Parameters
    ----------
    parts
        Each store's array, with equal dtypes and row shapes.
    offsets
        First global row of each store, then the total.
    """

    def __init__(self, parts: list[ServedArray], offsets: np.ndarray) -> None:
        self.parts = parts
        self.offsets = offsets
        self.dtype = np.dtype(parts[0].dtype)
        self.shape = (int(offsets[-1]), *parts[0].shape[1:])

    def __len__(self) -> int:
        return self.shape[0]

    def take(self, indices: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Rows at ``indices`` (already in range), gathered store by store."""
        indices = np.asarray(indices, dtype=np.int64)
        out = np.empty((len(indices), *self.shape[1:]), self.dtype) if out is None else out
        for s, positions, local in split_rows(self.offsets, indices):
            if len(positions) == len(indices):
                self.parts[s].take(local, out=out)
            else:
                out[positions] = self.parts[s].take(local)
        return out

    def willneed(self, indices: np.ndarray) -> None:
        for s, _, local in split_rows(self.offsets, np.asarray(indices, dtype=np.int64)):
            self.parts[s].willneed(local)


class ConcatText:
    """The text columns of one field in several stores, as one column.

    Parameters
    ----------
    parts
        Each store's column.
    offsets
        First global row of each store, then the total.
    """

    def __init__(self, parts: list[ServedText], offsets: np.ndarray) -> None:
        self.parts = parts
        self.offsets = offsets

    def take(self, indices: np.ndarray) -> list[Any]:
        indices = np.asarray(indices, dtype=np.int64)
        out: list[Any] = [None] * len(indices)
        for s, positions, local in split_rows(self.offsets, indices):
            for i, value in zip(positions.tolist(), self.parts[s].take(local)):
                out[i] = value
        return out
