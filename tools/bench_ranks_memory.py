"""Benchmark: memory of a multi-rank job on one machine, one store in RAM mode.

    .venv/bin/python tools/bench_ranks_memory.py [--samples 20000] [--ranks 4] [--workers 2] [--batch 64]
        [--private]

Starts --ranks processes as torchrun does (``env://``, a gloo group over loopback), each
opening the same store with ``mode="auto"`` and iterating with --workers forked DataLoader
workers. In the middle of the second epoch every rank pauses; the driver sums PSS over all
ranks and all their workers, then lets them finish. The same runs over a 1-sample store
give the baseline (interpreters, torch, rings), so the excess is what the data costs:
the target is at most 1.1x the data size (one copy per machine, plus the batches in
flight). ``--private`` adds the old behaviour for comparison, one copy per rank (each
rank gets its own shared-memory directory): it needs --ranks times the data in RAM.
Prints each rank's mode and mode_reason, and the copies in the shared-memory directory.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from bench_dataset import build_store  # noqa: E402

from tensorstore_ds.demo.memory import tree_pss_bytes  # noqa: E402
from tensorstore_ds.units import format_bytes  # noqa: E402


def rank_child(store: str, workers: int, batch: int, sync: Path) -> None:
    """One rank: serve two epochs, pausing mid-way through the second until the driver has measured."""
    import torch.distributed as dist
    from torch.utils.data import DataLoader

    from tensorstore_ds import ChunkShuffleSampler, TensorStoreDataset, collate

    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo")
    ds = TensorStoreDataset(store, progress=False)
    sampler = ChunkShuffleSampler(ds, seed=0)
    loader = DataLoader(
        ds,
        batch_size=batch,
        sampler=sampler,
        collate_fn=collate,
        num_workers=workers,
        multiprocessing_context="fork",
        persistent_workers=True,
    )
    for epoch in range(2):
        sampler.set_epoch(epoch)
        for i, _batch in enumerate(loader):
            if epoch == 1 and i == len(loader) // 2:
                (sync / f"ready-{rank}").write_text(json.dumps({"mode": ds.mode, "reason": ds.mode_reason}))
                while not (sync / "go").exists():
                    time.sleep(0.05)
    (sync / f"done-{rank}").write_text(str(ds.nbytes))


def run_job(store: Path, args: argparse.Namespace, shm: Path | None) -> dict[str, Any]:
    """Start the ranks, measure at the pause, return PSS, data size and the ranks' reports."""
    sync = Path(args.workdir) / f"sync-{os.getpid()}"
    shutil.rmtree(sync, ignore_errors=True)
    sync.mkdir(parents=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(args.ranks)}
    ranks = []
    for r in range(args.ranks):
        extra = {"RANK": str(r), "LOCAL_RANK": str(r)}
        if shm is not None:  # the old behaviour: a copy per rank
            (shm / str(r)).mkdir(parents=True, exist_ok=True)
            extra["TENSORSTORE_DS_SHM_DIR"] = str(shm / str(r))
        cmd = [sys.executable, __file__, "--rank-child", str(store), str(args.workers), str(args.batch), str(sync)]
        ranks.append(subprocess.Popen(cmd, env={**env, **extra}))
    while not all((sync / f"ready-{r}").exists() for r in range(args.ranks)):
        if any(p.poll() not in (None, 0) for p in ranks):
            raise SystemExit("a rank failed")
        time.sleep(0.1)
    time.sleep(1.0)  # the workers' read-ahead settles
    pss = sum(tree_pss_bytes(p.pid) for p in ranks)
    copies = sorted(os.listdir(os.environ.get("TENSORSTORE_DS_SHM_DIR", "/dev/shm")))
    reports = [json.loads((sync / f"ready-{r}").read_text()) for r in range(args.ranks)]
    (sync / "go").write_text("")
    for p in ranks:
        p.wait()
    data = int((sync / "done-0").read_text())
    shutil.rmtree(sync, ignore_errors=True)
    return {
        "pss": pss,
        "data": data,
        "reports": reports,
        "copies": [c for c in copies if "shared" in c and not c.endswith(".lock")],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--private", action="store_true", help="also run with one copy per rank (the old way)")
    parser.add_argument("--workdir", default=str(ROOT / "bench-out"))
    parser.add_argument("--rank-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rank_child:
        store, workers, batch, sync = args.rank_child
        rank_child(store, int(workers), int(batch), Path(sync))
        return
    work = Path(args.workdir)
    store, tiny = work / f"store-{args.samples}", work / "store-1"
    build_store(store, args.samples)
    build_store(tiny, 1)
    runs = {"shared": None} | ({"private": work / f"private-shm-{os.getpid()}"} if args.private else {})
    print(f"{args.ranks} ranks x {args.workers} workers, batch {args.batch}, store of {args.samples} samples")
    for name, shm in runs.items():
        if shm is not None:
            shm = Path("/dev/shm") / shm.name
        got = run_job(store, args, shm)
        base = run_job(tiny, args, shm)
        if shm is not None:
            shutil.rmtree(shm, ignore_errors=True)
        excess = (got["pss"] - base["pss"]) / got["data"]
        print(
            f"{name:8s} PSS summed {format_bytes(got['pss'])}, over a 1-sample store's "
            f"{format_bytes(got['pss'] - base['pss'])} = {excess:.3f}x the data ({format_bytes(got['data'])})"
        )
        print(
            f"         copies in shared memory: {len(got['copies'])}; rank 0: {got['reports'][0]['mode']}, "
            f"{got['reports'][0]['reason']}"
        )
        if len({r["mode"] for r in got["reports"]}) != 1:
            print("         ranks disagree on the mode:", [r["mode"] for r in got["reports"]])


if __name__ == "__main__":
    main()
