"""One store's part of a dataset: its files fetched, its fields opened in RAM or paged.

A :class:`~tensorstore_ds.TensorStoreDataset` holds one :class:`StorePart`
per store it serves. A part fetches what it needs (the text columns always,
the array fields too in RAM mode), puts the text columns into shared memory,
and opens each array field either as a
:class:`~tensorstore_ds.serve.shm.RamArray` (RAM mode) or as a
:class:`~tensorstore_ds.store.chunked.ChunkedArray` whose mapped chunks stay
within the part's share of the budget (paged mode). The dataset gathers
batches from the parts' arrays (one part's directly, several through
:class:`~tensorstore_ds.serve.arrays.ConcatArray`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..format.text import TextColumn
from ..options import progress_disabled
from ..store.chunked import ChunkedArray
from ..store.store import Store
from .arrays import ServedArray
from .fields import fields_nbytes, media_array
from .shm import RamArray, SharedBuffer


class StorePart:
    """One store's fields, opened for serving.

    Parameters
    ----------
    store
        The opened store.
    arrays, text
        Its array and text field names (from :func:`~tensorstore_ds.serve.fields.select_fields`).
    mode
        ``"ram"`` or ``"paged"`` (already decided).
    budget
        This store's share of the memory budget (paged mode maps chunks within it).
    progress
        Show a progress bar while loading into RAM (or downloading).
    """

    def __init__(
        self, store: Store, arrays: list[str], text: list[str], mode: str, budget: int, progress: bool
    ) -> None:
        self.store = store
        self.mode = mode
        texts = [f"text/{t}/{part}" for t in text for part in ("bytes", "offsets")]
        store.fetch(texts + (arrays if mode == "ram" else []), progress)
        self.text = {name: load_text(store, name) for name in text}
        if mode == "paged":
            share = max(1, budget - fields_nbytes(store, text)) // max(1, len(arrays))
            self.arrays: dict[str, ServedArray] = {
                f: ChunkedArray(store.path, store.manifest.arrays[f], share, store.files) for f in arrays
            }
        else:
            self.arrays = {f: load_ram(store.array(f), progress) for f in arrays}

    def __len__(self) -> int:
        return len(self.store)

    @property
    def chunk_rows(self) -> int:
        """Samples per chunk file of the media array."""
        return self.store.manifest.arrays[media_array(self.store)].chunk_rows

    def prefetch_chunks(self, chunks: Sequence[int]) -> None:
        """Ask the kernel to read these chunks of every paged array ahead."""
        for array in self.arrays.values():
            if isinstance(array, ChunkedArray):
                array.prefetch(chunks)

    def close(self) -> None:
        """Unmap paged chunks; RAM buffers go when the last reference does."""
        for array in self.arrays.values():
            if isinstance(array, ChunkedArray):
                array.close()


def load_ram(array: ChunkedArray, progress: bool) -> RamArray:
    """The whole array read into a new shared buffer."""
    from tqdm.auto import tqdm

    buffer = SharedBuffer.create(array.spec.nbytes)
    target = buffer.array(array.spec.dtype, array.spec.shape)
    with tqdm(
        total=array.spec.nbytes,
        unit="B",
        unit_scale=True,
        disable=progress_disabled(progress),
        desc=f"loading {array.spec.name} into RAM",
    ) as bar:
        array.read_into(target, bar)
    array.close()
    return RamArray(buffer, array.spec.dtype, array.spec.shape)


class SharedText:
    """A text column whose bytes and offsets live in shared buffers (pickles by name).

    Parameters
    ----------
    data, offsets
        The column's bytes and row offsets.
    encoding, where
        As for :class:`~tensorstore_ds.format.text.TextColumn`.
    """

    def __init__(self, data: RamArray, offsets: RamArray, encoding: str, where: str) -> None:
        self.data, self.offsets, self.encoding, self.where = data, offsets, encoding, where
        self.column = TextColumn(data.data, offsets.data, encoding, where)

    def __getstate__(self) -> dict[str, Any]:
        return {"data": self.data, "offsets": self.offsets, "encoding": self.encoding, "where": self.where}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    def take(self, indices: np.ndarray) -> list[Any]:
        return self.column.take(indices)


def load_text(store: Store, name: str) -> SharedText:
    """A text column of ``store`` copied into shared buffers."""
    column = store.load_text(name)
    parts = []
    for rows in (column.data, column.offsets):
        values = np.asarray(rows)
        buffer = SharedBuffer.create(values.nbytes)
        buffer.array(values.dtype, values.shape)[:] = values
        parts.append(RamArray(buffer, values.dtype.str, values.shape))
    store._text.pop(name, None)  # else every pickle of the dataset carries a private copy
    return SharedText(parts[0], parts[1], column.encoding, column.where)
