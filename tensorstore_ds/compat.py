"""Drop-in replacements for the seed's ``in_memory_datasets`` module.

Code written for the seed keeps working after one changed import::

    from tensorstore_ds.compat import InMemoryImageTextDataset, collate_in_memory_images

The first construction converts the dataset once (:func:`tensorstore_ds.convert`)
into a store in the cache directory (:func:`cache_root`), named by a hash of the
dataset's fingerprint and every option that shapes the content; every later
construction with the same dataset and options, in any process, opens that store
without fetching or decoding anything. Items are built lazily from the store.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch.utils.data

from .conversion.api import convert
from .conversion.options import ConvertOptions
from .errors import OptionsError, StoreError, StoreLockedError
from .format.manifest import FORMAT_VERSION, MANIFEST, Manifest
from .options import CACHE_ENV, cache_root  # noqa: F401 (CACHE_ENV: the seed drop-in's documented setting)

log = logging.getLogger("tensorstore_ds")
CACHE_VERSION = 1  # bump when this module changes how a cache key maps to content
GREY = (128, 128, 128)
LOCK_POLL_SECONDS = 1.0


# --- the cache -----------------------------------------------------------------------


def store_key(fingerprint: str, options: ConvertOptions) -> str:
    """The store directory name: 16 hex digits of a sha256 over everything that shapes it.

    Parameters
    ----------
    fingerprint
        The source dataset's ``_fingerprint``.
    options
        The conversion options; all content options count, defaults included.
    """
    key = {
        "fingerprint": fingerprint,
        "options": options.content(),
        "format_version": FORMAT_VERSION,
        "cache_version": CACHE_VERSION,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def dataset_fingerprint(hf_dataset: Any) -> str:
    """The ``datasets`` fingerprint of ``hf_dataset``; an error when it has none."""
    fingerprint = getattr(hf_dataset, "_fingerprint", None)
    if not isinstance(fingerprint, str) or not fingerprint:
        raise OptionsError(
            f"{type(hf_dataset).__name__} has no fingerprint to cache its conversion under; "
            "pass a datasets.Dataset (load_dataset(..., split=...) gives one), or convert it "
            "with tensorstore_ds.convert() and use TensorStoreDataset"
        )
    return fingerprint


def prepare_store(hf_dataset: Any, cache_dir: str | os.PathLike[str] | None, **options: Any) -> tuple[Path, bool]:
    """Find the cached store of ``hf_dataset`` converted with ``options``, or make it.

    Parameters
    ----------
    hf_dataset
        A ``datasets.Dataset``.
    cache_dir
        See :func:`cache_root`.
    **options
        :func:`tensorstore_ds.convert` options.

    Returns
    -------
    tuple
        The store directory, and whether this call converted anything.
    """
    fingerprint = dataset_fingerprint(hf_dataset)
    opts = ConvertOptions.from_kwargs(options)
    path = cache_root(cache_dir) / store_key(fingerprint, opts)
    if _is_cached(path, fingerprint, opts):
        log.info("tensorstore_ds: using the cached store %s", path)
        return path, False
    path.parent.mkdir(parents=True, exist_ok=True)
    _convert_when_unlocked(hf_dataset, path, options)
    return path, True


def _is_cached(path: Path, fingerprint: str, opts: ConvertOptions) -> bool:
    """A finished store made from this dataset with these options is at ``path``."""
    if not (path / MANIFEST).is_file():
        return False
    manifest = Manifest.read(path)
    same = manifest.source.get("fingerprint") == fingerprint and all(
        manifest.options.get(k) == v for k, v in opts.content().items()
    )
    if not same:  # only a hash collision or a hand-edited cache gets here
        raise StoreError(f"cached store {path} was made from another dataset or with other options; delete it")
    return True


def _convert_when_unlocked(hf_dataset: Any, path: Path, options: dict[str, Any]) -> None:
    """Convert, waiting while another process (another rank, say) converts the same store."""
    waiting = False
    while True:
        try:
            convert(hf_dataset, path, **options)
            return
        except StoreLockedError as exc:
            if not waiting:
                log.warning("tensorstore_ds: %s; waiting", exc)
                waiting = True
            time.sleep(LOCK_POLL_SECONDS)


# --- the datasets --------------------------------------------------------------------


def caption_text(value: Any) -> str:
    """A seed-style caption: a list gives its first element, a dict its ``"raw"``."""
    if isinstance(value, dict):
        return caption_text(value.get("raw"))
    if isinstance(value, (list, tuple)):
        return caption_text(value[0] if value else None)
    return "" if value is None else str(value)


def square_size(image_size: int | Sequence[int]) -> int:
    """The side of the square the store holds, from the seed's ``(h, w)``."""
    if isinstance(image_size, int):
        return image_size
    sizes = tuple(image_size)
    if len(sizes) != 2 or sizes[0] != sizes[1]:
        raise OptionsError(
            f"image_size={image_size!r}: tensorstore_ds stores square images of one size; "
            f"give (s, s), e.g. ({max(sizes, default=224)}, {max(sizes, default=224)})"
        )
    return int(sizes[0])


class _StoreBackedDataset(torch.utils.data.Dataset[dict[str, Any]]):
    """What both seed classes share: the cached store, the index map, lazy items.

    Parameters
    ----------
    hf_dataset, cache_dir, keep_placeholders, memory_budget
        As in the public classes.
    caption_column
        The seed's ``txt_col``.
    options
        The other :func:`tensorstore_ds.convert` options.
    """

    media: str

    def __init__(
        self,
        hf_dataset: Any,
        caption_column: str,
        options: dict[str, Any],
        cache_dir: str | os.PathLike[str] | None,
        keep_placeholders: bool,
        memory_budget: int | float | str,
    ) -> None:
        from .serve.dataset import TensorStoreDataset

        start = time.perf_counter()
        self.store_path, self.converted_now = prepare_store(
            hf_dataset, cache_dir, caption_column=caption_column, progress=True, **options
        )
        self.dataset = TensorStoreDataset(
            self.store_path, fields=[self.media, "caption"], memory_budget=memory_budget, channels_last=True
        )
        store = self.dataset.store
        self.failures: list[dict[str, Any]] = sorted(store.failures(), key=lambda f: f["row"])
        self.failed_indices: list[int] = [int(f["row"]) for f in self.failures]
        self.keep_placeholders = keep_placeholders
        self._store_index: np.ndarray | None = None
        self._failed_captions: dict[int, str] = {}
        if keep_placeholders:
            self._store_index = _row_map(store)
            self._failed_captions = _captions_of_rows(hf_dataset, caption_column, self.failed_indices)
        self.construction_seconds = time.perf_counter() - start

    def __len__(self) -> int:
        return len(self.dataset) if self._store_index is None else len(self._store_index)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, Any]]:
        """Build the items of a batch from one vectorised gather of the store."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"index out of range for a dataset of {n} samples: {idx[(idx < -n) | (idx >= n)][:3]}")
        idx = np.where(idx < 0, idx + n, idx)
        where = idx if self._store_index is None else self._store_index[idx]
        present = where[where >= 0]
        media, captions = self._gather(present)
        items, j = [], 0
        for row, k in zip(idx.tolist(), where.tolist()):
            if k < 0:
                items.append(self._placeholder(self._failed_captions.get(row, "")))
            else:
                items.append({self.media: media[j], "caption": captions[j]})
                j += 1
        return items

    def _gather(self, store_indices: np.ndarray) -> tuple[list[Any], list[str]]:
        """The items' media (as the seed served it) and captions, for store indices."""
        if not store_indices.size:
            return [], []
        batch = self.dataset.__getitems__(store_indices.tolist())
        rows = batch.arrays[self.media]
        media = [self._from_row(rows[j]) for j in range(len(store_indices))]  # copies
        captions = list(batch.text["caption"])
        del rows
        batch.release()
        return media, captions

    def _from_row(self, row: np.ndarray) -> Any:
        raise NotImplementedError

    def _placeholder(self, caption: str) -> dict[str, Any]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(samples={len(self)}, failed={len(self.failed_indices)}, "
            f"store={str(self.store_path)!r}, mode={self.dataset.mode!r})"
        )


def _row_map(store: Any) -> np.ndarray:
    """For every source row read, its store index, or -1 when it failed."""
    rows_read = int(store.manifest.counts.get("rows_read", 0))
    source_row = np.asarray(store.array("source_row"), dtype=np.int64)
    rows_read = max(rows_read, int(source_row.max()) + 1 if source_row.size else 0)
    index = np.full(rows_read, -1, dtype=np.int64)
    index[source_row] = np.arange(len(source_row), dtype=np.int64)
    return index


def _captions_of_rows(hf_dataset: Any, column: str, rows: list[int]) -> dict[int, str]:
    """Seed-style captions of a few source rows (the failed ones), read without media."""
    if not rows:
        return {}
    values = hf_dataset.select_columns([column]).select(rows)[column]
    return {row: caption_text(value) for row, value in zip(rows, values)}


class InMemoryImageTextDataset(_StoreBackedDataset):
    """Image-text pairs as the seed served them, from a store converted once and cached.

    Items are ``{"image": PIL.Image (RGB, image_size), "caption": str}``.

    The one intended difference from the seed: samples whose image could not be
    fetched or decoded are **left out** (the seed served a grey image instead),
    so ``len(dataset)`` counts good samples and index ``i`` is not source row
    ``i``. ``failed_indices`` lists the failed source rows, ``failures`` why.
    ``keep_placeholders=True`` restores the seed's behaviour: one item per
    source row read, a grey (128, 128, 128) image for each failed one.

    Parameters
    ----------
    hf_dataset
        A ``datasets.Dataset`` (its fingerprint keys the cache).
    img_col
        Column of image URLs, paths, bytes or ``Image`` features.
    txt_col
        Caption column: a string, a list (its first caption is served) or a dict
        (its ``"raw"``).
    max_samples
        Convert only the first rows of the dataset.
    image_size
        ``(s, s)``: images are squashed to this square.
    num_workers
        Decoding processes for the first construction (default: all cores).
    cache_dir
        Where the store is cached (see :func:`cache_root`).
    keep_placeholders
        Keep one item per source row, grey images for failed rows.
    memory_budget
        Passed to :class:`~tensorstore_ds.TensorStoreDataset`: the store is held in
        shared memory when it fits, paged from disk when not.
    """

    media = "image"

    def __init__(
        self,
        hf_dataset: Any,
        img_col: str = "image_url",
        txt_col: str = "caption",
        max_samples: int | None = None,
        image_size: tuple[int, int] = (224, 224),
        num_workers: int | None = None,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        keep_placeholders: bool = False,
        memory_budget: int | float | str = "auto",
    ) -> None:
        self.image_size = square_size(image_size)
        options = {"image_column": img_col, "limit": max_samples, "image_size": self.image_size, "workers": num_workers}
        super().__init__(hf_dataset, txt_col, options, cache_dir, keep_placeholders, memory_budget)

    def _from_row(self, row: np.ndarray) -> Any:
        from PIL import Image

        return Image.fromarray(row)  # an RGB image is always a copy: Pillow keeps 4 bytes per pixel

    def _placeholder(self, caption: str) -> dict[str, Any]:
        from PIL import Image

        return {"image": Image.new("RGB", (self.image_size, self.image_size), GREY), "caption": caption}


class InMemoryAudioTextDataset(_StoreBackedDataset):
    """Audio-text pairs as the seed served them, from a store converted once and cached.

    Items are ``{"audio": float32 numpy array of target_sr * max_duration
    samples (mono, zero-padded or cut), "caption": str}``.

    The one intended difference from the seed: clips that could not be read or
    decoded are **left out** (the seed served silence instead), so
    ``len(dataset)`` counts good samples and index ``i`` is not source row
    ``i``. ``failed_indices`` lists the failed source rows, ``failures`` why.
    ``keep_placeholders=True`` restores the seed's behaviour: one item per
    source row read, silence for each failed one.

    Parameters
    ----------
    hf_dataset
        A ``datasets.Dataset`` (its fingerprint keys the cache).
    audio_col
        Column of ``Audio`` features, paths, URLs or ``{"array", "sampling_rate"}``.
    target_sr
        Sample rate of the served clips.
    max_duration
        Seconds per clip; shorter clips are zero-padded, longer ones cut.
    txt_col, max_samples, num_workers, cache_dir, keep_placeholders, memory_budget
        As for :class:`InMemoryImageTextDataset` (placeholders are silence).
    """

    media = "audio"

    def __init__(
        self,
        hf_dataset: Any,
        audio_col: str = "audio",
        txt_col: str = "caption",
        max_samples: int | None = None,
        target_sr: int = 16000,
        max_duration: float = 30.0,
        num_workers: int | None = None,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        keep_placeholders: bool = False,
        memory_budget: int | float | str = "auto",
    ) -> None:
        self.target_sr = target_sr
        self.max_duration = max_duration
        options = {
            "audio_column": audio_col,
            "limit": max_samples,
            "sample_rate": target_sr,
            "audio_seconds": float(max_duration),
            "workers": num_workers,
        }
        super().__init__(hf_dataset, txt_col, options, cache_dir, keep_placeholders, memory_budget)
        self.num_samples = int(self.dataset.store.manifest.arrays["audio"].shape[1])

    def _from_row(self, row: np.ndarray) -> Any:
        return row.astype(np.float32)

    def _placeholder(self, caption: str) -> dict[str, Any]:
        return {"audio": np.zeros(self.num_samples, dtype=np.float32), "caption": caption}


def collate_in_memory_images(batch: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    """The seed's image batch: ``{"images": [PIL.Image, ...], "captions": [str, ...]}``."""
    return {"images": [item["image"] for item in batch], "captions": [item["caption"] for item in batch]}


def collate_in_memory_audio(batch: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    """The seed's audio batch: ``{"audio": [np.ndarray, ...], "captions": [str, ...]}``."""
    return {"audio": [item["audio"] for item in batch], "captions": [item["caption"] for item in batch]}
