"""``ChunkShuffleSampler``: budget-aware, chunk-local shuffling across ranks.

Random order over a store larger than RAM reads the disk at random; this
sampler keeps reads local instead. Each epoch it shuffles the order of the
chunk files, groups consecutive chunks into windows that fit the memory
budget, and shuffles the samples within each window. While one window is
served, the next window's chunk files are read ahead. The resulting order is
split into contiguous, equal (to within one) parts across
``torch.distributed`` ranks, so each sample is seen exactly once per epoch
across ranks, and the order depends only on ``seed`` and the epoch.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
from torch.utils.data import Sampler

from ..errors import OptionsError


def _dist_rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class ChunkShuffleSampler(Sampler[int]):
    """Chunk-local shuffled indices for one rank.

    Parameters
    ----------
    dataset
        A :class:`~tensorstore_ds.TensorStoreDataset` (its length, chunk size,
        budget and read-ahead are used).
    shuffle
        Shuffle at all; ``False`` gives the store order (still split by rank).
    seed
        Base seed; the order of an epoch depends on ``(seed, epoch)`` only.
    window_chunks
        Chunks shuffled together; default: as many as fit the dataset's
        budget in paged mode, all of them in RAM mode.
    rank, world_size
        Default: from ``torch.distributed`` when initialised, else 0 and 1.
    drop_last
        Trim every rank to the same length (``len // world_size``); otherwise
        ranks differ by at most one sample and every sample is served.
    """

    def __init__(
        self,
        dataset: Any,
        shuffle: bool = True,
        seed: int = 0,
        window_chunks: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        drop_last: bool = False,
    ) -> None:
        default_rank, default_world = _dist_rank_world()
        self.rank = default_rank if rank is None else rank
        self.world_size = default_world if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise OptionsError(f"rank {self.rank} is not in [0, world_size={self.world_size})")
        if window_chunks is not None and window_chunks < 1:
            raise OptionsError(f"window_chunks must be >= 1, not {window_chunks}")
        self.dataset = dataset
        self.shuffle = shuffle
        self.seed = seed
        self.window_chunks = window_chunks
        self.drop_last = drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` for the next iteration."""
        self.epoch = epoch

    @property
    def num_samples(self) -> int:
        return len(self.dataset)

    @property
    def window(self) -> int:
        """Chunks per shuffle window."""
        chunks = math.ceil(self.num_samples / self.dataset.chunk_rows) or 1
        if self.window_chunks is not None:
            return self.window_chunks
        if getattr(self.dataset, "mode", "ram") == "ram":
            return chunks
        per_chunk = max(1, self.dataset.chunk_bytes)
        # Half the budget for the window being served, half for the one read ahead.
        return max(1, min(chunks, self.dataset.budget // (2 * per_chunk)))

    def _bounds(self) -> tuple[int, int]:
        n, w = self.num_samples, self.world_size
        if self.drop_last:
            per = n // w
            return self.rank * per, (self.rank + 1) * per
        return n * self.rank // w, n * (self.rank + 1) // w

    def __len__(self) -> int:
        start, stop = self._bounds()
        return stop - start

    def windows(self) -> list[np.ndarray]:
        """The epoch's windows: arrays of chunk numbers, in serving order."""
        rows = self.dataset.chunk_rows
        chunks = np.arange(math.ceil(self.num_samples / rows))
        if self.shuffle:
            np.random.default_rng([self.seed, self.epoch, 0]).shuffle(chunks)
        return [chunks[i : i + self.window] for i in range(0, len(chunks), self.window)]

    def __iter__(self) -> Iterator[int]:
        rows, n = self.dataset.chunk_rows, self.num_samples
        rng = np.random.default_rng([self.seed, self.epoch, 1])
        windows = self.windows()
        start, stop = self._bounds()
        position = 0
        prefetch = getattr(self.dataset, "prefetch_chunks", None)
        for w, window in enumerate(windows):
            order = np.concatenate([np.arange(k * rows, min((k + 1) * rows, n)) for k in window])
            if self.shuffle:
                rng.shuffle(order)
            lo, hi = max(start - position, 0), min(stop - position, len(order))
            position += len(order)
            if lo >= hi:
                continue
            if prefetch is not None and w + 1 < len(windows):
                prefetch(windows[w + 1])
            yield from order[lo:hi].tolist()
