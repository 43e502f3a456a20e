"""Benchmark tensorstore_ds's image and audio decoders on one CPU core.

Run ``python tools/bench_decode.py`` (``--help`` for the flags). It prints:

1. Images: photo-like JPEGs (:func:`photo_like`, quality 90) at several
   sizes, decoded to 224x224 by the seed's per-image path
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
``tools/bench_convert.py`` measures the whole conversion on photos of mixed
sizes made by :func:`mixed_sizes` and :func:`photo_like` from this file.
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
from PIL import Image, ImageDraw, ImageFilter

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


ASPECTS = (4 / 3, 3 / 2, 16 / 9, 1.0, 3 / 4, 2 / 3)


def mixed_sizes(count: int, seed: int = 0) -> list[tuple[int, int]]:
    """Photo sizes as on the web: long side log-normal around 1,000 px (320 to 4,000), common aspects.

    Every sixth photo is 320 px on its long side: too small for JPEG draft
    mode to shrink, so it costs the same in every decode path. One in fifty
    is 4,000 px.
    """
    rng = np.random.default_rng(seed)
    sizes = []
    for i in range(count):
        long = int(np.clip(np.exp(rng.normal(np.log(1000), 0.55)), 320, 4000))
        long = 320 if i % 6 == 0 else 4000 if i % 50 == 25 else long
        aspect = ASPECTS[int(rng.integers(len(ASPECTS)))]
        sizes.append((long, round(long / aspect)) if aspect >= 1 else (round(long * aspect), long))
    return sizes


def texture(rng: np.random.Generator, width: int, height: int, fine: float = 5.0, decay: float = 0.8) -> np.ndarray:
    """Luminance texture with detail at every scale (a pyramid of upsampled noise, finest at one pixel)."""
    levels = max(1, int(np.ceil(np.log2(max(width, height) / 4))))
    amp = fine / decay**levels
    field = rng.normal(0, amp, (max(2, -(-height >> levels)), max(2, -(-width >> levels)))).astype(np.float32)
    for level in range(levels - 1, -1, -1):
        gw, gh = max(2, -(-width >> level)), max(2, -(-height >> level))
        amp *= decay
        field = np.asarray(Image.fromarray(field, "F").resize((gw, gh), Image.Resampling.BICUBIC))
        field = field + rng.normal(0, amp, (gh, gw)).astype(np.float32)
    return field[:height, :width]


def photo_like(width: int, height: int, seed: int = 0) -> Image.Image:
    """A photo-like RGB image: smooth colour field, hard-edged objects, texture at all scales.

    Larger captures are softer per pixel (optics, demosaicing), so their JPEGs
    take fewer bits per pixel: at quality 90 about 2.5 bits/pixel at 320 px,
    1.8 at 1,000 px and 1.4 at 2,000 px and more, as real photos do.
    """
    rng = np.random.default_rng(seed)
    colours = rng.uniform(40, 210, (3, 3, 3)).astype(np.uint8)
    im = Image.fromarray(colours).resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(3, 9))):
        x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
        side = rng.uniform(0.05, 0.35) * max(width, height)
        colour = tuple(int(v) for v in rng.integers(20, 236, 3))
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x0 + side, y0 + side * rng.uniform(0.4, 1.5)), fill=colour)
        else:
            corners = [
                (x0 + rng.uniform(-side, side), y0 + rng.uniform(-side, side)) for _ in range(3 + int(rng.integers(3)))
            ]
            draw.polygon(corners, fill=colour)
    pixels = np.asarray(im, np.float32) + texture(rng, width, height)[..., None]
    im = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    return im.filter(ImageFilter.GaussianBlur(0.5 * (max(width, height) / 600) ** 0.5))


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
        photo_like(width, height).save(path, "JPEG", quality=90)
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
