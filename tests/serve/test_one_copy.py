"""One copy per machine: real processes started as torchrun starts them (a gloo group over
loopback) open one store in RAM mode, each with DataLoader workers; one rank is SIGKILLed
mid-epoch."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.stores import build_image_store

ROOT = Path(__file__).resolve().parents[2]
WORLD, VICTIM = 3, 1


def rank_main() -> None:
    """One rank: open the store, serve an epoch through 2 forked workers, report (VICTIM dies mid-epoch)."""
    import torch.distributed as dist
    from torch.utils.data import DataLoader

    from tensorstore_ds import ChunkShuffleSampler, TensorStoreDataset, collate, open_store
    from tensorstore_ds.serve.shm import shm_dir

    rank, out = int(os.environ["RANK"]), Path(os.environ["OUT"])
    dist.init_process_group("gloo")  # env:// as torchrun sets it
    ds = TensorStoreDataset(os.environ["STORE"], fields=["image", "caption"], memory_budget="64MiB", progress=False)
    dist.barrier()
    files = sorted(os.listdir(shm_dir()))
    dist.barrier()  # everyone has looked before anyone goes on
    store = open_store(os.environ["STORE"])
    sampler = ChunkShuffleSampler(ds, seed=1)
    loader = DataLoader(
        ds, batch_size=2, sampler=sampler, collate_fn=collate, num_workers=2, multiprocessing_context="fork"
    )
    served = []
    for b, batch in enumerate(loader):
        for i, index in enumerate(batch["index"].tolist()):
            image = batch["image"][i].permute(1, 2, 0).numpy()
            assert np.array_equal(image, store.array("images")[index]) and batch["caption"][i] == store.captions[index]
            served.append(index)
        if b == 1 and rank == VICTIM:
            (out / "killed").write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        if b == 1:
            deadline = time.monotonic() + 60
            while not (out / "killed").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.5)
    paths = [ds._arrays["images"].buffer.path] + [p.buffer.path for p in (ds._text["caption"].data,)]  # type: ignore[attr-defined]
    report = {"mode": ds.mode, "reason": ds.mode_reason, "files": files, "served": served, "paths": paths}
    (out / f"rank{rank}.json").write_text(json.dumps(report))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def shm(tmp_path: Path) -> Path:
    """A directory of our own inside /dev/shm, so other processes' buffers do not count."""
    path = Path("/dev/shm") / f"tsds-test-{os.getpid()}-{tmp_path.name}"
    path.mkdir()
    yield path
    for f in path.iterdir():
        f.unlink()
    path.rmdir()


def test_ranks_share_one_copy_and_survive_a_killed_rank(tmp_path: Path, shm: Path) -> None:
    store = build_image_store(tmp_path / "store", n=40)
    out = tmp_path / "out"
    out.mkdir()
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "WORLD_SIZE": str(WORLD),
        "STORE": str(store),
        "OUT": str(out),
        "TENSORSTORE_DS_SHM_DIR": str(shm),
        "PYTHONPATH": str(ROOT),
    }
    code = "from tests.serve.test_one_copy import rank_main; rank_main()"
    ranks = [
        subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)})
        for r in range(WORLD)
    ]
    codes = [p.wait(timeout=240) for p in ranks]
    assert codes == [0 if r != VICTIM else -signal.SIGKILL for r in range(WORLD)]
    reports = [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD) if r != VICTIM]
    for report in reports:
        copies = [f for f in report["files"] if not f.endswith(".lock")]
        assert len(copies) == 3  # images, caption bytes, caption offsets: one copy each for all ranks
        assert [os.path.basename(p) for p in report["paths"]] == [os.path.basename(p) for p in reports[0]["paths"]]
        assert report["mode"] == "ram" and f"all {WORLD} ranks chose RAM" in report["reason"]
        assert len(report["served"]) > 4  # served well past the kill, with every item checked
    deadline = time.monotonic() + 30  # the killed rank's workers notice their parent is gone
    while list(shm.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert list(shm.iterdir()) == []  # nothing left once all have exited
