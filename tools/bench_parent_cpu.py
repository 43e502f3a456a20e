"""CPU time of the converting process itself, per sample, and the ceiling it implies.

Converts a Parquet file of paths to 224 x 224 JPEGs (photo-like) and
captions with ``--workers`` decode processes and reads the converting
process's own CPU time (user + system, all its threads, not its children)
from ``getrusage``. Fixed costs (imports, opening the source, starting the
pool, the manifest) are removed by converting twice, ``--small`` and
``--n`` rows, and taking the slope: ``(cpu(n) - cpu(small)) / (n - small)``.
The median slope of ``--repeats`` pairs is printed with the samples per second
one core of converting process can sustain (the ceiling, whatever the cores),
the decode processes' CPU per sample (``RUSAGE_CHILDREN``, the same slope),
and the wall-clock rate of the large conversion on this machine's cores.

``--root DIR`` measures another checkout (e.g. the code before this
change, unpacked with ``git archive``) in the same run, as a baseline:

    .venv/bin/python tools/bench_parent_cpu.py
    git archive 88b185d | tar -x -C /tmp/before && .venv/bin/python tools/bench_parent_cpu.py --root /tmp/before
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path


def own_cpu(who: int = resource.RUSAGE_SELF) -> float:
    """CPU seconds of this process (all threads), or of its ended children (``RUSAGE_CHILDREN``)."""
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000, help="rows of the large conversion (default 3000)")
    parser.add_argument("--small", type=int, default=500, help="rows of the small conversion (default 500)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1], help="checkout to measure")
    parser.add_argument("--target", type=float, default=0.25, help="maximum ms per sample")
    parser.add_argument("--size", type=int, nargs=2, default=(224, 224), metavar=("W", "H"), help="JPEG size")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(args.root))
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tensorstore_ds import convert
    from tensorstore_ds.demo.samples import make_image_folder
    from tensorstore_ds.processes import usable_cores

    with tempfile.TemporaryDirectory() as tmp:
        folder = make_image_folder(Path(tmp) / "photos", args.n, sizes=(tuple(args.size),))
        paths = sorted(str(p) for p in folder.glob("*.jpg"))
        table = Path(tmp) / "photos.parquet"
        pq.write_table(pa.table({"image": paths, "caption": [f"photo {i}" for i in range(len(paths))]}), table)

        def cpu(limit: int) -> tuple[float, float, float]:
            before, children, start = own_cpu(), own_cpu(resource.RUSAGE_CHILDREN), time.perf_counter()
            convert(str(table), Path(tmp) / "out", image_column="image", workers=args.workers, limit=limit,
                    overwrite=True, progress=False)  # fmt: skip
            return own_cpu() - before, own_cpu(resource.RUSAGE_CHILDREN) - children, time.perf_counter() - start

        cpu(args.small)  # warm: imports, page cache
        slopes, decoders, rates = [], [], []
        for _ in range(args.repeats):
            (small, small_kids, _), (large, large_kids, wall) = cpu(args.small), cpu(args.n)
            slopes.append((large - small) / (args.n - args.small))
            decoders.append((large_kids - small_kids) / (args.n - args.small))
            rates.append(args.n / wall)
            print(f"    {args.small} rows {small:.2f} s CPU, {args.n} rows {large:.2f} s CPU "
                  f"(decode processes {small_kids:.2f} s, {large_kids:.2f} s), {wall:.2f} s", flush=True)  # fmt: skip
    ms, kids = statistics.median(slopes) * 1000, statistics.median(decoders) * 1000
    print(
        f"bench_parent_cpu ({args.root}): workers={args.workers}, {args.size[0]}x{args.size[1]} JPEGs: converting "
        f"process {ms:.3f} ms CPU per sample (median of {args.repeats}), ceiling {1000 / ms:,.0f} samples/s; "
        f"decode processes {kids:.2f} ms CPU per sample; "
        f"{statistics.median(rates):.0f} samples/s wall on {usable_cores()} cores"
    )
    return 0 if ms <= args.target else 1


if __name__ == "__main__":
    sys.exit(main())
