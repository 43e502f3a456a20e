"""Benchmark: sharing stores (verify, pull, reading from a URL), against baselines measured in the same run.

    .venv/bin/python tools/bench_share.py [--samples 2000] [--workers 8] [--repeats 3]

Builds (once, cached in --workdir) a store of N random 224x224 images with the real writer
(``bench_dataset.build_store``), serves it from the loopback ``TestServer`` of the tests
(threaded ``http.server``, Range support) and measures, page cache warm:

- ``verify`` (SHA-256 of every file, 4 threads) against ``sha256sum`` and ``cat > /dev/null``
  of the same files (subprocesses);
- ``pull`` (parallel ranged transfers through fsspec/aiohttp, each file verified and fsynced)
  against a plain sequential ``urllib`` download of every file from the same server (no checks,
  no fsync), ``cp -r`` of the served directory (the local upper bound, no HTTP at all) and
  ``cp -r`` followed by an fsync of every file (the bound for a copy that survives a power cut);
- a paged ``TensorStoreDataset`` over the URL (fresh cache: epoch 1 downloads chunks on demand
  and reads the sampler's next window ahead) against one over the local store, epochs 1 and 2,
  in-process batches of 256 in ``ChunkShuffleSampler`` order; a reopen on the warm cache; and
  RAM mode's load (parallel download) against loading the local store.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from bench_dataset import build_store  # noqa: E402

from tensorstore_ds import ChunkShuffleSampler, TensorStoreDataset, open_store, pull, verify  # noqa: E402
from tensorstore_ds.format.manifest import MANIFEST  # noqa: E402
from tests.httpserver import TestServer  # noqa: E402


def seconds(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of ``fn``."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def store_files(store: Path) -> list[Path]:
    manifest = open_store(store).manifest
    return [store / name for name in sorted(manifest.files)]


def bench_verify(store: Path, repeats: int) -> dict[str, float]:
    files = [str(p) for p in store_files(store)]
    subprocess.run(["cat", *files], stdout=subprocess.DEVNULL, check=True)  # warm the page cache
    return {
        "verify": seconds(lambda: verify(store, progress=False), repeats),
        "sha256sum": seconds(
            lambda: subprocess.run(["sha256sum", *files], stdout=subprocess.DEVNULL, check=True), repeats
        ),
        "cat": seconds(lambda: subprocess.run(["cat", *files], stdout=subprocess.DEVNULL, check=True), repeats),
    }


def urllib_copy(url: str, names: list[str], dest: Path) -> None:
    """The plain way: every file, one after another, no checks."""
    for name in names:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(f"{url}/{name}") as response, open(target, "wb") as out:
            shutil.copyfileobj(response, out, 4 * 2**20)


def copy_durably(store: Path, dest: Path) -> None:
    """``cp -r``, then fsync every file: what any copy that survives a power cut costs at least."""
    subprocess.run(["cp", "-r", str(store), str(dest)], check=True)
    for path in dest.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)


def bench_pull(store: Path, url: str, scratch: Path, workers: int, repeats: int) -> dict[str, float]:
    names = [p.relative_to(store).as_posix() for p in store_files(store)] + [MANIFEST]

    def fresh(name: str) -> Path:
        shutil.rmtree(scratch / name, ignore_errors=True)
        return scratch / name

    out = {
        "pull": seconds(lambda: pull(url, fresh("pulled"), workers=workers, progress=False), repeats),
        "urllib": seconds(lambda: urllib_copy(url, names, fresh("urllib")), repeats),
        "cp": seconds(lambda: subprocess.run(["cp", "-r", str(store), str(fresh("cp"))], check=True), repeats),
        "cp_fsync": seconds(lambda: copy_durably(store, fresh("cp")), repeats),
    }
    assert verify(scratch / "pulled", progress=False).ok
    for name in ("pulled", "urllib", "cp"):
        shutil.rmtree(scratch / name, ignore_errors=True)
    return out


def epoch(ds: TensorStoreDataset, batch: int) -> float:
    """Seconds to serve every sample once, batch by batch, in the sampler's order (read-ahead included)."""
    t0, pending = time.perf_counter(), []
    for index in ChunkShuffleSampler(ds, seed=0):
        pending.append(index)
        if len(pending) == batch:
            ds.__getitems__(pending)
            pending = []
    if pending:
        ds.__getitems__(pending)
    return time.perf_counter() - t0


def bench_epochs(store: Path, url: str, scratch: Path, batch: int) -> dict[str, float]:
    budget = open_store(store).nbytes // 2  # paged: the sampler's windows are a quarter of the store
    cache = scratch / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    out: dict[str, float] = {}
    for name, path, kwargs in (("local", str(store), {}), ("remote", url, {"cache_dir": cache})):
        t0 = time.perf_counter()
        ds = TensorStoreDataset(path, mode="paged", memory_budget=budget, progress=False, **kwargs)
        out[f"{name}_epoch1"] = time.perf_counter() - t0 + epoch(ds, batch)
        out[f"{name}_epoch2"] = epoch(ds, batch)
        ds.close()
    t0 = time.perf_counter()
    ds = TensorStoreDataset(url, mode="paged", memory_budget=budget, progress=False, cache_dir=cache)
    out["remote_reopen_epoch1"] = time.perf_counter() - t0 + epoch(ds, batch)
    shutil.rmtree(cache, ignore_errors=True)
    for name, path, kwargs in (("local", str(store), {}), ("remote", url, {"cache_dir": cache})):
        t0 = time.perf_counter()
        ds = TensorStoreDataset(path, mode="ram", progress=False, **kwargs)
        out[f"{name}_ram_load"] = time.perf_counter() - t0
        del ds
    shutil.rmtree(cache, ignore_errors=True)
    return out


def report(nbytes: int, v: dict[str, float], p: dict[str, float], e: dict[str, float]) -> None:
    mb = nbytes / 1e6

    def line(label: str, secs: float, base: float | None = None, base_name: str = "") -> None:
        ratio = f"  {secs / base:5.2f}x the time of {base_name}" if base else ""
        print(f"  {label:44s} {secs:7.3f} s {mb / secs:9,.0f} MB/s{ratio}")

    print(f"\nstore: {mb:,.0f} MB")
    print("verify, warm page cache:")
    line("cat > /dev/null", v["cat"])
    line("sha256sum (1 process)", v["sha256sum"], v["cat"], "cat")
    line("tensorstore_ds verify (4 threads)", v["verify"], v["sha256sum"], "sha256sum")
    print("copy over loopback HTTP:")
    line("cp -r (local upper bound, no HTTP)", p["cp"])
    line("urllib, sequential, unverified", p["urllib"], p["cp"], "cp -r")
    line("cp -r + fsync of every file (durable bound)", p["cp_fsync"], p["cp"], "cp -r")
    line("tensorstore_ds pull (verified, fsynced)", p["pull"], p["urllib"], "urllib")
    print(f"  {'':44s} {p['pull'] / p['cp_fsync']:5.2f}x the time of cp -r + fsync")
    print("paged dataset, in-process batches, ChunkShuffleSampler order:")
    line("local, epoch 1 (open + epoch)", e["local_epoch1"])
    line("local, epoch 2", e["local_epoch2"])
    line("remote, epoch 1 (open + on-demand download)", e["remote_epoch1"], e["local_epoch1"], "local epoch 1")
    line("remote, epoch 2", e["remote_epoch2"], e["local_epoch2"], "local epoch 2")
    line("remote reopened on a warm cache, epoch 1", e["remote_reopen_epoch1"], e["local_epoch1"], "local epoch 1")
    print("RAM mode load:")
    line("local", e["local_ram_load"])
    line("remote (parallel download + load)", e["remote_ram_load"], e["local_ram_load"], "local")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=8, help="parallel transfers of pull")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default=str(ROOT / "bench-out"))
    args = parser.parse_args()
    store = Path(args.workdir) / f"store-{args.samples}"
    build_store(store, args.samples)
    nbytes = sum(p.stat().st_size for p in store_files(store))
    with TestServer() as server, tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        server.serve_dir(store, "/store/")
        url = server.url_for("/store")
        v = bench_verify(store, args.repeats)
        p = bench_pull(store, url, Path(tmp), args.workers, args.repeats)
        e = bench_epochs(store, url, Path(tmp), args.batch)
    report(nbytes, v, p, e)


if __name__ == "__main__":
    main()
