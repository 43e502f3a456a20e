"""A real 2-process torch.distributed (gloo, loopback) group reading one store."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader

from tensorstore_ds import ChunkShuffleSampler, TensorStoreDataset, collate
from tensorstore_ds.demo.samples import make_image_folder

from tests.media import isolate_hf_cache

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank_main(rank: int, store: str, port: int, out: str, mode: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        ds = TensorStoreDataset(
            store,
            mode=mode,
            memory_budget="64MiB" if mode == "ram" else 200_000,
            fields=["image", "source_row"],
            progress=False,
        )
        sampler = ChunkShuffleSampler(ds, seed=3)  # rank and world size come from the group
        loader = DataLoader(ds, batch_size=4, sampler=sampler, collate_fn=collate)
        epochs = {}
        for epoch in (0, 1, 0):
            sampler.set_epoch(epoch)
            mine = [int(i) for batch in loader for i in batch["index"]]
            everyone: list[list[int]] = [[] for _ in range(WORLD)]
            dist.all_gather_object(everyone, mine)
            epochs.setdefault(str(epoch), []).append(everyone)
        if rank == 0:
            Path(out).write_text(json.dumps({"epochs": epochs, "n": len(ds)}))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import tensorstore_ds

    root = tmp_path_factory.mktemp("dist")
    with pytest.MonkeyPatch.context() as mp_:
        isolate_hf_cache(mp_, root / "hf")
        folder = make_image_folder(root / "images", 37, sizes=((24, 20),))
        tensorstore_ds.convert(
            str(folder),
            root / "store",
            image_column="file_name",
            image_size=16,
            chunk_mb=0.01,
            workers=0,
            progress=False,
        )
    return root / "store"


@pytest.mark.parametrize("mode", ["ram", "paged"])
def test_each_sample_once_per_epoch_across_ranks(store: Path, tmp_path: Path, mode: str) -> None:
    out = tmp_path / "result.json"
    mp.start_processes(
        _rank_main, args=(str(store), _free_port(), str(out), mode), nprocs=WORLD, start_method="spawn", join=True
    )
    result = json.loads(out.read_text())
    n, epochs = result["n"], result["epochs"]
    for runs in epochs.values():
        for per_rank in runs:
            seen = [i for rank in per_rank for i in rank]
            assert sorted(seen) == list(range(n))  # exactly once across ranks
            assert abs(len(per_rank[0]) - len(per_rank[1])) <= 1  # balanced
    assert epochs["0"][0] == epochs["0"][1]  # same seed and epoch, same order
    assert epochs["0"][0] != epochs["1"][0]  # another epoch, another order
    assert not np.array_equal(epochs["0"][0][0], sorted(epochs["0"][0][0]))
