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

Everything a part holds in RAM is the machine's one copy of that field
(:mod:`~tensorstore_ds.serve.copies`), named by the store's identity: the
first process loads it, the others (ranks, workers, other jobs) attach.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..format.text import TextColumn
from ..options import byte_bar
from ..store.chunked import ChunkedArray
from ..store.store import Store
from .arrays import ServedArray
from .copies import attach_or_load, copy_key, is_shared
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
        identity = store_identity(store)
        texts = [f"text/{t}/{part}" for t in text for part in ("bytes", "offsets")]
        wanted = texts + (arrays if mode == "ram" else [])
        store.fetch([n for n in wanted if not is_shared(copy_key(identity, n))], progress)
        self.text = {name: load_text(store, name, identity) for name in text}
        if mode == "paged":
            share = max(1, budget - fields_nbytes(store, text)) // max(1, len(arrays))
            self.arrays: dict[str, ServedArray] = {
                f: ChunkedArray(store.path, store.manifest.arrays[f], share, store.files) for f in arrays
            }
        else:
            self.arrays = {f: load_ram(store, f, identity, progress) for f in arrays}

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


def store_identity(store: Store) -> str:
    """What names the store's shared copies: its manifest (with every file's checksum).

    A manifest written before checksums does not pin the content, so the
    store's location is added to it.
    """
    doc = json.dumps(store.manifest.to_json(), sort_keys=True)
    return doc if store.manifest.files else f"{store.location}\0{doc}"


def array_names(arrays: Sequence[str], text: Sequence[str]) -> list[str]:
    """The store arrays that the fields are held in."""
    return list(arrays) + [f"text/{t}/{part}" for t in text for part in ("bytes", "offsets")]


def shared_nbytes(store: Store, arrays: Sequence[str], text: Sequence[str]) -> int:
    """Bytes of these fields that already have a copy on this machine (or are being loaded)."""
    identity = store_identity(store)
    names = [n for n in array_names(arrays, text) if is_shared(copy_key(identity, n))]
    return sum(store.manifest.arrays[n].nbytes for n in names)


def load_ram(store: Store, name: str, identity: str, progress: bool) -> RamArray:
    """The machine's copy of array ``name``: attached, or read whole from the store first."""

    spec = store.manifest.arrays[name]

    def fill(buffer: SharedBuffer) -> None:
        array = store.array(name)
        with byte_bar(spec.nbytes, f"loading {name} into RAM", progress) as bar:
            array.read_into(buffer.array(spec.dtype, spec.shape), bar)
        array.close()

    return RamArray(attach_or_load(copy_key(identity, name), spec.nbytes, fill), spec.dtype, spec.shape)


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


def load_text(store: Store, name: str, identity: str) -> SharedText:
    """The machine's copy of a text column: attached, or read (and checked) from the store first."""
    loaded: list[TextColumn] = []

    def column() -> TextColumn:
        if not loaded:
            loaded.append(store.load_text(name))
        return loaded[0]

    parts = []
    for part in ("bytes", "offsets"):
        spec = store.manifest.arrays[f"text/{name}/{part}"]

        def fill(buffer: SharedBuffer, spec: Any = spec, part: str = part) -> None:
            values = column().data if part == "bytes" else column().offsets
            buffer.array(spec.dtype, spec.shape)[:] = np.asarray(values)

        buffer = attach_or_load(copy_key(identity, spec.name), spec.nbytes, fill)
        parts.append(RamArray(buffer, spec.dtype, spec.shape))
    return SharedText(parts[0], parts[1], store.manifest.text[name], store.files.where(f"text/{name}"))
