"""Tests of ChunkShuffleSampler: determinism, equal rank splits, chunk locality, windows, read-ahead."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch.distributed as dist

from tensorstore_ds import ChunkShuffleSampler
from tensorstore_ds.errors import OptionsError


@dataclass
class FakeDataset:
    """What the sampler reads of a TensorStoreDataset, and a record of read-ahead calls."""

    n: int = 50
    chunk_rows: int = 8
    mode: str = "ram"
    budget: int = 10**9
    chunk_bytes: int = 1000
    prefetched: list[list[int]] = field(default_factory=list)

    def __len__(self) -> int:
        return self.n

    def prefetch_chunks(self, chunks: Any) -> None:
        self.prefetched.append([int(k) for k in chunks])


def order(sampler: ChunkShuffleSampler, epoch: int | None = None) -> list[int]:
    if epoch is not None:
        sampler.set_epoch(epoch)
    out = list(sampler)
    assert len(out) == len(sampler)
    return out


def runs(indices: list[int], rows: int) -> list[int]:
    """The chunk of each maximal run of consecutive indices from one chunk."""
    chunks = [i // rows for i in indices]
    return [c for k, c in enumerate(chunks) if k == 0 or chunks[k - 1] != c]


def test_one_rank_serves_every_index_once() -> None:
    got = order(ChunkShuffleSampler(FakeDataset(), seed=1))
    assert sorted(got) == list(range(50)) and got != list(range(50))
    assert all(isinstance(i, int) for i in got)


def test_deterministic_for_seed_and_epoch() -> None:
    ds = FakeDataset(mode="paged", budget=4000)
    a, b = ChunkShuffleSampler(ds, seed=7), ChunkShuffleSampler(ds, seed=7)
    assert order(a, 3) == order(b, 3)
    assert order(a, 3) == order(ChunkShuffleSampler(ds, seed=7), 3)  # iterating again repeats the epoch
    assert order(a, 4) != order(b, 3)
    assert order(ChunkShuffleSampler(ds, seed=8), 3) != order(b, 3)


def test_set_epoch_changes_the_order_and_the_chunk_order() -> None:
    sampler = ChunkShuffleSampler(FakeDataset(n=400, chunk_rows=8), seed=0, window_chunks=1)
    assert sampler.epoch == 0
    first = order(sampler)
    sampler.set_epoch(1)
    assert sampler.epoch == 1
    second = order(sampler)
    assert first != second and sorted(first) == sorted(second)
    assert runs(first, 8) != runs(second, 8)
    sampler.set_epoch(0)
    assert order(sampler) == first


def padding(whole: list[int], world_size: int) -> list[int]:
    """What the last rank repeats to make ranks equal: the last positions of the order, cyclically."""
    n = len(whole)
    pad = -n % world_size if n else 0
    return [whole[(n - pad + j) % n] for j in range(pad)]


@pytest.mark.parametrize("n", [50, 3, 1, 0])
@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_ranks_are_equal_and_split_every_index(n: int, world_size: int) -> None:
    ds = FakeDataset(n=n)
    parts = [order(ChunkShuffleSampler(ds, seed=3, rank=r, world_size=world_size), 2) for r in range(world_size)]
    assert {len(p) for p in parts} == {math.ceil(n / world_size)}  # equal: DDP's collectives cannot hang
    # Every rank sees its part of the same global order, padded by repeating its last few entries.
    whole = order(ChunkShuffleSampler(ds, seed=3), 2)
    assert [i for p in parts for i in p] == whole + padding(whole, world_size)
    assert sorted(set(whole)) == list(range(n))


def test_padding_repeats_at_most_world_size_minus_one() -> None:
    """1,001 samples on 2 ranks at batch 100: 6 batches each (DDP would hang on 5 vs 6)."""
    ds = FakeDataset(n=1001, chunk_rows=16)
    parts = [order(ChunkShuffleSampler(ds, seed=5, rank=r, world_size=2)) for r in range(2)]
    assert [len(p) for p in parts] == [501, 501]
    assert [math.ceil(len(p) / 100) for p in parts] == [6, 6]
    served = parts[0] + parts[1]
    assert sorted(set(served)) == list(range(1001)) and len(served) - 1001 == 1
    assert parts[1][-1] == parts[1][-2]  # the repeat is the last sample of the epoch, on the last rank


def test_no_shuffle_is_store_order() -> None:
    ds = FakeDataset(n=50)
    assert order(ChunkShuffleSampler(ds, shuffle=False, seed=9), 5) == list(range(50))
    parts = [order(ChunkShuffleSampler(ds, shuffle=False, rank=r, world_size=3)) for r in range(3)]
    assert parts == [list(range(17)), list(range(17, 34)), [*range(34, 50), 49]]


@pytest.mark.parametrize("n, rows", [(50, 8), (64, 8), (37, 5)])
def test_window_of_one_chunk_keeps_each_chunk_together(n: int, rows: int) -> None:
    ds = FakeDataset(n=n, chunk_rows=rows)
    for epoch in range(3):
        got = order(ChunkShuffleSampler(ds, seed=4, window_chunks=1), epoch)
        chunk_runs = runs(got, rows)
        # Each chunk is one run: every chunk_rows (or fewer, for the last chunk) indices come from one chunk.
        assert sorted(chunk_runs) == list(range(math.ceil(n / rows)))
        position = 0
        for chunk in chunk_runs:
            size = min(rows, n - chunk * rows)
            assert sorted(got[position : position + size]) == list(range(chunk * rows, chunk * rows + size))
            position += size


def test_window_of_several_chunks_keeps_windows_together() -> None:
    ds = FakeDataset(n=64, chunk_rows=8)
    sampler = ChunkShuffleSampler(ds, seed=1, window_chunks=3)
    windows = sampler.windows()
    assert [len(w) for w in windows] == [3, 3, 2]
    got, position = order(sampler), 0
    for window in windows:
        size = 8 * len(window)
        assert {i // 8 for i in got[position : position + size]} == set(window.tolist())
        position += size


def test_window_from_the_budget() -> None:
    ram = FakeDataset(n=80, chunk_rows=8, mode="ram", budget=1)
    assert ChunkShuffleSampler(ram).window == 10  # RAM: every chunk in one window
    paged = FakeDataset(n=80, chunk_rows=8, mode="paged", chunk_bytes=1000, budget=6000)
    assert ChunkShuffleSampler(paged).window == 3  # half the budget: the window served, half: the one read ahead
    paged.budget = 1999
    assert ChunkShuffleSampler(paged).window == 1  # never less than one chunk
    paged.budget = 10**9
    assert ChunkShuffleSampler(paged).window == 10  # never more than all chunks
    assert ChunkShuffleSampler(paged, window_chunks=4).window == 4
    paged.budget = 4000
    sampler = ChunkShuffleSampler(paged, seed=2)
    assert [len(w) for w in sampler.windows()] == [2, 2, 2, 2, 2]
    got = order(sampler)
    for k, window in enumerate(sampler.windows()):
        assert {i // 8 for i in got[16 * k : 16 * (k + 1)]} == set(window.tolist())


def test_prefetch_gets_the_next_window() -> None:
    ds = FakeDataset(n=50, chunk_rows=8)
    sampler = ChunkShuffleSampler(ds, seed=6, window_chunks=2)
    windows = [w.tolist() for w in sampler.windows()]
    assert [len(w) for w in windows] == [2, 2, 2, 1]
    it = iter(sampler)
    next(it)
    assert ds.prefetched == [windows[1]]  # asked for before the first window is served
    list(it)
    assert ds.prefetched == windows[1:]
    # Rank 0 of two serves positions 0..24 (windows 0 and 1): it reads ahead window 1 only.
    ds.prefetched.clear()
    rank0 = ChunkShuffleSampler(ds, seed=6, window_chunks=2, rank=0, world_size=2)
    list(rank0)
    assert ds.prefetched == windows[1:2]
    ds.prefetched.clear()  # rank 1 serves 25..49 (windows 1, 2, 3): it reads ahead 2 and 3, never 0
    list(ChunkShuffleSampler(ds, seed=6, window_chunks=2, rank=1, world_size=2))
    assert ds.prefetched == windows[2:]


def test_prefetch_is_optional() -> None:
    class Plain:
        chunk_rows = 4

        def __len__(self) -> int:
            return 10

    assert sorted(ChunkShuffleSampler(Plain(), seed=0)) == list(range(10))


def test_rank_and_world_size_default_without_distributed() -> None:
    assert not (dist.is_available() and dist.is_initialized())
    sampler = ChunkShuffleSampler(FakeDataset())
    assert (sampler.rank, sampler.world_size) == (0, 1)
    assert len(sampler) == 50
    assert ChunkShuffleSampler(FakeDataset(), rank=2, world_size=3).rank == 2


@pytest.mark.parametrize(
    "kwargs", [{"rank": 2, "world_size": 2}, {"rank": -1, "world_size": 2}, {"rank": 1}, {"window_chunks": 0}]
)
def test_bad_options(kwargs: dict[str, Any]) -> None:
    with pytest.raises(OptionsError):
        ChunkShuffleSampler(FakeDataset(), **kwargs)


def test_len_per_rank() -> None:
    ds = FakeDataset(n=10)
    assert [len(ChunkShuffleSampler(ds, rank=r, world_size=4)) for r in range(4)] == [3] * 4
    assert [len(ChunkShuffleSampler(ds, rank=r, world_size=4, drop_last=True)) for r in range(4)] == [2] * 4
    assert np.sum([len(ChunkShuffleSampler(ds, rank=r, world_size=1)) for r in range(1)]) == 10
