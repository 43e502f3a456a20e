"""The order of one epoch, and what is left of it after a resume: the arithmetic of ``ChunkShuffleSampler``.

The epoch's base order
    An epoch's *base order* ``O`` is a permutation of the ``n`` samples that
    depends on ``(seed, epoch, chunk_rows, window)`` only. The chunk files are
    shuffled (generator ``(seed, epoch, 0)``), cut into *windows* of ``window``
    consecutive chunks, and the samples of window ``w`` are shuffled by a
    generator of their own, ``(seed, epoch, 1, w)``. ``O`` is never built
    whole: any position of it is reached by shuffling one window, so a resume
    costs the same as the start of an epoch, whatever the position.

Passes and ranks
    Everything else speaks of *positions* in ``O``, kept as lists of half-open
    ranges (:data:`Ranges`). A *pass* serves a sequence ``S`` of positions on
    ``W`` ranks. ``S`` is made equal per rank first: with ``drop_last`` its
    end is cut to a multiple of ``W``; otherwise it is padded to one by
    repeating its last ``pad < W`` positions (cyclically when ``S`` is shorter
    than the pad), which come from the last rank's own windows. Rank ``r``
    then serves the ``r``-th of ``W`` contiguous, equal parts, so it reads
    about ``1/W`` of the chunk files.

Resume levels
    A checkpoint records the epoch's *levels*: ``[(W, k, drop_last, window), ...]``,
    one per layout the epoch has run with, where ``k`` is the samples each
    rank had served (ranks run in lockstep, so one number holds for all).
    A fresh epoch is one level over ``S = [0, n)``. Restoring with another
    world size (or ``drop_last``) starts a new level whose ``S`` is what the
    previous level left unserved: ``S`` minus every position a rank served
    (padding repeats count as serving their sample), in ``S``'s order. The new
    level splits that remainder as above, so every sample not yet seen is
    served exactly once (plus at most ``W - 1`` repeats to keep ranks equal,
    or minus at most ``W - 1`` with ``drop_last``), and the remainder is still
    made of runs of ``O``: locality survives. Restoring with the same world
    size continues the last level at ``k``, in its window: exactly the sample
    that would have come next.

Another window
    A new level whose window differs from the one before (a RAM-mode
    checkpoint, one window of every chunk, restored in paged mode) carries the
    remainder over as a mask of the unseen samples (:class:`MaskSeq`), served
    in the order of its own window's ``O``: runs of those windows again, so
    each new rank reads about ``1/W`` of the chunk files even though the
    unseen samples are spread over all of them. Only this case costs memory in
    ``n`` (one byte per sample).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

Ranges = list[tuple[int, int]]
"""Half-open ranges of positions in a base order (or of indices into a sequence), in serving order."""

Level = tuple[int, int, bool, int]
"""``(world_size, samples served per rank, drop_last, window)`` of one pass of an epoch."""

Piece = tuple[int, "slice | np.ndarray"]
"""``(window, selector)``: the samples ``EpochOrder.samples(window)[selector]``, in serving order."""


class EpochOrder:
    """The base order of one epoch, reachable window by window.

    Parameters
    ----------
    n
        Samples in the dataset.
    chunk_rows
        Samples per chunk file.
    window
        Chunks shuffled together.
    shuffle
        ``False`` gives the store order (chunk order and window order kept).
    seed, epoch
        The order depends on these (and on the three above) only.
    """

    def __init__(self, n: int, chunk_rows: int, window: int, shuffle: bool, seed: int, epoch: int) -> None:
        self.n, self.rows, self.window, self.shuffle, self.seed, self.epoch = (
            n,
            chunk_rows,
            window,
            shuffle,
            seed,
            epoch,
        )
        chunks = np.arange(math.ceil(n / chunk_rows))
        if shuffle:
            np.random.default_rng([seed, epoch, 0]).shuffle(chunks)
        self.windows = [chunks[i : i + window] for i in range(0, len(chunks), window)]
        sizes = [int(np.minimum(chunk_rows, n - w * chunk_rows).sum()) for w in self.windows]
        self.starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        self._cached: tuple[int, np.ndarray] | None = None

    def window_of(self, position: int) -> int:
        """The window that holds ``position`` of the base order."""
        return int(np.searchsorted(self.starts, position, side="right")) - 1

    def samples(self, w: int) -> np.ndarray:
        """Window ``w``'s samples in serving order (the base order's positions ``starts[w]:starts[w + 1]``)."""
        if self._cached is not None and self._cached[0] == w:
            return self._cached[1]
        rows, n = self.rows, self.n
        order = np.concatenate([np.arange(k * rows, min((k + 1) * rows, n)) for k in self.windows[w]])
        if self.shuffle:
            np.random.default_rng([self.seed, self.epoch, 1, w]).shuffle(order)
        self._cached = (w, order)
        return order

    def pieces(self, ranges: Ranges) -> list[Piece]:
        """The window pieces of ``ranges`` of positions."""
        out: list[Piece] = []
        for a, b in ranges:
            while a < b:
                w = self.window_of(a)
                start, stop = int(self.starts[w]), int(self.starts[w + 1])
                end = min(b, stop)
                out.append((w, slice(a - start, end - start)))
                a = end
        return out


def total(ranges: Ranges) -> int:
    """Positions in ``ranges``."""
    return sum(b - a for a, b in ranges)


def cut(ranges: Ranges, lo: int, hi: int) -> Ranges:
    """Items ``lo:hi`` of the sequence that ``ranges`` spell."""
    out: Ranges = []
    offset = 0
    for a, b in ranges:
        length = b - a
        s, e = max(lo - offset, 0), min(hi - offset, length)
        if s < e:
            if out and out[-1][1] == a + s:
                out[-1] = (out[-1][0], a + e)
            else:
                out.append((a + s, a + e))
        offset += length
        if offset >= hi:
            break
    return out


def complement(seen: Ranges, length: int) -> Ranges:
    """The index ranges of ``[0, length)`` that no range of ``seen`` covers, in order."""
    out: Ranges = []
    position = 0
    for a, b in sorted(seen):
        if a > position:
            out.append((position, a))
        position = max(position, b)
    if position < length:
        out.append((position, length))
    return out


class RangeSeq:
    """A sequence of runs of a base order: what every pass serves while the window stays the same."""

    def __init__(self, order: EpochOrder, ranges: Ranges) -> None:
        self.order, self.ranges, self.length = order, ranges, total(ranges)

    def items(self, lo: int, hi: int) -> list[Piece]:
        return self.order.pieces(cut(self.ranges, lo, hi))

    def without(self, seen: Ranges) -> RangeSeq:
        """The sequence less the items at ``seen`` (index ranges), in order."""
        return RangeSeq(self.order, [r for a, b in complement(seen, self.length) for r in cut(self.ranges, a, b)])


class MaskSeq:
    """The samples of ``keep`` in the order of ``order``: a remainder carried over to another window.

    Each window's share is counted per chunk without shuffling; only the
    windows that items are taken from are shuffled.
    """

    def __init__(self, order: EpochOrder, keep: np.ndarray) -> None:
        self.order, self.keep = order, keep
        rows = order.rows
        per_chunk = np.add.reduceat(keep, np.arange(0, order.n, rows), dtype=np.int64) if order.n else keep
        counts = [int(per_chunk[w].sum()) for w in order.windows]
        self.cum = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        self.length = int(self.cum[-1])

    def items(self, lo: int, hi: int) -> list[Piece]:
        out: list[Piece] = []
        w = int(np.searchsorted(self.cum, lo, side="right")) - 1
        while lo < hi and w < len(self.order.windows):
            start, stop = int(self.cum[w]), int(self.cum[w + 1])
            if stop > lo:
                chosen = np.flatnonzero(self.keep[self.order.samples(w)])
                out.append((w, chosen[lo - start : min(hi, stop) - start]))
                lo = min(hi, stop)
            w += 1
        return out

    def without(self, seen: Ranges) -> MaskSeq:
        keep = self.keep.copy()
        for a, b in seen:
            for w, selector in self.items(a, b):
                keep[self.order.samples(w)[selector]] = False
        return MaskSeq(self.order, keep)


Seq = RangeSeq | MaskSeq


def kept(seq: Seq) -> np.ndarray:
    """The samples of ``seq`` as a mask over all samples."""
    if isinstance(seq, MaskSeq):
        return seq.keep
    keep = np.zeros(seq.order.n, dtype=bool)
    for w, selector in seq.items(0, seq.length):
        keep[seq.order.samples(w)[selector]] = True
    return keep


def per_rank(length: int, world: int, drop_last: bool) -> int:
    """Items per rank when a pass over ``length`` items is cut (``drop_last``) or padded to equal parts."""
    return length // world if drop_last else math.ceil(length / world)


def _padded(length: int, world: int, drop_last: bool, lo: int, hi: int) -> Ranges:
    """Index ranges into the sequence for items ``lo:hi`` of its equalised form.

    Padding item ``length + j`` repeats item ``(length - pad + j) % length``:
    the last ones, cyclically when the sequence is shorter than the pad.
    """
    pad = 0 if drop_last else per_rank(length, world, False) * world - length
    out = [(lo, min(hi, length))] if lo < min(hi, length) else []
    for i in range(max(lo, length), hi):
        j = (i - pad) % length
        out.append((j, j + 1))
    return out


def rank_items(seq: Seq, world: int, drop_last: bool, rank: int, start: int = 0) -> list[Piece]:
    """What ``rank`` of ``world`` serves of a pass over ``seq``, from its ``start``-th item on."""
    per = per_rank(seq.length, world, drop_last)
    ranges = _padded(seq.length, world, drop_last, rank * per + min(start, per), (rank + 1) * per)
    return [piece for a, b in ranges for piece in seq.items(a, b)]


def remainder(seq: Seq, level: Level) -> Seq:
    """What a pass over ``seq`` left unserved after each rank served ``k`` samples, in ``seq``'s order."""
    world, served, drop_last, _ = level
    per = per_rank(seq.length, world, drop_last)
    served = min(served, per)
    seen = [r for rank in range(world) for r in _padded(seq.length, world, drop_last, rank * per, rank * per + served)]
    return seq.without(seen)


class Epoch:
    """One epoch's base orders, one per window size, and the sequence each pass of a resumed epoch serves."""

    def __init__(self, n: int, chunk_rows: int, shuffle: bool, seed: int, epoch: int) -> None:
        self.n, self.rows, self.shuffle, self.seed, self.epoch = n, chunk_rows, shuffle, seed, epoch
        self._orders: dict[int, EpochOrder] = {}

    def order(self, window: int) -> EpochOrder:
        if window not in self._orders:
            self._orders[window] = EpochOrder(self.n, self.rows, window, self.shuffle, self.seed, self.epoch)
        return self._orders[window]

    def sequence(self, levels: Sequence[Level]) -> Seq:
        """What the last of ``levels`` serves: all samples less what the earlier levels served.

        A level with another window than the one before it carries the
        remainder over to its own base order (a mask over the samples).
        """
        seq: Seq = RangeSeq(self.order(levels[0][3]), [(0, self.n)] if self.n else [])
        for before, after in itertools.pairwise(levels):
            seq = remainder(seq, before)
            if after[3] != before[3]:
                seq = MaskSeq(self.order(after[3]), kept(seq))
        return seq
