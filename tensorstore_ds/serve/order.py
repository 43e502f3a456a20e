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
    A checkpoint records the epoch's *levels*: ``[(W, k, drop_last), ...]``,
    one per world size the epoch has run with, where ``k`` is the samples
    each rank had served (ranks run in lockstep, so one number holds for all).
    A fresh epoch is one level over ``S = [0, n)``. Restoring with another
    world size (or ``drop_last``) starts a new level whose ``S`` is what the previous level left
    unserved: ``S`` minus every position a rank served (padding repeats
    count as serving their sample), in ``S``'s order. The new level splits
    that remainder as above, so every sample not yet seen is served exactly
    once (plus at most ``W - 1`` repeats to keep ranks equal, or minus at most
    ``W - 1`` with ``drop_last``), and the remainder is still made of runs of
    ``O``: locality survives. Restoring with the same world size continues the
    last level at ``k``: exactly the sample that would have come next. The
    rest of a resumed epoch keeps the checkpoint's ``window`` (``O`` depends
    on it); the next epoch uses the restoring sampler's own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Ranges = list[tuple[int, int]]
"""Half-open ranges of positions in the base order, in serving order (repeats allowed)."""

Level = tuple[int, int, bool]
"""``(world_size, samples served per rank, drop_last)`` of one pass of an epoch."""


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
        self.n, self.rows, self.shuffle, self.seed, self.epoch = n, chunk_rows, shuffle, seed, epoch
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

    def pieces(self, ranges: Ranges) -> list[tuple[int, int, int]]:
        """``(window, lo, hi)`` for every window piece of ``ranges``: samples ``samples(window)[lo:hi]``."""
        out = []
        for a, b in ranges:
            while a < b:
                w = self.window_of(a)
                start, stop = int(self.starts[w]), int(self.starts[w + 1])
                end = min(b, stop)
                out.append((w, a - start, end - start))
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


def equalised(seq: Ranges, world: int, drop_last: bool) -> tuple[Ranges, int]:
    """``seq`` cut or padded to ``world`` equal parts, and the part's length."""
    length = total(seq)
    if drop_last:
        per = length // world
        return cut(seq, 0, per * world), per
    per = math.ceil(length / world)
    pad = per * world - length
    out = list(seq)
    for j in range(pad):  # pad item j repeats item (length - pad + j) % length: the last ones, cyclically
        i = (length - pad + j) % length
        out += cut(seq, i, i + 1)
    return out, per


def rank_part(seq: Ranges, world: int, drop_last: bool, rank: int) -> Ranges:
    """The positions that ``rank`` of ``world`` serves in a pass over ``seq``."""
    padded, per = equalised(seq, world, drop_last)
    return cut(padded, rank * per, (rank + 1) * per)


def remainder(seq: Ranges, level: Level) -> Ranges:
    """What a pass over ``seq`` left unserved after each rank served ``k`` samples, in ``seq``'s order."""
    world, served, drop_last = level
    length = total(seq)
    per = equalised(seq, world, drop_last)[1]
    served, pad = min(served, per), max(0, per * world - length)
    seen: list[tuple[int, int]] = []  # ranges of indices into seq
    for r in range(world):
        lo, hi = r * per, r * per + served
        if lo < length:
            seen.append((lo, min(hi, length)))
        for i in range(max(lo, length), hi):  # padding item length + j repeats seq[(length - pad + j) % length]
            j = (i - pad) % length
            seen.append((j, j + 1))
    out: Ranges = []
    position = 0
    for a, b in sorted(seen):
        if a > position:
            out += cut(seq, position, a)
        position = max(position, b)
    if position < length:
        out += cut(seq, position, length)
    return out


def pass_sequence(n: int, levels: Sequence[Level]) -> Ranges:
    """The sequence that the last of ``levels`` serves: ``[0, n)`` less what the earlier levels served."""
    seq: Ranges = [(0, n)] if n else []
    for level in levels[:-1]:
        seq = remainder(seq, level)
    return seq
