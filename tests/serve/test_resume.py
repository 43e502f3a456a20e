"""Mid-epoch resume of ChunkShuffleSampler, in one process: exact, elastic, O(1), checked.

Ranks are simulated with explicit ``rank``/``world_size``; the real
``torch.distributed`` groups and loaders are in test_resume_loader.py and
test_distributed.py.
"""

from __future__ import annotations

import itertools
import json
import math
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tensorstore_ds import ChunkShuffleSampler
from tensorstore_ds.errors import OptionsError, ResumeStateError
from tensorstore_ds.serve import order as order_module
from tests.serve.test_sampler import FakeDataset


def take(sampler: ChunkShuffleSampler, k: int) -> list[int]:
    """The first ``k`` indices of a new iteration (the iterator is left suspended, as a loader leaves it)."""
    return list(itertools.islice(iter(sampler), k))


def left(sampler: ChunkShuffleSampler) -> int:
    """Samples the next iteration of ``sampler`` serves."""
    order, pieces = sampler._rest()
    return sum(len(order.samples(w)[selector]) for w, selector in pieces)


def ranks(ds: Any, world: int, **kwargs: Any) -> list[ChunkShuffleSampler]:
    return [ChunkShuffleSampler(ds, rank=r, world_size=world, **kwargs) for r in range(world)]


def check_epoch(ds: Any, before: list[list[int]], after: list[list[int]], pads: int) -> None:
    """Before and after the resume, every sample is served, once each, but for at most ``pads`` repeats."""
    served = Counter(i for part in before + after for i in part)
    assert sorted(served) == list(range(len(ds)))
    assert sum(served.values()) - len(ds) <= pads
    assert len({len(part) for part in after}) <= 1  # the new ranks are equal


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("mode", ["ram", "paged"])
def test_same_world_resumes_at_the_next_sample(world: int, mode: str) -> None:
    ds = FakeDataset(n=203, chunk_rows=8, mode=mode, budget=4000)
    for k in (0, 1, 37, 40, 67, 68):
        for rank in range(world):
            reference = ChunkShuffleSampler(ds, seed=4, rank=rank, world_size=world)
            reference.set_epoch(2)
            whole = list(reference)
            sampler = ChunkShuffleSampler(ds, seed=4, rank=rank, world_size=world)
            sampler.set_epoch(2)
            assert take(sampler, k) == whole[:k]
            state = json.loads(json.dumps(sampler.state_dict()))  # plain values
            resumed = ChunkShuffleSampler(ds, seed=4, rank=rank, world_size=world)
            resumed.load_state_dict(state)
            assert resumed.epoch == 2
            assert list(resumed) == whole[k:]
            assert list(resumed) == whole  # the next iteration is a whole epoch again


@pytest.mark.parametrize(
    "old, new, drop_last",
    [(2, 3, False), (4, 2, False), (1, 4, False), (3, 3, False), (2, 3, True), (4, 1, True), (3, 2, False)],
)
@pytest.mark.parametrize("fraction", [0.0, 0.3, 0.9, 1.0])
def test_elastic_resume_serves_the_rest_once(old: int, new: int, drop_last: bool, fraction: float) -> None:
    ds = FakeDataset(n=211, chunk_rows=8, mode="paged", budget=4000)
    olds = ranks(ds, old, seed=9, drop_last=drop_last)
    k = int(len(olds[0]) * fraction)
    before = [take(s, k) for s in olds]
    state = olds[0].state_dict()
    assert all(s.state_dict() == state for s in olds)  # lockstep: one rank's checkpoint is everyone's
    news = ranks(ds, new, seed=9, drop_last=drop_last)
    for s in news:
        s.load_state_dict(state)
    after = [list(s) for s in news]
    if drop_last:  # each pass leaves out at most world - 1 samples; nothing is served twice
        served = [i for part in before + after for i in part]
        assert len(served) == len(set(served)) >= 211 - (old - 1) - (new - 1)
    else:
        check_epoch(ds, before, after, pads=(old - 1) + (new - 1))
    for s in news:  # later epochs use the new world size normally
        s.set_epoch(1)
    assert sorted({i for s in news for i in s}) == list(range(211)) or drop_last


def test_a_chain_of_resizes_within_one_epoch() -> None:
    ds = FakeDataset(n=500, chunk_rows=10, mode="paged", budget=6000)
    served: list[list[int]] = []
    state = None
    for world, fraction in ((2, 0.25), (3, 0.5), (1, 0.1), (4, 1.0)):
        samplers = ranks(ds, world, seed=1)
        for s in samplers:
            s.set_epoch(5)
            if state is not None:
                s.load_state_dict(state)
        lengths = [left(s) for s in samplers]
        parts = [take(s, math.ceil(lengths[0] * fraction)) for s in samplers]
        served += parts
        state = samplers[-1].state_dict()
    assert [level[0] for level in state["levels"]] == [2, 3, 1, 4]
    counts = Counter(i for part in served for i in part)
    assert sorted(counts) == list(range(500)) and sum(counts.values()) - 500 <= 1 + 2 + 0 + 3


def test_locality_survives_a_resize() -> None:
    """Paged mode: after 2 -> 4 at mid-epoch, each new rank reads about a quarter of the chunks, not all."""
    rows = 8
    ds = FakeDataset(n=64 * rows, chunk_rows=rows, mode="paged", chunk_bytes=1000, budget=4000)  # windows of 2
    olds = ranks(ds, 2, seed=2)
    [take(s, 128) for s in olds]
    news = ranks(ds, 4, seed=2)
    for s in news:
        s.load_state_dict(olds[1].state_dict())
    for s in news:
        chunks = {i // rows for i in s}
        assert len(chunks) <= 64 // 4 // 2 + 4  # its share of the remaining half, plus window edges
    for s in news:  # a whole epoch at the new size: a quarter each, plus a window at each edge
        s.set_epoch(1)
        assert len({i // rows for i in s}) <= 64 // 4 + 2


def test_a_resize_from_ram_to_paged_mode_reads_locally_again() -> None:
    """RAM mode's one window scatters what is unseen over every chunk; a resize re-splits it in paged windows."""
    rows = 8
    ram = FakeDataset(n=64 * rows, chunk_rows=rows, mode="ram")
    olds = ranks(ram, 2, seed=2)
    before = [take(s, 128) for s in olds]
    assert olds[0].window == 64
    paged = FakeDataset(n=64 * rows, chunk_rows=rows, mode="paged", chunk_bytes=1000, budget=4000)  # windows of 2
    news = ranks(paged, 4, seed=2)
    for s in news:
        s.load_state_dict(olds[0].state_dict())
    after = [list(s) for s in news]
    check_epoch(paged, before, after, pads=1 + 3)
    for part in after:  # a quarter of the chunks (each holds about half unseen samples), plus window edges
        assert len({i // rows for i in part}) <= 64 // 4 + 4
    assert all(s.window == 2 for s in news) and news[0].state_dict()["levels"] == [
        [2, 128, False, 64],
        [4, 64, False, 2],
    ]


def test_restoring_reads_nothing_before_the_position(monkeypatch: pytest.MonkeyPatch) -> None:
    """No window before the position is shuffled or read ahead: the cost does not grow with the position."""
    ds = FakeDataset(n=4000, chunk_rows=10, mode="paged", chunk_bytes=1000, budget=4000)  # 200 windows
    sampler = ChunkShuffleSampler(ds, seed=3)
    whole = list(sampler)
    shuffled: list[int] = []
    original = order_module.EpochOrder.samples

    def samples(self: Any, w: int) -> Any:
        shuffled.append(w)
        return original(self, w)

    monkeypatch.setattr(order_module.EpochOrder, "samples", samples)
    ds.prefetched.clear()
    resumed = ChunkShuffleSampler(ds, seed=3)
    resumed.load_state_dict(sampler.state_at(batches=3610, batch_size=1))  # 90% of the epoch, mid-window
    it = iter(resumed)
    assert next(it) == whole[3610]
    assert shuffled == [180] and len(ds.prefetched) == 1  # one window shuffled, the next read ahead
    assert ds.prefetched[0] == resumed.windows()[181].tolist()
    assert list(it) == whole[3611:]
    assert len(shuffled) == 20 and len(ds.prefetched) == 19


def test_state_at_for_a_plain_dataloader() -> None:
    ds = FakeDataset(n=100, chunk_rows=8)
    sampler = ChunkShuffleSampler(ds, seed=0, rank=1, world_size=2)
    whole = list(sampler)
    list(itertools.islice(iter(sampler), 30))  # a loader's workers fetched 30 ahead ...
    state = sampler.state_at(batches=2, batch_size=8)  # ... but the loop took 2 batches
    resumed = ChunkShuffleSampler(ds, seed=0, rank=1, world_size=2)
    resumed.load_state_dict(state)
    assert list(resumed) == whole[16:]
    # state_at counts from where the iteration began: after a resume, from the resume point.
    resumed.load_state_dict(state)
    list(itertools.islice(iter(resumed), 20))
    again = ChunkShuffleSampler(ds, seed=0, rank=1, world_size=2)
    again.load_state_dict(resumed.state_at(batches=1, batch_size=8))
    assert list(again) == whole[24:]
    assert resumed.state_at(batches=100, batch_size=8)["levels"] == [[2, 50, False, 13]]  # capped at the end
    with pytest.raises(OptionsError, match="batch_size >= 1"):
        sampler.state_at(1, 0)


def test_set_epoch_keeps_a_restored_position_only_for_its_epoch() -> None:
    ds = FakeDataset(n=60, chunk_rows=8)
    sampler = ChunkShuffleSampler(ds, seed=0)
    sampler.set_epoch(3)
    whole = list(sampler)
    take(sampler, 10)
    state = sampler.state_dict()
    resumed = ChunkShuffleSampler(ds, seed=0)
    resumed.load_state_dict(state)
    resumed.set_epoch(3)  # the usual training loop sets the epoch again: the position stays
    assert resumed.state_dict() == state
    assert list(resumed) == whole[10:]
    resumed.load_state_dict(state)
    resumed.set_epoch(4)  # another epoch: starts at its beginning
    assert len(list(resumed)) == 60


def test_window_of_the_saved_epoch_is_kept(caplog: pytest.LogCaptureFixture) -> None:
    """A new memory budget changes the window; the resumed epoch keeps its own, later epochs use the new one."""
    saved = FakeDataset(n=160, chunk_rows=8, mode="paged", budget=4000)
    sampler = ChunkShuffleSampler(saved, seed=6)
    whole = list(sampler)
    take(sampler, 50)
    bigger = FakeDataset(n=160, chunk_rows=8, mode="paged", budget=40_000)
    resumed = ChunkShuffleSampler(bigger, seed=6)
    resumed.load_state_dict(sampler.state_dict())
    assert list(resumed) == whole[50:]
    resumed.set_epoch(1)
    assert resumed.window == 20 != sampler.window == 2
    assert not caplog.records
    # The other way round (a RAM-mode checkpoint restored in paged mode): said, since reads are less local.
    take(resumed, 5)
    sampler.load_state_dict(resumed.state_dict())
    assert "keeps its checkpoint's windows of 20 chunks (the order depends on them), more than this budget's 2" in (
        caplog.text
    )


@pytest.mark.parametrize(
    "change, key",
    [({"seed": 1}, "seed"), ({"shuffle": False}, "shuffle"), ({"n": 61}, "samples"), ({"chunk_rows": 4}, "chunk_rows")],
)
def test_a_checkpoint_of_another_sampler_is_refused(change: dict[str, Any], key: str) -> None:
    state = ChunkShuffleSampler(FakeDataset(n=60, chunk_rows=8), seed=0).state_dict()
    ds = FakeDataset(n=change.get("n", 60), chunk_rows=change.get("chunk_rows", 8))
    sampler = ChunkShuffleSampler(ds, seed=change.get("seed", 0), shuffle=change.get("shuffle", True))
    with pytest.raises(ResumeStateError, match=f"taken with {key}=") as info:
        sampler.load_state_dict(state)
    assert info.value.key == key


def test_a_dict_without_sampler_state_is_refused() -> None:
    sampler = ChunkShuffleSampler(FakeDataset(), seed=0)
    with pytest.raises(ResumeStateError, match=r"no ChunkShuffleSampler state in this checkpoint \(keys \['model'\]"):
        sampler.load_state_dict({"model": {}})
    state = sampler.state_dict()
    with pytest.raises(ResumeStateError, match="levels"):
        sampler.load_state_dict({**state, "levels": [[0, 1, False, 1]]})


def test_the_dataset_hears_epoch_and_seed() -> None:
    class Listening(FakeDataset):
        heard: list[tuple[int, int]]

        def set_epoch(self, epoch: int, seed: int = 0) -> None:
            self.heard.append((epoch, seed))

    ds = Listening(n=20)
    ds.heard = []
    sampler = ChunkShuffleSampler(ds, seed=7)
    sampler.set_epoch(2)
    list(sampler)
    resumed = ChunkShuffleSampler(ds, seed=7)
    resumed.load_state_dict(sampler.state_dict())
    assert ds.heard == [(2, 7), (2, 7), (2, 7)]


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 70),
    rows=st.integers(1, 9),
    steps=st.lists(
        st.tuples(st.integers(1, 5), st.floats(0, 1), st.booleans(), st.integers(1, 4)), min_size=1, max_size=3
    ),
)
def test_any_history_serves_each_sample_at_most_once_more_than_needed(
    n: int, rows: int, steps: list[tuple[int, float, bool, int]]
) -> None:
    """Property: through any chain of resizes and budgets, every sample is served; repeats only pad, drops only
    drop_last."""
    ds = FakeDataset(n=n, chunk_rows=rows)
    served: Counter[int] = Counter()
    state = None
    for world, fraction, drop_last, window in [*steps, (*steps[-1][:1], 1.0, *steps[-1][2:])]:
        samplers = ranks(ds, world, seed=2, window_chunks=window, drop_last=drop_last)
        for s in samplers:
            if state is not None:
                s.load_state_dict(state)
        lengths = {left(s) for s in samplers}
        assert len(lengths) == 1  # equal ranks in every pass
        k = int(lengths.pop() * fraction)
        for s in samplers:
            served.update(take(s, k))
        state = samplers[0].state_dict()
    pads = sum(w - 1 for w, *_ in steps) + steps[-1][0] - 1
    if not any(d for _, _, d, _ in steps):
        assert set(served) == set(range(n))
    assert set(served) <= set(range(n)) and sum(served.values()) - len(served) <= pads
