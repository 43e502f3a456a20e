"""Gathering a batch with threads of the main process, for RAM mode without DataLoader workers.

``np.take`` releases the GIL while it copies rows, so threads that each gather
a contiguous part of the batch into their part of the ring slot copy in
parallel. Against DataLoader worker processes this needs no batch handed
between processes and no ring per worker (memory stays the data plus the main
process's two slots), but the copying runs while the training loop waits for
the batch, where workers copy ahead of it. Use threads when the loop has
little else to do between batches or memory is tight; use workers when a
per-item ``transform`` or the training step itself keeps the main process busy.

Only for arrays that are safe to read from several threads at once: whole
arrays in RAM (paged arrays map and unmap chunks as they go).
"""

from __future__ import annotations

import itertools
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .arrays import ServedArray

_POOLS: dict[int, ThreadPoolExecutor] = {}


def take_in_threads(
    arrays: dict[str, ServedArray], idx: np.ndarray, views: dict[str, np.ndarray], threads: int
) -> None:
    """``views[name][:] = arrays[key].take(idx)`` for ``(key, name)`` pairs, each split over ``threads`` threads.

    ``views`` is keyed like ``arrays``.
    """
    pool = _POOLS.get(threads)
    if pool is None:
        pool = _POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="tensorstore_ds-gather")
    bounds = np.linspace(0, len(idx), threads + 1).astype(int)
    futures = [
        pool.submit(array.take, idx[lo:hi], views[key][lo:hi])
        for key, array in arrays.items()
        for lo, hi in itertools.pairwise(bounds.tolist())
        if hi > lo
    ]
    for future in futures:
        future.result()


def _forget_after_fork() -> None:
    _POOLS.clear()  # a forked child has the pools' objects but not their threads


os.register_at_fork(after_in_child=_forget_after_fork)
