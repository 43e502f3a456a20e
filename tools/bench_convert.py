"""Benchmark: ``convert`` against the seed's per-image path, on photo-like JPEGs of mixed sizes.

    .venv/bin/python tools/bench_convert.py [--images 240] [--repeats 3]

Makes JPEGs from 640x480 to 4000x3000 (quality 90) once in --workdir, then measures,
median of --repeats runs, in the same run:

- the seed's path on one core: PIL open, convert("RGB"), resize((224, 224), LANCZOS), asarray;
- ``convert(workers=0)`` (decode in the main process, one core), end to end into a store;
- the seed's path over a pool of all cores, and ``convert()`` with all cores.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchlib import median_rate  # noqa: E402

from tensorstore_ds import convert  # noqa: E402
from tensorstore_ds.demo.samples import make_image_folder  # noqa: E402

SIZES = ((640, 480), (1024, 768), (2048, 1536), (4000, 3000))


def seed_path(path: str) -> int:
    from PIL import Image

    image = Image.open(path).convert("RGB").resize((224, 224), Image.LANCZOS)
    return int(np.asarray(image).shape[0])


def seed_serial(files: list[str]) -> int:
    return sum(1 for f in files if seed_path(f))


def seed_pool(files: list[str]) -> int:
    with multiprocessing.get_context("spawn").Pool(os.cpu_count()) as pool:
        return len(pool.map(seed_path, files, chunksize=4))


def ours(source: Path, out: Path, workers: int) -> int:
    shutil.rmtree(out, ignore_errors=True)
    manifest = convert(str(source), out, image_column="file_name", workers=workers, progress=False)
    return manifest.num_samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=240)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default=str(ROOT / "bench-out"))
    args = parser.parse_args()
    source = Path(args.workdir) / f"photos-mixed-{args.images}"
    if not (source / "metadata.jsonl").exists():
        print(f"making {args.images} JPEGs of {SIZES} in {source} ...")
        make_image_folder(source, args.images, sizes=SIZES)
    files = sorted(str(p) for p in source.glob("*.jpg"))
    out = Path(args.workdir) / "convert-out"
    cores = os.cpu_count() or 1
    ours(source, out, 0)  # warm the datasets cache and the page cache
    results = {
        "seed, 1 core": median_rate(lambda: seed_serial(files), args.repeats),
        "convert, workers=0 (1 core)": median_rate(lambda: ours(source, out, 0), args.repeats),
        f"seed, Pool({cores})": median_rate(lambda: seed_pool(files), args.repeats),
        f"convert, workers={cores}": median_rate(lambda: ours(source, out, cores), args.repeats),
    }
    print(f"\n{args.images} JPEGs, sizes {', '.join(f'{w}x{h}' for w, h in SIZES)}; median of {args.repeats}")
    for name, value in results.items():
        print(f"  {name:32s} {value:8.1f} images/s")
    names = list(results)
    print(f"  per core: convert / seed = {results[names[1]] / results[names[0]]:.1f}x")
    print(f"  all cores: convert / seed = {results[names[3]] / results[names[2]]:.1f}x")


if __name__ == "__main__":
    main()
