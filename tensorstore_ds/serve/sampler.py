"""``ChunkShuffleSampler``: budget-aware, chunk-local shuffling across ranks, resumable mid-epoch.

Random order over a store larger than RAM reads the disk at random; this
sampler keeps reads local instead. Each epoch it shuffles the order of the
chunk files, groups consecutive chunks into windows that fit the memory
budget, and shuffles the samples within each window (the arithmetic is in
:mod:`~tensorstore_ds.serve.order`). While one window is served, the next
window this rank will read is read ahead. The order is cut into contiguous,
equal parts across ``torch.distributed`` ranks, so each rank reads about
``1/W`` of the chunk files and every rank serves the same number of samples
(padding by default, or ``drop_last``), and the order depends only on
``seed`` and the epoch.

Resuming (the Stateful protocol of torchdata)
    :meth:`~ChunkShuffleSampler.state_dict` returns a small dict of plain
    values: the seed, the store's shape, the epoch and the epoch's *levels*
    (world size and samples served per rank, see
    :mod:`~tensorstore_ds.serve.order`). The same dict comes from every rank
    of a job that runs in lockstep, so any one rank's is enough.
    :meth:`~ChunkShuffleSampler.load_state_dict` makes the next iteration
    continue from there: with the same world size, exactly at the next sample;
    with another one, the new ranks share what the epoch has not served yet.
    Restoring costs what starting an epoch costs: nothing before the position
    is read, downloaded, read ahead or iterated over (a resize into smaller
    windows walks the unseen sample numbers once, in memory). A torchdata
    ``StatefulDataLoader`` saves and restores the sampler by itself;
    :meth:`~ChunkShuffleSampler.state_at` gives the state for a plain
    ``DataLoader``, which fetches ahead of the training loop.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Any

from torch.utils.data import Sampler

from ..errors import OptionsError
from .order import Epoch, EpochOrder, Level, Piece, Seq, per_rank, rank_items
from .resume import check_state, make_state, sampler_state

log = logging.getLogger("tensorstore_ds")


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
        budget and read-ahead are used). If it has ``set_epoch(epoch, seed=)``,
        the sampler tells it the epoch and seed (per-epoch caption choice).
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
        ``False`` (default, as ``DistributedSampler``): every rank serves
        ``ceil(len / world_size)`` samples, the last rank repeating the last
        few samples of the epoch's order (at most ``world_size - 1``).
        ``True``: every rank serves ``len // world_size`` and the last few are
        left out of the epoch. Either way ranks are equal, so DDP cannot hang.
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
        self._history: list[Level] = []  # earlier levels of this epoch (resumed with other world sizes)
        self._served = 0  # samples this rank has served in the live level
        self._start = 0  # where the current (or pending) iteration began
        self._pending = False  # load_state_dict was called: the next iteration resumes
        self._epoch_window: int | None = None  # the window of a resumed epoch, from its checkpoint

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` for the next iteration.

        A restored position belongs to its epoch: setting another epoch drops it.
        """
        if epoch != self.epoch:
            self._history, self._served, self._start, self._pending, self._epoch_window = [], 0, 0, False, None
        self.epoch = epoch
        self._tell_dataset()

    def _tell_dataset(self) -> None:
        hook = getattr(self.dataset, "set_epoch", None)
        if callable(hook):
            hook(self.epoch, seed=self.seed)

    @property
    def num_samples(self) -> int:
        return len(self.dataset)

    @property
    def window(self) -> int:
        """Chunks per shuffle window (a resumed epoch keeps its checkpoint's)."""
        return self._epoch_window if self._epoch_window is not None else self._budget_window()

    def _budget_window(self) -> int:
        chunks = math.ceil(self.num_samples / self.dataset.chunk_rows) or 1
        if self.window_chunks is not None:
            return self.window_chunks
        if getattr(self.dataset, "mode", "ram") == "ram":
            return chunks
        per_chunk = max(1, self.dataset.chunk_bytes)
        # Half the budget for the window being served, half for the one read ahead.
        return max(1, min(chunks, self.dataset.budget // (2 * per_chunk)))

    def __len__(self) -> int:
        """Samples per rank in a whole epoch (equal on every rank)."""
        n, w = self.num_samples, self.world_size
        return n // w if self.drop_last else math.ceil(n / w)

    def _epoch(self) -> Epoch:
        return Epoch(self.num_samples, self.dataset.chunk_rows, self.shuffle, self.seed, self.epoch)

    def windows(self) -> list[Any]:
        """The epoch's windows: arrays of chunk numbers, in the order of the epoch."""
        return self._epoch().order(self.window).windows

    def _levels(self, served: int) -> list[Level]:
        return [*self._history, (self.world_size, served, self.drop_last, self.window)]

    def _sequence(self) -> Seq:
        """What the live level serves on all ranks."""
        return self._epoch().sequence(self._levels(self._served))

    def _rest(self) -> tuple[EpochOrder, list[Piece]]:
        """The base order and the pieces of it that this rank still serves in the live level."""
        seq = self._sequence()
        return seq.order, rank_items(seq, self.world_size, self.drop_last, self.rank, self._served)

    def __iter__(self) -> Iterator[int]:
        if not self._pending:
            self._history, self._served = [], 0
        self._pending, self._start = False, self._served
        self._tell_dataset()
        return self._serve(*self._rest())

    def _serve(self, order: EpochOrder, pieces: list[Piece]) -> Iterator[int]:
        runs = [w for k, (w, _) in enumerate(pieces) if k == 0 or pieces[k - 1][0] != w]
        prefetch = getattr(self.dataset, "prefetch_chunks", None)
        run, current = -1, None
        for w, selector in pieces:
            if w != current:
                run, current = run + 1, w
                if prefetch is not None and run + 1 < len(runs):
                    prefetch(order.windows[runs[run + 1]])
            for index in order.samples(w)[selector].tolist():
                self._served += 1  # before the yield: after next() returns, the state counts this sample
                yield index

    def state_dict(self) -> dict[str, Any]:
        """Where this epoch stands, as plain values (torchdata's Stateful protocol).

        Taken while a loader iterates, it counts the samples handed to the
        loader so far; a ``StatefulDataLoader`` takes it at the right moment
        for each batch it yields. For a plain ``DataLoader`` use
        :meth:`state_at`.
        """
        return make_state(self, self._levels(self._served))

    def state_at(self, batches: int, batch_size: int) -> dict[str, Any]:
        """The state after the training loop took ``batches`` batches of ``batch_size`` from this iteration.

        For a plain ``DataLoader``, whose workers fetch ahead of the loop:
        count the batches taken since the ``for`` loop over the loader began
        and save ``sampler.state_at(count, batch_size)``; restore it with
        :meth:`load_state_dict` before the next ``for`` loop.
        """
        if batches < 0 or batch_size < 1:
            raise OptionsError(f"batches must be >= 0 and batch_size >= 1, not {batches} and {batch_size}")
        per = per_rank(self._sequence().length, self.world_size, self.drop_last)
        return make_state(self, self._levels(min(self._start + batches * batch_size, per)))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict` or :meth:`state_at` of any rank, or from a ``StatefulDataLoader``'s state.

        The next iteration continues the saved epoch: at the next sample if
        the world size is the same (in the saved window, which the order
        depends on), else with what the epoch has not served yet, split over
        the new ranks (in this budget's windows if the saved ones are larger).
        The seed, ``shuffle`` and the store must be the ones the state was
        saved with (:class:`ResumeStateError` otherwise).
        """
        saved = check_state(self, sampler_state(state))
        levels: list[Level] = [(int(w), int(k), bool(d), int(win)) for w, k, d, win in saved["levels"]]
        world, served, drop_last, window = levels[-1]
        budget = self._budget_window()
        self.epoch = int(saved["epoch"])
        if (world, drop_last) == (self.world_size, self.drop_last):  # the same layout: continue exactly
            self._history, self._served, self._epoch_window = levels[:-1], served, window
            if window > budget:
                log.warning(
                    "tensorstore_ds: the rest of epoch %d keeps its checkpoint's windows of %d chunks (the order "
                    "depends on them), more than this budget's %d: its reads are less local; later epochs use %d",
                    self.epoch,
                    window,
                    budget,
                    budget,
                )
        else:  # a new layout: the unseen samples, re-split; in this budget's windows if the saved ones are larger
            self._history, self._served, self._epoch_window = levels, 0, min(window, budget)
            log.info("tensorstore_ds: resuming epoch %d of %d ranks on %d", self.epoch, world, self.world_size)
        self._start, self._pending = self._served, True
        self._tell_dataset()
