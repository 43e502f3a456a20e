"""``TensorStoreDataset``: one store, or several as one, served to PyTorch from RAM or from disk.

The dataset selects fields and decides the mode once for all its stores
(:mod:`~tensorstore_ds.serve.fields`), then opens each store as a
:class:`~tensorstore_ds.serve.part.StorePart`. Sample ``i`` of the whole is
sample ``i - offsets[s]`` of store ``s``, where the stores follow each other
in the order given; with several stores a field is served through a
:class:`~tensorstore_ds.serve.arrays.ConcatArray`, so a batch is split by
store, gathered from each, and put back in the batch's order.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Union, cast

import numpy as np
import torch.utils.data

from ..errors import OptionsError
from ..store.store import Store, is_url, open_store
from ..units import format_bytes
from .arrays import ConcatArray, ConcatText, ServedArray, ServedText
from .batch import Batch, item_of
from .budget import resolve_budget
from .derived import MASK, AudioMask, CaptionChoice
from .fields import (
    MODES,
    agree_across_ranks,
    check_mode,
    check_same_layout,
    decide_mode,
    fields_nbytes,
    public_name,
    select_fields,
)
from .part import StorePart, shared_nbytes
from .ring import SlotHandle, carve, layout_bytes, process_ring
from .shm import free_bytes, shm_dir
from .threads import take_in_threads

log = logging.getLogger("tensorstore_ds")
StorePath = Union[str, "os.PathLike[str]", Store]
__all__ = ["MODES", "StorePath", "TensorStoreDataset"]


class TensorStoreDataset(torch.utils.data.Dataset):
    """A store as a map-style Dataset of dicts.

    Parameters
    ----------
    path
        The store directory, an fsspec URL of one (``https://...``,
        ``s3://...``: files are downloaded into a local cache as they are
        needed, see :func:`~tensorstore_ds.open_store`), an opened
        :class:`~tensorstore_ds.Store`, or a list of any of these, served as
        one dataset: the stores follow each other in the order given, and must
        have the selected fields with the same row layouts.
    fields
        What to serve: ``"image"`` or ``"audio"``, ``"caption"``, and any of
        ``"captions"``, kept columns, ``"image_size"``, ``"audio_length"``
        (``"length"`` is either), ``"source_row"``, and for audio
        ``"audio_mask"`` (bool, true where the clip has real audio; made from
        ``audio_length``, which is then served too). Default: the media and
        the caption. Only selected fields are read and count against the budget.
    memory_budget
        Bytes, a size string such as ``"8GiB"``, a fraction of available
        memory (``0.5``), or ``"auto"`` (half of available memory). With
        several stores it applies to all of them together, each paged store
        getting a share proportional to its size.
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
        For stores at a URL: see :func:`~tensorstore_ds.open_store`
        (``cache_dir`` only with a single remote store).
    caption_choice
        ``"first"`` (default): ``caption`` is the stored first caption.
        ``"random"``: one of the sample's ``captions``, picked anew each epoch
        by ``(seed, epoch, sample)`` (see :meth:`set_epoch`; the sampler calls it).
    gather_threads
        In RAM mode outside DataLoader workers, gather each batch with this
        many threads of the main process (see :mod:`tensorstore_ds.serve.threads`
        for when threads beat worker processes).
    """

    def __init__(
        self,
        path: StorePath | Sequence[StorePath],
        fields: Sequence[str] | None = None,
        memory_budget: int | float | str = "auto",
        mode: str = "auto",
        transform: Callable[[dict[str, Any]], Any] | None = None,
        channels_last: bool = False,
        progress: bool = True,
        cache_dir: str | os.PathLike[str] | None = None,
        cache_limit: int | str | None = None,
        storage_options: dict[str, Any] | None = None,
        caption_choice: str = "first",
        gather_threads: int = 1,
    ) -> None:
        check_mode(mode)
        if type(gather_threads) is not int or gather_threads < 1:
            raise OptionsError(f"gather_threads must be a whole number of at least 1, not {gather_threads!r}")
        self.gather_threads = gather_threads
        self.several = isinstance(path, (list, tuple))
        paths: list[StorePath] = list(path) if isinstance(path, (list, tuple)) else [cast(StorePath, path)]
        if not paths:
            raise OptionsError("at least one store is needed")
        if cache_dir is not None and sum(not isinstance(p, Store) and is_url(p) for p in paths) > 1:
            raise OptionsError("cache_dir is the cache of one remote store; leave it out for several")
        self.stores = [
            p if isinstance(p, Store) else open_store(p, cache_dir, cache_limit, storage_options) for p in paths
        ]
        self.stores = [q for s in self.stores for q in (s.parts or [s])]  # a store made of parts: its parts
        self.store = self.stores[0]
        self.path: Path | list[Path] = [s.path for s in self.stores] if self.several else self.store.path
        self.transform = transform
        self.channels_last = channels_last
        self.budget = resolve_budget(memory_budget)
        self.audio_mask = AudioMask(fields, self.store)
        self.arrays_fields, self.text_fields = select_fields(self.store, self.audio_mask.fields)
        self.caption_choice = CaptionChoice(caption_choice, self.store.manifest.text, self.text_fields)
        self.text_fields += self.caption_choice.extra
        for other in self.stores[1:]:
            check_same_layout(self.store, other, self.arrays_fields, self.text_fields)
        needs = [fields_nbytes(s, self.arrays_fields + self.text_fields) for s in self.stores]
        self.nbytes = sum(needs)
        self.mode, self.mode_reason = self._decide(mode)
        log.info("tensorstore_ds: %s serves %s in %s mode: %s", self.location, self.fields, self.mode, self.mode_reason)
        self.parts = [
            StorePart(
                s, self.arrays_fields, self.text_fields, self.mode, _share(self.budget, need, self.nbytes), progress
            )
            for s, need in zip(self.stores, needs)
        ]
        self.offsets = np.cumsum([0] + [len(p) for p in self.parts]).astype(np.int64)
        self._arrays, self._text = self._combine()

    def _decide(self, mode: str) -> tuple[str, str]:
        """RAM or paged, counting the fields that already have a copy on this machine once."""
        shared = sum(shared_nbytes(s, self.arrays_fields, self.text_fields) for s in self.stores)
        directory = shm_dir()
        decided = decide_mode(mode, self.nbytes, self.budget, shared, (directory, free_bytes(directory)))
        return agree_across_ranks(*decided) if mode == "auto" else decided

    def _combine(self) -> tuple[dict[str, ServedArray], dict[str, ServedText]]:
        """The parts' fields as one array or column each."""
        if len(self.parts) == 1:
            return dict(self.parts[0].arrays), dict(self.parts[0].text)
        arrays = {f: ConcatArray([p.arrays[f] for p in self.parts], self.offsets) for f in self.arrays_fields}
        text = {f: ConcatText([p.text[f] for p in self.parts], self.offsets) for f in self.text_fields}
        return dict(arrays), dict(text)

    @property
    def location(self) -> str | list[str]:
        """The store's path or URL; a list of them for several stores."""
        return [s.location for s in self.stores] if self.several else self.store.location

    @property
    def fields(self) -> list[str]:
        text = [f for f in self.text_fields if f not in self.caption_choice.hidden]
        return [public_name(f) for f in self.arrays_fields] + [MASK] * self.audio_mask.active + text

    def set_epoch(self, epoch: int, seed: int = 0) -> None:
        """The epoch and seed that per-epoch choices use (``caption_choice="random"``); the sampler calls it."""
        self.caption_choice.set_epoch(epoch, seed)

    @property
    def chunk_rows(self) -> int:
        """Samples per media chunk of the first store (the sampler's unit of locality)."""
        return self.parts[0].chunk_rows

    @property
    def chunk_bytes(self) -> int:
        """Bytes that the samples of one media chunk take in every selected array together."""
        return self.chunk_rows * sum(self.store.manifest.arrays[f].row_bytes for f in self.arrays_fields)

    def prefetch_chunks(self, chunks: Sequence[int]) -> None:
        """Read ahead, in every store, the chunks holding these chunks' rows of the whole (paged mode)."""
        rows = self.chunk_rows
        for p, part in enumerate(self.parts):
            lo, hi = int(self.offsets[p]), int(self.offsets[p + 1])
            local: set[int] = set()
            for k in chunks:
                a, b = max(int(k) * rows, lo), min((int(k) + 1) * rows, hi)
                if a < b:
                    local.update(range((a - lo) // part.chunk_rows, (b - 1 - lo) // part.chunk_rows + 1))
            if local:
                part.prefetch_chunks(sorted(local))

    def __len__(self) -> int:
        return int(self.offsets[-1])

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
        text = self.caption_choice.apply({f: column.take(idx) for f, column in self._text.items()}, idx)
        batch = Batch(idx, arrays, text, self.channels_last, slot)
        return item_of(batch, self.transform) if self.transform is not None else batch

    def _gather(self, idx: np.ndarray) -> tuple[dict[str, np.ndarray], SlotHandle | None]:
        """Gather every array field into one ring slot (or new memory when the ring is full)."""
        layout = [(public_name(f), a.dtype.str, (len(idx), *a.shape[1:])) for f, a in self._arrays.items()]
        layout += self.audio_mask.layout(len(idx))
        worker = torch.utils.data.get_worker_info()
        in_worker = worker is not None
        ring = process_ring(worker.id if worker is not None else None)
        nbytes = layout_bytes(layout)
        s = ring.acquire(nbytes)
        if s is None:
            return self.audio_mask.fill({public_name(f): a.take(idx) for f, a in self._arrays.items()}), None
        views = carve(ring.view(s, nbytes, release=not in_worker), layout)
        if self.gather_threads > 1 and self.mode == "ram" and not in_worker:
            take_in_threads(self._arrays, idx, {f: views[public_name(f)] for f in self._arrays}, self.gather_threads)
        else:
            for f, a in self._arrays.items():
                a.take(idx, out=views[public_name(f)])
        return self.audio_mask.fill(views), (ring.handle(s, nbytes, layout) if in_worker else None)

    def close(self) -> None:
        """Unmap paged chunks; RAM buffers go when the last reference does."""
        for part in self.parts:
            part.close()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.location!r}, samples={len(self)}, fields={self.fields}, "
            f"mode={self.mode!r}, {format_bytes(self.nbytes)} of budget {format_bytes(self.budget)})"
        )


def _share(budget: int, need: int, total: int) -> int:
    """A store's part of the budget: proportional to what it needs (RAM mode fits iff the whole does)."""
    return budget if total == 0 else max(1, budget * need // total)
