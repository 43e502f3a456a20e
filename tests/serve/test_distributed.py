"""Real torch.distributed (gloo, loopback) groups: equal ranks, and an elastic resume from 2 ranks to 3.

Three processes start one gloo group (spawning is the slow part, so it is done once). Two of
them, as a group of their own, train into epoch 0 with a StatefulDataLoader (2 forked workers
each, RAM mode), running a collective after every batch as DDP does, and
checkpoint. Three processes then restore rank 0's checkpoint (paged mode, no
workers), serve the rest of epoch 0, and a whole epoch 1 at the new size.
"""

from __future__ import annotations

import json
import os
import socket
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torchdata.stateful_dataloader import StatefulDataLoader

from tensorstore_ds import ChunkShuffleSampler, TensorStoreDataset, collate, open_store
from tensorstore_ds.serve.derived import pick
from tests.stores import CHUNK_BYTES, CHUNK_ROWS, build_image_store

BATCH, TAKEN, SEED = 4, 2, 3


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(loader: Any, group: Any = None) -> list[list[Any]]:
    """(index, caption) pairs of an epoch's batches, with a collective per batch (a length mismatch hangs)."""
    out = []
    for batch in loader:
        dist.all_reduce(torch.ones(1), group=group)
        out.append(list(zip(batch["index"].tolist(), batch["caption"])))
    return out


def _gather(value: Any, group: Any = None) -> list[Any]:
    everyone: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(everyone, value, group=group)
    return everyone


def _job(store: str, mode: str, workers: int, **ranks: Any) -> tuple[Any, ChunkShuffleSampler, StatefulDataLoader]:
    ds = TensorStoreDataset(
        store,
        mode=mode,
        memory_budget="64MiB" if mode == "ram" else 4 * CHUNK_BYTES,
        caption_choice="random",
        progress=False,
    )
    sampler = ChunkShuffleSampler(ds, seed=SEED, **ranks)  # by default rank and world size come from the group
    loader = StatefulDataLoader(
        ds,
        batch_size=BATCH,
        sampler=sampler,
        collate_fn=collate,
        num_workers=workers,
        multiprocessing_context="fork" if workers else None,
    )
    return ds, sampler, loader


def _first_run(rank: int, out: Path, pair: Any) -> None:
    """Ranks 0 and 1 as a group of two: part of epoch 0, a checkpoint, the rest (the reference), epoch 1."""
    ds, sampler, loader = _job(str(out / "store"), "ram", 2, rank=min(rank, 1), world_size=2)
    if rank == 2:  # not in the pair (it built the dataset only because choosing the mode is a collective)
        return
    sampler.set_epoch(0)
    it = iter(loader)
    before = []
    for _ in range(TAKEN):
        batch = next(it)
        dist.all_reduce(torch.ones(1), group=pair)
        before.append(list(zip(batch["index"].tolist(), batch["caption"])))
    state = loader.state_dict()  # inside the workers' prefetch
    if rank == 0:
        torch.save(state, out / "checkpoint.pt")
    rest = _serve(it, pair)
    sampler.set_epoch(1)
    epoch1 = _serve(loader, pair)
    result = {"before": _gather(before, pair), "rest": _gather(rest, pair), "epoch1": _gather(epoch1, pair)}
    if rank == 0:
        (out / "first.json").write_text(json.dumps({**result, "n": len(ds)}))


def _second_run(out: Path) -> dict[str, Any]:
    """All three ranks: restore rank 0's checkpoint of the two-rank run, serve the rest of epoch 0, then epoch 1."""
    _, sampler, loader = _job(str(out / "store"), "paged", 0)
    sampler.load_state_dict(torch.load(out / "checkpoint.pt"))  # another world size and worker count
    sampler.set_epoch(0)
    rest = _serve(loader)
    sampler.set_epoch(1)
    epoch1 = _serve(loader)
    return {"rest": _gather(rest), "epoch1": _gather(epoch1), "window": sampler.window}


def _rank_main(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=3, timeout=timedelta(seconds=120))
    try:
        pair = dist.new_group([0, 1])  # every rank takes part in making a group
        _first_run(rank, Path(out), pair)
        dist.barrier()
        second = _second_run(Path(out))
        if rank == 0:
            (Path(out) / "second.json").write_text(json.dumps(second))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_image_store(tmp_path_factory.mktemp("dist") / "store", n=42)  # 41 samples: odd, so ranks pad


def test_elastic_resume_across_real_groups(store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TENSORSTORE_DS_SHM_DIR", str(tmp_path))
    (tmp_path / "store").symlink_to(store)
    mp.start_processes(_rank_main, args=(_free_port(), str(tmp_path)), nprocs=3, start_method="spawn", join=True)
    first = json.loads((tmp_path / "first.json").read_text())
    second = json.loads((tmp_path / "second.json").read_text())
    n = first["n"]
    captions = open_store(store).text("captions")

    def flat(per_rank: list[list[list[Any]]]) -> list[tuple[int, str]]:
        return [(i, c) for rank in per_rank for batch in rank for i, c in batch]

    def expected(pairs: list[tuple[int, str]], epoch: int) -> None:  # the caption picked for (seed, epoch, sample)
        idx = [i for i, _ in pairs]
        choice = pick(SEED, epoch, torch.tensor(idx).numpy(), torch.tensor([len(captions[i]) for i in idx]).numpy())
        assert [c for _, c in pairs] == [captions[i][int(k)] for i, k in zip(idx, choice.tolist())]

    # Equal ranks: 41 samples on 2 ranks are 21 each (one repeat), on 3 ranks 14 each (one repeat).
    for run, world in ((first, 2), (second, 3)):
        sizes = {len(flat([rank])) for rank in run["epoch1"]}
        assert sizes == {-(-n // world)}
        assert {i for i, _ in flat(run["epoch1"])} == set(range(n))
        expected(flat(run["epoch1"]), 1)

    before = flat(first["before"])
    assert len(before) == 2 * TAKEN * BATCH
    # Without the resize, the two ranks would have served the rest exactly once ...
    assert sorted(i for i, _ in before + flat(first["rest"])) == sorted([*range(n), flat(first["rest"])[-1][0]])
    # ... and with it, the three new ranks serve every sample not yet seen, once (plus at most 2 repeats to pad).
    after = flat(second["rest"])
    assert len({len(flat([rank])) for rank in second["rest"]}) == 1
    served = [i for i, _ in before + after]
    assert set(served) == set(range(n)) and len(served) - n <= 2
    assert not {i for i, _ in before} & {i for i, _ in after}
    expected(before + after + flat(first["rest"]), 0)  # the same caption per sample, before and after the resume
    assert second["window"] == 2  # paged: windows of two chunks at the new budget
    # RAM mode's order left the unseen samples in every chunk; the resize re-split them in paged windows, so each
    # new rank reads about a third of the chunk files (plus the edges of its windows), not all of them.
    chunks = -(-n // CHUNK_ROWS)
    for rank in second["rest"]:
        assert len({i // CHUNK_ROWS for batch in rank for i, _ in batch}) <= chunks // 3 + 2 < chunks
