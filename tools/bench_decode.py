"""Benchmark tensorstore_ds's image and audio decoders on one CPU core.

Run ``python tools/bench_decode.py`` (``--help`` for the flags). It prints:

1. Images: synthetic JPEG photos (gradients plus blurred noise, quality 90) at
   several sizes, decoded to 224x224 by the seed's per-image path
   (``Image.open(path).convert("RGB").resize((224, 224), LANCZOS)``) and by
   :func:`tensorstore_ds.conversion.decode.image.decode_image`; images per CPU second,
   the ratio ours/seed, and the mean absolute pixel difference between our
   draft (DCT-scaled) and full decodes.
2. Audio: a stereo 44.1 kHz FLAC clip converted to 16 kHz mono by
   :func:`tensorstore_ds.conversion.decode.audio.decode_audio` with each resampler;
   seconds of audio per CPU second and the ratio soxr/resampy. resampy
   compiles its kernel with numba on first use, so it is warmed up first.

Timings are CPU time (``time.process_time``) of this process, pinned to one
core where the OS allows, so other load on the machine matters little.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

import numpy as np
import soundfile as sf
from PIL import Image, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tensorstore_ds.conversion.decode.audio import RESAMPLERS, AudioOptions, decode_audio
from tensorstore_ds.conversion.decode.image import RESIZE_MODES, ImageOptions, decode_image


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes", default="640x480,1024x768,2048x1536,4000x3000", help="WxH image sizes, comma-separated"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per case (median reported)")
    parser.add_argument("--min-time", type=float, default=0.25, help="CPU seconds per image repeat")
    parser.add_argument("--resize", default="squash", choices=RESIZE_MODES, help="our resize rule")
    parser.add_argument("--audio-seconds", type=float, default=30.0, help="length of the audio clip")
    parser.add_argument("--audio-repeats", type=int, default=5, help="timed runs per resampler")
    parser.add_argument("--skip-images", action="store_true")
    parser.add_argument("--skip-audio", action="store_true")
    return parser.parse_args(argv)


def pin_one_core() -> str:
    """Pin this process to one CPU; return a note for the report."""
    if hasattr(os, "sched_setaffinity"):
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        return f"pinned to CPU {cpu}"
    return "not pinned (no sched_setaffinity)"


def synthetic_photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth content plus noise: gradients, blurred coarse noise, mild fine noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    gradient = np.stack([255 * x / width, 255 * y / height, 128 + 60 * np.sin((x + y) / 300)], -1)
    coarse = Image.fromarray(rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), np.uint8))
    coarse = coarse.resize((width, height), Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(2))
    mixed = 0.6 * gradient + 0.4 * np.asarray(coarse, np.float32)
    mixed += rng.normal(0, 2, mixed.shape).astype(np.float32)
    return Image.fromarray(np.clip(mixed, 0, 255).astype(np.uint8))


def seed_decode(path: Path) -> np.ndarray:
    """The seed's per-image path."""
    return np.asarray(Image.open(path).convert("RGB").resize((224, 224), Image.LANCZOS))


def per_cpu_second(work: Callable[[], object], repeats: int, min_time: float) -> float:
    """Median over repeats of calls per CPU second, each repeat running >= min_time."""
    work()  # warm caches (file pages, imports)
    rates = []
    for _ in range(repeats):
        count, start = 0, time.process_time()
        while True:
            work()
            count += 1
            elapsed = time.process_time() - start
            if elapsed >= min_time:
                break
        rates.append(count / elapsed)
    return statistics.median(rates)


def bench_images(args: argparse.Namespace, folder: Path) -> None:
    options = ImageOptions(resize=args.resize)
    full_options = ImageOptions(resize=args.resize, draft=False)
    print(f"\nImages -> 224x224x3 uint8 ({args.resize}); images per CPU second, median of {args.repeats}")
    header = (
        f"{'size':>10} {'file KiB':>9} {'seed img/s':>11} {'ours img/s':>11} {'ours/seed':>10} {'draft |diff|':>13}"
    )
    print(header)
    print("-" * len(header))
    for spec in args.sizes.split(","):
        width, height = (int(v) for v in spec.lower().split("x"))
        path = folder / f"photo_{width}x{height}.jpg"
        synthetic_photo(width, height).save(path, "JPEG", quality=90)
        seed_rate = per_cpu_second(lambda: seed_decode(path), args.repeats, args.min_time)
        ours_rate = per_cpu_second(lambda: decode_image(path, options), args.repeats, args.min_time)
        draft, _ = decode_image(path, options)
        full, _ = decode_image(path, full_options)
        diff = float(np.abs(draft.astype(np.float32) - full).mean())
        kib = path.stat().st_size / 1024
        print(f"{spec:>10} {kib:9.0f} {seed_rate:11.1f} {ours_rate:11.1f} {ours_rate / seed_rate:9.2f}x {diff:13.3f}")


def synthetic_music(seconds: float, rate: int = 44100, seed: int = 0) -> np.ndarray:
    """Stereo chords with vibrato plus a little noise, float32 in -1..1."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * rate)) / rate
    left = sum(0.15 * np.sin(2 * np.pi * f * t + 0.002 * np.sin(2 * np.pi * 5 * t)) for f in (220, 277, 330, 440))
    right = sum(0.15 * np.sin(2 * np.pi * f * t) for f in (196, 247, 294, 392))
    stereo = np.stack([left, right], axis=1) + rng.normal(0, 0.01, (len(t), 2))
    return stereo.astype(np.float32)


def bench_audio(args: argparse.Namespace, folder: Path) -> None:
    path = folder / "music.flac"
    sf.write(path, synthetic_music(args.audio_seconds), 44100, format="FLAC", subtype="PCM_16")
    print(
        f"\nAudio: {args.audio_seconds:g} s stereo 44.1 kHz FLAC -> {args.audio_seconds:g} s mono 16 kHz "
        f"float16; median of {args.audio_repeats} runs"
    )
    rates = {}
    for resampler in RESAMPLERS:
        options = AudioOptions(sample_rate=16000, seconds=args.audio_seconds, resampler=resampler)
        start = time.process_time()
        decode_audio(path, options)  # warm-up: resampy's numba JIT compiles here
        warm = time.process_time() - start
        runs = []
        for _ in range(args.audio_repeats):
            start = time.process_time()
            decode_audio(path, options)
            runs.append(time.process_time() - start)
        rates[resampler] = args.audio_seconds / statistics.median(runs)
        print(
            f"  {resampler:8} {rates[resampler]:9.1f} s audio / CPU s "
            f"(median {statistics.median(runs) * 1e3:.0f} ms per clip; warm-up call {warm:.2f} s)"
        )
    print(f"  soxr/resampy: {rates['soxr'] / rates['resampy']:.1f}x (resampy timed after its numba warm-up)")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    print(f"bench_decode: {pin_one_core()}, Python {sys.version.split()[0]}, Pillow {Image.__version__}")
    with tempfile.TemporaryDirectory(prefix="bench_decode_") as tmp:
        if not args.skip_images:
            bench_images(args, Path(tmp))
        if not args.skip_audio:
            bench_audio(args, Path(tmp))
    print(f"\ntotal wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
