"""``TensorStoreDataset``: a store served to PyTorch from RAM or from disk."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch.utils.data

from ..errors import BudgetError, OptionsError
from ..options import progress_disabled
from ..store.chunked import ChunkedArray
from ..store.store import MEDIA_FIELDS, Store, open_store
from ..units import format_bytes
from .batch import Batch, item_of
from .budget import resolve_budget
from .ring import carve, layout_bytes, process_ring
from .shm import RamArray, SharedBuffer

log = logging.getLogger("tensorstore_ds")
MODES = ("auto", "ram", "paged")


class TensorStoreDataset(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """A store as a map-style Dataset of dicts.

    Parameters
    ----------
    path
        The store directory, an fsspec URL of one (``https://...``,
        ``s3://...``: files are downloaded into a local cache as they are
        needed, see :func:`~tensorstore_ds.open_store`), an opened
        :class:`~tensorstore_ds.Store`, or a list of any of these, served as
        one dataset (a :class:`~tensorstore_ds.serve.multi.MultiStoreDataset`).
    fields
        What to serve: ``"image"`` or ``"audio"``, ``"caption"``, and any of
        ``"captions"``, kept columns, ``"image_size"``, ``"audio_length"``
        (``"length"`` is either), ``"source_row"``. Default: the media and the
        caption. Only selected fields are read and count against the budget.
    memory_budget
        Bytes, a size string such as ``"8GiB"``, a fraction of available
        memory (``0.5``), or ``"auto"`` (half of available memory).
    mode
        ``"ram"``, ``"paged"``, or ``"auto"``: RAM when the selected fields fit
        the budget, paged otherwise. :attr:`mode` and :attr:`mode_reason` say
        which was chosen and why.
    transform
        Applied to each item dict.
    channels_last
        Serve images as (H, W, C) instead of a (C, H, W) view.
    progress
        Show a progress bar while loading into RAM (or downloading).
    cache_dir, cache_limit, storage_options
        For stores at a URL: see :func:`~tensorstore_ds.open_store`.
    """

    def __new__(cls, path: Any = None, *args: Any, **kwargs: Any) -> TensorStoreDataset:
        if cls is TensorStoreDataset and isinstance(path, (list, tuple)):
            from .multi import MultiStoreDataset

            return super().__new__(MultiStoreDataset)
        return super().__new__(cls)

    def __init__(
        self,
        path: str | os.PathLike[str] | Store,
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
        if mode not in MODES:
            raise OptionsError(f"mode must be one of {MODES}, not {mode!r}")
        self.store: Store = (
            path if isinstance(path, Store) else open_store(path, cache_dir, cache_limit, storage_options)
        )
        self.path = self.store.path
        self.transform = transform
        self.channels_last = channels_last
        self.budget = resolve_budget(memory_budget)
        self.arrays_fields, self.text_fields = _select(self.store, fields)
        self.nbytes = sum(self.store.field_nbytes(f) for f in self.arrays_fields + self.text_fields)
        self.mode, self.mode_reason = _decide(mode, self.nbytes, self.budget)
        log.info(
            "tensorstore_ds: %s serves %s in %s mode: %s", self.store.location, self.fields, self.mode, self.mode_reason
        )
        texts = [f"text/{t}/{part}" for t in self.text_fields for part in ("bytes", "offsets")]
        self.store.fetch(texts + (self.arrays_fields if self.mode == "ram" else []), progress)
        self._text = _load_text(self.store, self.text_fields)
        self._arrays = self._open_arrays(progress)

    @property
    def fields(self) -> list[str]:
        return [_public(f) for f in self.arrays_fields] + self.text_fields

    @property
    def chunk_rows(self) -> int:
        """Samples per chunk file of the media array."""
        return self.store.manifest.arrays["images" if "images" in self.store.manifest.arrays else "audio"].chunk_rows

    @property
    def chunk_bytes(self) -> int:
        """Bytes that the samples of one media chunk take in every selected array together."""
        return self.chunk_rows * sum(self.store.manifest.arrays[f].row_bytes for f in self.arrays_fields)

    def prefetch_chunks(self, chunks: Sequence[int]) -> None:
        """Ask the kernel to read these chunks of every selected array ahead (paged mode)."""
        for array in self._arrays.values():
            if isinstance(array, ChunkedArray):
                array.prefetch(chunks)

    def _open_arrays(self, progress: bool) -> dict[str, Any]:
        if self.mode == "paged":
            media_bytes = max(1, self.budget - sum(self.store.field_nbytes(t) for t in self.text_fields))
            share = media_bytes // max(1, len(self.arrays_fields))
            return {
                f: ChunkedArray(self.path, self.store.manifest.arrays[f], share, self.store.files)
                for f in self.arrays_fields
            }
        return {f: _load_ram(self.store.array(f), progress) for f in self.arrays_fields}

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, index: int) -> Any:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> Any:
        """Gather a whole batch at once (the DataLoader calls this per batch)."""
        idx = np.asarray(indices, dtype=np.int64)
        n = len(self)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"index out of range for a store of {n} samples: {idx[(idx < -n) | (idx >= n)][:3]}")
        idx = np.where(idx < 0, idx + n, idx)
        for array in self._arrays.values():
            array.willneed(idx)
        arrays, slot = self._gather(idx)
        text = {f: column.take(idx) for f, column in self._text.items()}
        batch = Batch(idx, arrays, text, self.channels_last, slot)
        return item_of(batch, self.transform) if self.transform is not None else batch

    def _gather(self, idx: np.ndarray) -> tuple[dict[str, np.ndarray], tuple[Any, ...] | None]:
        """Gather every array field into one ring slot (or new memory when the ring is full)."""
        layout = [(_public(f), a.dtype.str, (len(idx), *a.shape[1:])) for f, a in self._arrays.items()]
        in_worker = torch.utils.data.get_worker_info() is not None
        ring = process_ring(in_worker)
        nbytes = layout_bytes(layout)
        s = ring.acquire(nbytes)
        if s is None:
            return {_public(f): a.take(idx) for f, a in self._arrays.items()}, None
        views = carve(ring.view(s, nbytes, release=not in_worker), layout)
        for f, a in self._arrays.items():
            a.take(idx, out=views[_public(f)])
        return views, ((ring.slots[s], ring.state, s, nbytes, layout) if in_worker else None)

    def close(self) -> None:
        """Unmap paged chunks; RAM buffers go when the last reference does."""
        for array in self._arrays.values():
            if isinstance(array, ChunkedArray):
                array.close()

    def __repr__(self) -> str:
        return (
            f"TensorStoreDataset({self.store.location!r}, samples={len(self)}, fields={self.fields}, "
            f"mode={self.mode!r}, {format_bytes(self.nbytes)} of budget {format_bytes(self.budget)})"
        )


def _public(array_name: str) -> str:
    return "image" if array_name == "images" else array_name


def _select(store: Store, fields: Sequence[str] | None) -> tuple[list[str], list[str]]:
    media = "images" if "images" in store.manifest.arrays else "audio"
    wanted = [media, "caption"] if fields is None else list(fields)
    arrays, text = [], []
    for requested in wanted:
        name = requested
        if name == "length":
            name = "image_size" if media == "images" else "audio_length"
        name = MEDIA_FIELDS.get(name, name)
        if name in store.manifest.text:
            text.append(name)
        elif name in store.manifest.arrays and not name.startswith("text/"):
            arrays.append(name)
        else:
            known = sorted({_public(a) for a in store.array_names} | set(store.manifest.text) | {"length"})
            raise OptionsError(f"store {store.location} has no field {requested!r}; fields: {known}")
    return arrays, text


def _decide(mode: str, needed: int, budget: int) -> tuple[str, str]:
    fits = needed <= budget
    sizes = f"selected fields need {format_bytes(needed)}, budget is {format_bytes(budget)}"
    if mode == "ram" and not fits:
        raise BudgetError(needed, budget)
    if mode == "auto":
        return ("ram", f"{sizes}: fits") if fits else ("paged", f"{sizes}: does not fit")
    return mode, f"{sizes}; mode={mode!r} requested"


def _load_ram(array: ChunkedArray, progress: bool) -> RamArray:
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


class _SharedText:
    """A text column whose bytes and offsets live in shared buffers."""

    def __init__(self, data: RamArray, offsets: RamArray, encoding: str, where: str) -> None:
        from ..format.text import TextColumn

        self.data, self.offsets, self.encoding, self.where = data, offsets, encoding, where
        self.column = TextColumn(data.data, offsets.data, encoding, where)

    def __getstate__(self) -> dict[str, Any]:
        return {"data": self.data, "offsets": self.offsets, "encoding": self.encoding, "where": self.where}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    def take(self, indices: np.ndarray) -> list[Any]:
        return self.column.take(indices)


def _load_text(store: Store, names: list[str]) -> dict[str, _SharedText]:
    loaded = {}
    for name in names:
        column = store.load_text(name)
        parts = []
        for values in (column.data, column.offsets):
            buffer = SharedBuffer.create(values.nbytes)
            buffer.array(values.dtype, values.shape)[:] = values
            parts.append(RamArray(buffer, values.dtype.str, values.shape))
        loaded[name] = _SharedText(parts[0], parts[1], column.encoding, column.where)
        store._text.pop(name, None)  # else every pickle of the dataset carries a private copy
    return loaded
