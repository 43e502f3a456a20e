"""``MultiStoreDataset``: several stores served as one dataset, without copying them.

``TensorStoreDataset([a, b, ...])`` gives one. Sample ``i`` of the whole is
sample ``i - offsets[s]`` of store ``s``, where the stores follow each other in
the order given. Each store is served by its own
:class:`~tensorstore_ds.TensorStoreDataset` (RAM or paged, with a share of
the memory budget proportional to its size); a batch is split by store,
gathered from each, and put back in the batch's order.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import OptionsError, StoresMismatchError
from ..store.store import Store, is_url, open_store
from ..units import format_bytes
from .budget import resolve_budget
from .dataset import MODES, TensorStoreDataset, _decide, _select


class MultiStoreDataset(TensorStoreDataset):
    """Stores with the same fields and layouts as one map-style Dataset.

    Parameters
    ----------
    paths
        Store directories, URLs or opened stores, in the order of the whole.
    fields, memory_budget, mode, transform, channels_last, progress
        As for :class:`~tensorstore_ds.TensorStoreDataset`; the budget and
        the mode apply to all the stores together.
    cache_dir, cache_limit, storage_options
        For stores at URLs (``cache_dir`` only with a single remote store).
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike[str] | Store],
        fields: Sequence[str] | None = None,
        memory_budget: int | float | str = "auto",
        mode: str = "auto",
        transform: Callable[[dict[str, Any]], Any] | None = None,
        channels_last: bool = False,
        progress: bool = True,
        cache_dir: str | os.PathLike[str] | None = None,
        cache_limit: int | str | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        if mode not in MODES or not paths:
            raise OptionsError(f"mode must be one of {MODES} (not {mode!r}) and at least one store is needed")
        if cache_dir is not None and sum(not isinstance(p, Store) and is_url(p) for p in paths) > 1:
            raise OptionsError("cache_dir is the cache of one remote store; leave it out for several")
        stores = [p if isinstance(p, Store) else open_store(p, cache_dir, cache_limit, storage_options) for p in paths]
        self.transform, self.channels_last = transform, channels_last
        self.budget = resolve_budget(memory_budget)
        self.arrays_fields, self.text_fields = _select(stores[0], fields)
        for other in stores[1:]:
            _check_layout(stores[0], other, self.arrays_fields, self.text_fields)
        needs = [sum(s.field_nbytes(f) for f in self.arrays_fields + self.text_fields) for s in stores]
        self.nbytes = sum(needs)
        self.mode, self.mode_reason = _decide(mode, self.nbytes, self.budget)
        self.parts = [
            TensorStoreDataset(
                s, fields, _share(self.budget, need, self.nbytes), self.mode, None, channels_last, progress
            )
            for s, need in zip(stores, needs)
        ]
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts]).astype(np.int64)
        self.store = stores[0]
        self.path = [p.path for p in self.parts]  # type: ignore[assignment]
        self._arrays = {f: ConcatArray([p._arrays[f] for p in self.parts], self.offsets) for f in self.arrays_fields}
        self._text = {
            f: ConcatText([p._text[f] for p in self.parts], self.offsets)  # type: ignore[misc]
            for f in self.text_fields
        }  # duck-typed like _SharedText: take(indices) -> list

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def chunk_rows(self) -> int:
        """Samples per media chunk of the first store (the sampler's unit of locality)."""
        return self.parts[0].chunk_rows

    @property
    def chunk_bytes(self) -> int:
        return self.chunk_rows * sum(self.store.manifest.arrays[f].row_bytes for f in self.arrays_fields)

    def prefetch_chunks(self, chunks: Sequence[int]) -> None:
        """Read ahead the chunks of every store that hold these chunks' rows of the whole."""
        rows = self.chunk_rows
        for p, part in enumerate(self.parts):
            lo, hi, local = int(self.offsets[p]), int(self.offsets[p + 1]), set()
            for k in chunks:
                a, b = max(int(k) * rows, lo), min((int(k) + 1) * rows, hi)
                if a < b:
                    local.update(range((a - lo) // part.chunk_rows, (b - 1 - lo) // part.chunk_rows + 1))
            if local:
                part.prefetch_chunks(sorted(local))

    def close(self) -> None:
        for part in self.parts:
            part.close()

    def __repr__(self) -> str:
        where = [p.store.location for p in self.parts]
        return (
            f"MultiStoreDataset({where!r}, samples={len(self)}, fields={self.fields}, mode={self.mode!r}, "
            f"{format_bytes(self.nbytes)} of budget {format_bytes(self.budget)})"
        )


def _share(budget: int, need: int, total: int) -> int:
    """A store's part of the budget: proportional to what it needs (RAM mode fits iff the whole does)."""
    return budget if total == 0 else max(1, budget * need // total)


def _check_layout(first: Store, other: Store, arrays: list[str], text: list[str]) -> None:
    _select(other, arrays + text)  # names a missing field
    for name in arrays:
        a, b = first.manifest.arrays[name], other.manifest.arrays[name]
        if (a.dtype, a.row_shape) != (b.dtype, b.row_shape):
            raise StoresMismatchError(
                first.location,
                other.location,
                f"the rows of {name!r}",
                f"{a.dtype}{list(a.row_shape)}",
                f"{b.dtype}{list(b.row_shape)}",
            )
    for name in text:
        if first.manifest.text[name] != other.manifest.text[name]:
            raise StoresMismatchError(
                first.location,
                other.location,
                f"the encoding of {name!r}",
                first.manifest.text[name],
                other.manifest.text[name],
            )


def _split(offsets: np.ndarray, idx: np.ndarray) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """``(store, positions in idx, indices within the store)`` for every store that ``idx`` touches."""
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
        Each store's array (``RamArray`` or ``ChunkedArray``).
    offsets
        First global row of each store, then the total.
    """

    def __init__(self, parts: list[Any], offsets: np.ndarray) -> None:
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
        for s, positions, local in _split(self.offsets, indices):
            if len(positions) == len(indices):
                self.parts[s].take(local, out=out)
            else:
                out[positions] = self.parts[s].take(local)
        return out

    def willneed(self, indices: np.ndarray) -> None:
        for s, _, local in _split(self.offsets, np.asarray(indices, dtype=np.int64)):
            self.parts[s].willneed(local)


class ConcatText:
    """The text columns of one field in several stores, as one column.

    Parameters
    ----------
    parts
        Each store's column (anything with ``take(indices) -> list``).
    offsets
        First global row of each store, then the total.
    """

    def __init__(self, parts: list[Any], offsets: np.ndarray) -> None:
        self.parts = parts
        self.offsets = offsets

    def take(self, indices: np.ndarray) -> list[Any]:
        indices = np.asarray(indices, dtype=np.int64)
        out: list[Any] = [None] * len(indices)
        for s, positions, local in _split(self.offsets, indices):
            for i, value in zip(positions.tolist(), self.parts[s].take(local)):
                out[i] = value
        return out
