"""Benchmark: object storage over a loopback S3 server (moto), against local disk and plain s3fs.

    .venv/bin/python tools/bench_s3.py [--images 2000] [--repeats 3] [--shard-images 400]

1. Converting ``--images`` JPEGs (320x240) into ``s3://`` against converting them to local
   disk, in one run: the ratio of wall times, and the scratch disk used at peak.
2. A sharded conversion into S3 on a LocalCluster of 2 workers against the local pool into
   local disk: the ratio, and the bytes the commit moved (it reads the part manifests and
   writes one manifest).
3. ``push`` and ``pull`` of the 2,000-image store (about 300 MB) over loopback S3, against a
   plain s3fs ``put``/``get`` of the same files.

Everything runs on 127.0.0.1; figures are medians of ``--repeats`` runs (the machine is
shared and noisy: compare the ratios, not the absolute times).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tensorstore_ds import convert, open_store  # noqa: E402
from tensorstore_ds.demo.samples import make_image_folder  # noqa: E402
from tensorstore_ds.store.pull import pull  # noqa: E402
from tensorstore_ds.store.push import push  # noqa: E402
from tensorstore_ds.units import format_bytes  # noqa: E402
from tests.s3server import S3Server  # noqa: E402


def median_seconds(run: Callable[[], Any], repeats: int, before: Callable[[], Any] = lambda: None) -> float:
    times = []
    for _ in range(repeats):
        before()
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def tree_size(root: Path, on_disk: bool = False) -> int:
    """Bytes of the files under ``root``: their sizes, or the disk blocks they take (sparse files count less)."""
    total = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            try:
                st = os.stat(os.path.join(dirpath, name))
                total += st.st_blocks * 512 if on_disk else st.st_size
            except FileNotFoundError:
                pass
    return total


class PeakDisk:
    """Polls the size of a directory tree in a thread; ``peak`` is the largest seen."""

    def __init__(self, root: Path) -> None:
        self.root, self.peak, self._stop = root, 0, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> PeakDisk:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, tree_size(self.root, on_disk=True))


def main() -> None:
    import fsspec

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--shard-images", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default=str(ROOT / "bench-out" / "s3"))
    parser.add_argument("--only", choices=("convert", "sharded", "push"), default=None, help="run one part only")
    args = parser.parse_args()
    work = Path(args.workdir)
    os.environ["TENSORSTORE_DS_CACHE"] = str(work / "cache")
    source = work / f"photos-{args.images}"
    if not (source / "metadata.jsonl").exists():
        make_image_folder(source, args.images, sizes=((320, 240),))
    server = S3Server()
    storage = server.storage_options
    fs = fsspec.filesystem("s3", **storage)
    bucket = server.bucket("bench")
    opts = {"image_column": "file_name", "progress": False}
    local_out, scratch = work / "local-store", work / "scratch"
    lines = [f"{args.images} JPEGs of 320x240; {os.cpu_count()} cores; medians of {args.repeats}"]

    def clear_bucket() -> None:
        fs.invalidate_cache()
        if fs.exists(f"{bucket}/store"):
            fs.rm(f"{bucket}/store", recursive=True)
        fs.invalidate_cache()
        shutil.rmtree(scratch, ignore_errors=True)

    if args.only in ("sharded", "push"):
        convert(str(source), local_out, **opts)
        lines += (sharded if args.only == "sharded" else push_pull)(args, work, local_out, storage, fs, bucket, opts)
        print("\n".join(lines))
        return
    convert(str(source), local_out, **opts)  # warm the datasets and page caches
    t_local = median_seconds(
        lambda: convert(str(source), local_out, **opts), args.repeats, lambda: shutil.rmtree(local_out)
    )
    peaks = []

    def to_s3() -> None:
        with PeakDisk(scratch) as disk:
            convert(str(source), f"s3://{bucket}/store", storage_options=storage, scratch_dir=str(scratch), **opts)
        peaks.append(disk.peak)

    t_s3 = median_seconds(to_s3, args.repeats, clear_bucket)
    small_peaks = []

    def to_s3_small_lookahead() -> None:
        with PeakDisk(scratch) as disk:
            convert(
                str(source),
                f"s3://{bucket}/store",
                storage_options=storage,
                scratch_dir=str(scratch),
                lookahead=256,
                **opts,
            )
        small_peaks.append(disk.peak)

    t_small = median_seconds(to_s3_small_lookahead, args.repeats, clear_bucket)
    store_bytes = tree_size(local_out)
    lines += [
        "1. convert into S3 vs local disk",
        f"   local disk {t_local:6.1f} s   s3 {t_s3:6.1f} s   ratio {t_s3 / t_local:4.2f}x",
        f"   store {format_bytes(store_bytes)}; scratch disk at peak {format_bytes(max(peaks))} "
        f"({100 * max(peaks) / store_bytes:.0f}% of the store; blocks in use, the staging file included)",
        f"   with --lookahead 256: s3 {t_small:6.1f} s   ratio {t_small / t_local:4.2f}x   scratch disk at peak "
        f"{format_bytes(max(small_peaks))} ({100 * max(small_peaks) / store_bytes:.0f}% of the store)",
    ]
    if args.only is None:
        lines += sharded(args, work, local_out, storage, fs, bucket, opts)
        lines += push_pull(args, work, local_out, storage, fs, bucket, opts)
    server.close()
    print("\n".join(lines))


def sharded(
    args: Any, work: Path, local: Path, storage: dict[str, Any], fs: Any, bucket: str, opts: dict[str, Any]
) -> list[str]:
    from distributed import Client, LocalCluster

    source = work / f"photos-{args.shard_images}"
    if not (source / "metadata.jsonl").exists():
        make_image_folder(source, args.shard_images, sizes=((320, 240),))
    out = work / "pool-store"
    convert(str(source), out, **opts)
    t_pool = median_seconds(lambda: convert(str(source), out, **opts), args.repeats, lambda: shutil.rmtree(out))
    url = f"s3://{bucket}/sharded"
    results: list[Any] = []
    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            silence_logs=logging.ERROR,
            local_directory=str(work / "dask-workers"),
        ) as cluster,
        Client(cluster) as client,
    ):

        def clear() -> None:
            fs.invalidate_cache()
            if fs.exists(f"{bucket}/sharded"):
                fs.rm(f"{bucket}/sharded", recursive=True)
            fs.invalidate_cache()

        t_dask = median_seconds(
            lambda: results.append(convert(str(source), url, client=client, shards=8, storage_options=storage, **opts)),
            args.repeats,
            clear,
        )
    manifest = results[-1]
    read = sum(entry["size"] for entry in manifest.files.values())  # the part manifests: all the commit reads
    written = fs.size(f"{bucket}/sharded/manifest.json")
    data = sum(s.nbytes for s in open_store(out).manifest.arrays.values())
    return [
        f"2. sharded into S3 on a LocalCluster of 2 workers ({args.shard_images} images, 8 shards) vs the local pool",
        f"   local pool {t_pool:6.1f} s   dask->s3 {t_dask:6.1f} s   ratio {t_dask / t_pool:4.2f}x",
        f"   the commit read {format_bytes(read)} (8 part manifests) and wrote {format_bytes(written)}; "
        f"sample data copied: 0 of {format_bytes(data)}",
    ]


def push_pull(
    args: Any, work: Path, local: Path, storage: dict[str, Any], fs: Any, bucket: str, opts: dict[str, Any]
) -> list[str]:
    size = tree_size(local)
    dest, plain = work / "pulled", work / "plain-get"

    def clear(prefix: str) -> Callable[[], None]:
        def run() -> None:
            fs.invalidate_cache()
            if fs.exists(f"{bucket}/{prefix}"):
                fs.rm(f"{bucket}/{prefix}", recursive=True)
            fs.invalidate_cache()

        return run

    t_push = median_seconds(
        lambda: push(local, f"s3://{bucket}/pushed", progress=False, storage_options=storage),
        args.repeats,
        clear("pushed"),
    )
    t_put = median_seconds(lambda: fs.put(str(local), f"{bucket}/put", recursive=True), args.repeats, clear("put"))
    t_pull = median_seconds(
        lambda: pull(f"s3://{bucket}/pushed", dest, progress=False, storage_options=storage),
        args.repeats,
        lambda: shutil.rmtree(dest, ignore_errors=True),
    )
    t_get = median_seconds(
        lambda: fs.get(f"{bucket}/pushed", str(plain), recursive=True),
        args.repeats,
        lambda: shutil.rmtree(plain, ignore_errors=True),
    )
    mb = size / 1e6
    return [
        f"3. push/pull of a {format_bytes(size)} store over loopback S3 vs plain s3fs put/get",
        f"   push {t_push:6.1f} s ({mb / t_push:5.0f} MB/s)   s3fs put {t_put:6.1f} s ({mb / t_put:5.0f} MB/s)"
        f"   ratio {t_push / t_put:4.2f}x",
        f"   pull {t_pull:6.1f} s ({mb / t_pull:5.0f} MB/s)   s3fs get {t_get:6.1f} s ({mb / t_get:5.0f} MB/s)"
        f"   ratio {t_pull / t_get:4.2f}x",
    ]


if __name__ == "__main__":
    main()
