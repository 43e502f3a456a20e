"""Benchmark: per-core conversion against the seed's per-image path, on photo-like JPEGs of mixed sizes.

    .venv/bin/python tools/bench_convert.py [--images 150] [--repeats 3] [--simd] [--all-cores]

Makes --images photo-like JPEGs (quality 90; long side 320 to 4,000 px, median
about 1,000 px, every sixth one 320 px; see ``bench_decode.photo_like``) once
in --workdir. Then, pinned to one core, in interleaved rounds (median of
--repeats), CPU seconds of this process for:

- the seed's per-image path: ``Image.open(path).convert("RGB").resize((224, 224), LANCZOS)``;
- a JPEG draft decode alone (DCT-scaled to at least 224 px, no resize): the floor;
- ``decode_image`` on every file (with the compiled LANCZOS passes when the
  ``_resample`` extension is built), the same with numpy's matrix products in
  their place (an install without a C compiler; the previous release), and with
  Pillow's LANCZOS resize (the release before);
- ``convert(workers=0)`` end to end into a store, and the marginal cost of one
  more image (converting all images minus converting one, which leaves out
  the run's fixed start-up and finishing costs).

It prints the rates, the ratios to the seed, what the conversion costs over
``decode_image`` alone, and the mean absolute pixel difference between
``decode_image`` and the seed's full-decode LANCZOS output (mean over the
images, and the worst image).

``--simd`` repeats the decode measurements with pillow-simd (an optional
speed-up, never a dependency): it builds pillow-simd with AVX2 into a separate
virtualenv under --workdir (first time only, a few minutes), which sees this
project's environment for everything else. ``--all-cores`` also compares a
pool of all cores running the seed's path with ``convert()`` on all cores.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_decode import mixed_sizes, photo_like, pin_one_core  # noqa: E402
from benchlib import median_rate  # noqa: E402
from PIL import Image  # noqa: E402

from tensorstore_ds.conversion.decode import lanczos  # noqa: E402
from tensorstore_ds.conversion.decode import resize as resize_module  # noqa: E402
from tensorstore_ds.conversion.decode.image import ImageOptions, decode_image  # noqa: E402
from tensorstore_ds.processes import usable_cores  # noqa: E402

SIZE = 224


def make_photos(folder: Path, count: int) -> list[Path]:
    """Write ``count`` photo-like JPEGs and a ``metadata.jsonl`` into ``folder`` (once)."""
    if not (folder / "metadata.jsonl").exists():
        print(f"making {count} photo-like JPEGs in {folder} ...", flush=True)
        folder.mkdir(parents=True, exist_ok=True)
        lines = []
        for i, (width, height) in enumerate(mixed_sizes(count)):
            name = f"{i:05d}.jpg"
            photo_like(width, height, seed=i).save(folder / name, "JPEG", quality=90)
            lines.append(json.dumps({"file_name": name, "caption": f"photo {i}, {width}x{height}"}))
        (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return sorted(folder.glob("*.jpg"))


def seed_path(path: str | Path) -> np.ndarray:
    """The seed's per-image path."""
    return np.asarray(Image.open(path).convert("RGB").resize((SIZE, SIZE), Image.Resampling.LANCZOS))


def draft_only(path: str | Path) -> Image.Image:
    """A JPEG decoded with DCT scaling to at least 224 px, not resized: what decoding alone costs."""
    im = Image.open(path)
    im.draft("RGB", (SIZE, SIZE))
    im.load()
    return im


def cpu_seconds(work: Callable[[], object]) -> float:
    start = time.process_time()
    work()
    return time.process_time() - start


def interleaved(cases: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """CPU seconds of each case, run in turn ``repeats`` times (so load changes hit all alike)."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, work in cases.items():
            times[name].append(cpu_seconds(work))
    return times


def quality(files: list[Path]) -> tuple[float, float, str]:
    """Mean over images of the mean |decode_image - seed| in grey levels, and the worst image."""
    options = ImageOptions(size=SIZE)
    diffs = []
    for path in files:
        ours, _ = decode_image(path, options)
        diffs.append(float(np.abs(ours.astype(np.float32) - seed_path(path)).mean()))
    worst = int(np.argmax(diffs))
    with Image.open(files[worst]) as im:
        name = f"{files[worst].name} ({im.width}x{im.height})"
    return float(np.mean(diffs)), diffs[worst], name


def pillow_lanczos(im: Image.Image, size: tuple[int, int], box: Any = None) -> np.ndarray:
    """An earlier release's LANCZOS step: Pillow's resize (the baseline for :mod:`lanczos`)."""
    out = im.resize(size, Image.Resampling.LANCZOS, box=box, reducing_gap=resize_module.REDUCING_GAP)
    return np.asarray(out).reshape(size[1], size[0], -1)


def decode_with(files: list[Path], options: ImageOptions, module: Any, name: str, value: Any) -> None:
    """decode_image on every file with ``module.name`` set to ``value`` for the time (another resize)."""
    ours = getattr(module, name)
    setattr(module, name, value)
    try:
        for f in files:
            decode_image(f, options)
    finally:
        setattr(module, name, ours)


def decode_rates(files: list[Path], repeats: int) -> dict[str, float]:
    """Images per CPU second: seed, draft alone, decode_image, and its other resizes (interleaved, medians)."""
    options = ImageOptions(size=SIZE)
    cases = {
        "seed": lambda: [seed_path(f) for f in files],
        "draft": lambda: [draft_only(f) for f in files],
        "decode_image": lambda: [decode_image(f, options) for f in files],
        # as installed without a C compiler: numpy's matrix products instead of the compiled passes
        "matrix products": lambda: decode_with(files, options, lanczos, "_resample", None),
        "pillow resize": lambda: decode_with(files, options, resize_module, "_lanczos", pillow_lanczos),
    }
    for work in cases.values():
        work()  # warm the page cache and imports
    times = interleaved(cases, repeats)
    rates = {name: len(files) / statistics.median(t) for name, t in times.items()}
    for name in ("draft", "decode_image", "matrix products", "pillow resize"):
        rates[f"{name}/seed"] = statistics.median(s / t for s, t in zip(times["seed"], times[name]))
    return rates


def convert_rates(source: Path, out: Path, count: int, repeats: int) -> dict[str, float]:
    """convert(workers=0) per CPU second: end to end, and the marginal cost of one image.

    The marginal cost leaves out the run's fixed start-up and finishing costs,
    measured as a conversion of one image: ``(all - one) / (count - 1)``,
    against ``decode_image`` on every image in the same round.
    """
    from tensorstore_ds import convert

    def run(limit: int | None) -> None:
        shutil.rmtree(out, ignore_errors=True)
        convert(str(source), out, image_column="file_name", workers=0, progress=False, limit=limit)

    run(None)  # warm the datasets cache
    full, one, decode = [], [], []
    options = ImageOptions(size=SIZE)
    files = sorted(source.glob("*.jpg"))
    for _ in range(repeats):
        full.append(cpu_seconds(lambda: run(None)))
        one.append(cpu_seconds(lambda: run(1)))
        decode.append(cpu_seconds(lambda: [decode_image(f, options) for f in files]))
    per_image = [(f - o) / (count - 1) for f, o in zip(full, one)]
    return {
        "convert": count / statistics.median(full),
        "convert marginal": 1 / statistics.median(per_image),
        "fixed cost": statistics.median(one),
        "decode_image (same rounds)": count / statistics.median(decode),
        "overhead end to end": statistics.median(f / d for f, d in zip(full, decode)) - 1,
        "overhead marginal": statistics.median(m / (d / count) for m, d in zip(per_image, decode)) - 1,
    }


def simd_venv(venv: Path) -> Path:
    """A virtualenv with pillow-simd (AVX2) that sees this project's environment for the rest."""
    python = venv / "bin" / "python"
    if not (venv / ".built").exists():
        print(f"building pillow-simd into {venv} (first time only) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        env = {**os.environ, "CC": "cc -mavx2"}
        subprocess.run([str(python), "-m", "pip", "install", "-q", "pillow-simd"], check=True, env=env)
        site = subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        # Appended after the venv's own site-packages, so pillow-simd's PIL wins over Pillow.
        Path(site, "project-env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        (venv / ".built").touch()
    return python


def simd_rates(venv: Path, source: Path, repeats: int) -> dict[str, float]:
    python = simd_venv(venv)
    cmd = [str(python), __file__, "--decode-json", str(source), "--repeats", str(repeats)]
    result = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def all_cores(files: list[Path], source: Path, out: Path, repeats: int) -> dict[str, float]:
    from tensorstore_ds import convert

    cores = usable_cores()

    def seed_pool() -> int:
        with multiprocessing.get_context("spawn").Pool(cores) as pool:
            return len(pool.map(seed_path, [str(f) for f in files], chunksize=4))

    def ours() -> int:
        shutil.rmtree(out, ignore_errors=True)
        return convert(str(source), out, image_column="file_name", workers=cores, progress=False).num_samples

    return {
        f"seed, Pool({cores})": median_rate(seed_pool, repeats),
        f"convert(workers={cores})": median_rate(ours, repeats),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=150)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default=str(ROOT / "bench-out"))
    parser.add_argument("--simd", action="store_true", help="also measure with pillow-simd (separate virtualenv)")
    parser.add_argument("--simd-venv", help="where that virtualenv is made (default: WORKDIR/venv-pillow-simd)")
    parser.add_argument("--all-cores", action="store_true", help="also compare all cores (wall time)")
    parser.add_argument("--decode-json", help=argparse.SUPPRESS)  # internal: decode rates of a folder as JSON
    args = parser.parse_args()
    if args.decode_json:
        pin_one_core()
        files = sorted(Path(args.decode_json).glob("*.jpg"))
        rates = decode_rates(files, args.repeats)
        mean, worst, name = quality(files)
        print(json.dumps({**rates, "mean diff": mean, "worst diff": worst, "pillow": Image.__version__}))
        return
    workdir = Path(args.workdir)
    source = workdir / f"photos-like-v2-{args.images}"
    files = make_photos(source, args.images)
    out = workdir / "convert-out"
    if args.all_cores:
        wall = all_cores(files, source, out, args.repeats)  # before pinning this process to one core
    started = time.perf_counter()
    print(f"bench_convert: {pin_one_core()}, Pillow {Image.__version__}, {len(files)} photos in {source}")
    longs = sorted(max(Image.open(f).size) for f in files)
    print(f"long side: min {longs[0]}, median {longs[len(longs) // 2]}, max {longs[-1]} px; JPEG quality 90")
    rates = decode_rates(files, args.repeats)
    conv = convert_rates(source, out, len(files), args.repeats)
    mean, worst, name = quality(files)
    print(f"\nimages per CPU second, one core, median of {args.repeats} interleaved rounds")
    print(f"  seed per-image path            {rates['seed']:8.1f}")
    print(f"  JPEG draft decode alone        {rates['draft']:8.1f}   {rates['draft/seed']:5.2f}x seed (the floor)")
    how = "compiled passes" if lanczos.compiled() else "matrix products: the extension is not built"
    print(f"  decode_image ({how})")
    print(f"                                 {rates['decode_image']:8.1f}   {rates['decode_image/seed']:5.2f}x seed")
    print(
        f"  ... with matrix products       {rates['matrix products']:8.1f}   {rates['matrix products/seed']:5.2f}x seed"
        " (no C compiler; the previous release)"
    )
    print(
        f"  ... with Pillow's resize       {rates['pillow resize']:8.1f}   {rates['pillow resize/seed']:5.2f}x seed"
        " (the release before)"
    )
    convert_vs_seed = conv["convert"] / conv["decode_image (same rounds)"] * rates["decode_image/seed"]
    marginal_vs_seed = conv["convert marginal"] / conv["decode_image (same rounds)"] * rates["decode_image/seed"]
    print(f"  convert(workers=0), end to end {conv['convert']:8.1f}   {convert_vs_seed:5.2f}x seed")
    print(f"  convert(workers=0), marginal   {conv['convert marginal']:8.1f}   {marginal_vs_seed:5.2f}x seed")
    print(
        f"  convert over decode_image: {conv['overhead end to end']:+.0%} end to end, "
        f"{conv['overhead marginal']:+.0%} per additional image (a run's fixed cost: {conv['fixed cost']:.2f} s)"
    )
    print(f"quality vs the seed (full decode + LANCZOS): mean |diff| {mean:.2f} levels; worst {worst:.2f} ({name})")
    if args.simd:
        simd = simd_rates(Path(args.simd_venv or workdir / "venv-pillow-simd"), source, args.repeats)
        print(f"\nwith pillow-simd {simd['pillow']} (optional; separate virtualenv, measured after the above):")
        print(
            f"  decode_image {simd['decode_image']:.1f} img/s = {simd['decode_image'] / rates['seed']:.2f}x "
            f"the seed on Pillow {Image.__version__}, {simd['decode_image/seed']:.2f}x the seed on pillow-simd"
        )
        print(f"  quality: mean |diff| {simd['mean diff']:.2f}, worst {simd['worst diff']:.2f}")
    if args.all_cores:
        print("\nall cores, wall time:")
        for label, value in wall.items():
            print(f"  {label:24s} {value:8.1f} images/s")
    print(f"\n(measured in {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
