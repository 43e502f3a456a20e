"""Benchmark: sharded conversion on a Dask LocalCluster with 1, 2 and 4 workers, against the local pool.

    .venv/bin/python tools/bench_distributed.py [--images 120] [--repeats 2]

Uses the same mixed-size JPEGs as tools/bench_convert.py (640x480 to 4000x3000). On a
2-core machine this shows the engine's overhead, not a speed-up: 4 Dask workers share
2 cores. It also prints the measured per-core rate, from which the README's wall-time
estimates for larger conversions are computed.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchlib import median_rate  # noqa: E402

from tensorstore_ds import convert  # noqa: E402
from tensorstore_ds.demo.samples import make_image_folder  # noqa: E402

SIZES = ((640, 480), (1024, 768), (2048, 1536), (4000, 3000))


def main() -> None:
    from distributed import Client, LocalCluster

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=120)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workdir", default=str(ROOT / "bench-out"))
    args = parser.parse_args()
    source = Path(args.workdir) / f"photos-mixed-{args.images}"
    if not (source / "metadata.jsonl").exists():
        make_image_folder(source, args.images, sizes=SIZES)
    out = Path(args.workdir) / "distributed-out"
    options = {"image_column": "file_name", "progress": False}

    def local(workers: int) -> int:
        shutil.rmtree(out, ignore_errors=True)
        return convert(str(source), out, workers=workers, **options).num_samples

    local(0)  # warm the datasets cache and the page cache
    results = {
        "local, workers=0 (1 core)": median_rate(lambda: local(0), args.repeats),
        f"local pool, workers={os.cpu_count()}": median_rate(lambda: local(os.cpu_count() or 1), args.repeats),
    }
    for n in (1, 2, 4):
        with (
            LocalCluster(
                n_workers=n,
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                dashboard_address=None,
                silence_logs=logging.ERROR,
            ) as cluster,
            Client(cluster) as client,
        ):

            def dask() -> int:
                shutil.rmtree(out, ignore_errors=True)
                return convert(str(source), out, client=client, shards=4 * n, **options).num_samples

            results[f"dask, {n} worker(s), {4 * n} shards"] = median_rate(dask, args.repeats)
    base = results[f"local pool, workers={os.cpu_count()}"]
    print(
        f"\n{args.images} JPEGs, {', '.join(f'{w}x{h}' for w, h in SIZES)}; median of {args.repeats}; "
        f"{os.cpu_count()} cores"
    )
    for name, rate in results.items():
        print(f"  {name:36s} {rate:7.1f} images/s  {rate / base:5.2f}x the local pool")
    per_core = results["local, workers=0 (1 core)"]
    print(f"\nper-core rate on these images: {per_core:.1f} images/s")
    for images, label in ((700_000, "pixmo-cap (700k images)"), (100_000_000, "100M URLs")):
        core_hours = images / per_core / 3600
        walls = ", ".join(f"{n} x 32 cores: {core_hours * 60 / (n * 32):,.0f} min" for n in (1, 10, 100))
        print(f"  {label}: {core_hours:,.1f} core-hours of decoding; wall time on {walls}")


if __name__ == "__main__":
    main()
