"""Tests of the batch rings: slots reused, a floor of slots made at once, waiting before growing."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from torch.utils.data import DataLoader

from tensorstore_ds import TensorStoreDataset, collate
from tensorstore_ds.serve import ring
from tensorstore_ds.serve.ring import FREE, BatchRing
from tests.stores import ROW_BYTES, build_image_store


def test_slots_below_the_floor_come_at_once() -> None:
    r = BatchRing(shared=False, max_slots=3, floor=2, wait=30.0)
    start = time.monotonic()
    assert [r.acquire(100), r.acquire(100)] == [0, 1]
    assert time.monotonic() - start < 5  # far below the 30 s wait
    r.state[0] = FREE
    assert r.acquire(100) == 0 and len(r.slots) == 2


def test_a_full_ring_at_its_floor_waits_for_a_slot_to_come_back() -> None:
    r = BatchRing(shared=True, max_slots=3, floor=1, wait=30.0)
    assert r.acquire(5000) == 0
    threading.Timer(0.2, r.state.__setitem__, (0, FREE)).start()
    start = time.monotonic()
    assert r.acquire(5000) == 0  # the same slot, once the consumer dropped its batch
    assert 0.15 < time.monotonic() - start < 20
    assert len(r.slots) == 1


def test_a_ring_grows_after_waiting_and_never_blocks_at_its_most() -> None:
    r = BatchRing(shared=False, max_slots=2, floor=1, wait=0.2)
    assert r.acquire(10) == 0
    start = time.monotonic()
    assert r.acquire(10) == 1  # nobody freed slot 0: the ring grew after its wait
    assert time.monotonic() - start >= 0.2
    start = time.monotonic()
    assert r.acquire(10) is None  # at its most slots: ordinary memory, at once
    assert time.monotonic() - start < 0.2


def test_a_larger_batch_gets_a_new_slot() -> None:
    r = BatchRing(shared=False, max_slots=3, floor=1, wait=0.05)
    assert r.acquire(10) == 0
    r.state[0] = FREE
    assert r.acquire(ring.ALIGN + 1) == 1 and len(r.slots[1]) == 2 * ring.ALIGN


@pytest.mark.parametrize("cores, workers", [(2, 4), (1, 3), (4, 2)])
def test_worker_rings_keep_their_floors(
    cores: int, workers: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers as many as the cores keep two slots, the others one, when the consumer drops its batches."""
    monkeypatch.setattr(ring, "usable_cores", lambda: cores)
    monkeypatch.setattr(ring, "WAIT", 60.0)  # forked workers see both: only a real deadlock would grow a ring
    ds = TensorStoreDataset(build_image_store(tmp_path / "store", n=40), mode="ram", progress=False)
    loader = DataLoader(
        ds, batch_size=2, shuffle=True, collate_fn=collate, num_workers=workers, multiprocessing_context="fork"
    )
    iterator = iter(loader)
    seen = [batch["index"].tolist() for batch in iterator]
    assert sorted(i for b in seen for i in b) == list(range(len(ds)))
    per_worker: dict[str, int] = {}
    for path, mapped in ring._ATTACHED.items():
        if len(mapped) >= 2 * ROW_BYTES:  # a slot (the flags' file is 12 bytes)
            pid = os.path.basename(path)[len(ring.PREFIX) :].split("-", 1)[0]
            per_worker[pid] = per_worker.get(pid, 0) + 1
    floors = sorted(ring.worker_floor(i) for i in range(workers))
    assert len(per_worker) == workers
    assert all(got <= floor for got, floor in zip(sorted(per_worker.values()), floors)), (per_worker, floors)
    del iterator, loader


def test_a_consumer_keeping_batches_grows_the_rings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ring, "WAIT", 0.05)
    ds = TensorStoreDataset(build_image_store(tmp_path / "store", n=40), mode="ram", progress=False)
    loader = DataLoader(ds, batch_size=2, collate_fn=collate, num_workers=2, multiprocessing_context="fork")
    kept = list(loader)  # no slot ever comes back: each ring waits, grows, then falls back to new memory
    assert np.concatenate([b["index"].numpy() for b in kept]).tolist() == list(range(len(ds)))
    images = np.concatenate([b["image"].permute(0, 2, 3, 1).numpy() for b in kept])
    assert np.array_equal(images, ds.__getitems__(list(range(len(ds)))).arrays["image"])
