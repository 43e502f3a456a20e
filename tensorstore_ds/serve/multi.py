"""``MultiStoreDataset``: several stores served as one dataset, without copying them.

:class:`~tensorstore_ds.TensorStoreDataset` serves one store or a list of
them through the same code (one :class:`~tensorstore_ds.serve.part.StorePart`
per store, fields joined by :class:`~tensorstore_ds.serve.arrays.ConcatArray`);
this subclass only names the several-store case, for code that constructs it
explicitly. ``TensorStoreDataset([a, b])`` serves the same samples.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import OptionsError
from .arrays import ConcatArray, ConcatText
from .dataset import StorePath, TensorStoreDataset

__all__ = ["ConcatArray", "ConcatText", "MultiStoreDataset"]


class MultiStoreDataset(TensorStoreDataset):
    """Stores with the same fields and layouts as one map-style Dataset.

    Parameters
    ----------
    paths
        Store directories, URLs or opened stores, in the order of the whole.
    fields, memory_budget, mode, transform, channels_last, progress, caption_choice, gather_threads
        As for :class:`~tensorstore_ds.TensorStoreDataset`; the budget and
        the mode apply to all the stores together.
    cache_dir, cache_limit, storage_options
        For stores at URLs (``cache_dir`` only with a single remote store).
    """

    def __init__(
        self,
        paths: Sequence[StorePath],
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
        if isinstance(paths, (str, os.PathLike)) or not isinstance(paths, Sequence):
            raise OptionsError(f"MultiStoreDataset takes a list of stores, not {type(paths).__name__}")
        super().__init__(
            list(paths),
            fields,
            memory_budget,
            mode,
            transform,
            channels_last,
            progress,
            cache_dir,
            cache_limit,
            storage_options,
            caption_choice,
            gather_threads,
        )
