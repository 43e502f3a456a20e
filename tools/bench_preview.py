"""Benchmark: ``tensorstore-ds preview``, against baselines measured in the same run.

    .venv/bin/python tools/bench_preview.py [--samples 1000] [--clips 100] [--repeats 5]

Builds (once, cached in --workdir) a store of N photo-like JPEGs converted by the real
``convert`` (the demo's sample images at 320x240 and 400x300, 1% of the files broken so the
header lists failures) and a store of M 10 s clips, then times, as medians of --repeats runs:

- ``preview()`` in-process (36 images into a PNG), and the preview command as a fresh process (36 images into a PNG; the same with ``--html``;
  12 clips with ``--html``, WAVs included), which is the figure the issue bounds at 2 s;
- the baselines: ``tensorstore-ds info`` on the same store (a fresh process that opens the
  store and prints it), and in-process, reading the same 36 samples and captions with
  ``open_store`` (the data the sheet shows, without drawing).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import tensorstore_ds  # noqa: E402
from tensorstore_ds import preview  # noqa: E402
from tensorstore_ds.demo.samples import make_image_folder  # noqa: E402

SHOWN = 36


def seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs (after one warm-up run)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def build_image_store(work: Path, n: int) -> Path:
    store = work / f"images-{n}"
    if not (store / "manifest.json").exists():
        source = make_image_folder(work / f"images-{n}-src", n, sizes=((320, 240), (400, 300)))
        for i in range(7, n, 100):
            (source / f"{i:06d}.jpg").write_bytes(b"<html>404</html>")
        tensorstore_ds.convert(str(source), store, workers=2, progress=False, overwrite=True)
    return store


def build_audio_store(work: Path, n: int) -> Path:
    import soundfile as sf

    store = work / f"audio-{n}"
    if not (store / "manifest.json").exists():
        source = work / f"audio-{n}-src"
        source.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        with open(source / "metadata.jsonl", "w", encoding="utf-8") as meta:
            for i in range(n):
                seconds_ = 4 + 8 * rng.random()  # some shorter than the 10 s window, some cut
                t = np.arange(int(16000 * seconds_)) / 16000
                tone = 0.3 * np.sin(2 * np.pi * (200 + 40 * (i % 20)) * t) * (1 + np.sin(2 * np.pi * 0.5 * t)) / 2
                sf.write(source / f"{i:05d}.wav", (tone + 0.02 * rng.standard_normal(len(t))).astype(np.float32), 16000)
                meta.write(json.dumps({"file_name": f"{i:05d}.wav", "caption": f"a tone with noise, clip {i}"}) + "\n")
        tensorstore_ds.convert(str(source), store, workers=2, progress=False, overwrite=True)
    return store


def command(*args: str) -> list[str]:
    """The ``tensorstore-ds`` command line, as a fresh process."""
    return [sys.executable, "-m", "tensorstore_ds", *args]


def run(cmd: list[str]) -> Callable[[], None]:
    return lambda: subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def read_shown(store_path: Path) -> None:
    """What the sheet shows, read with open_store: the images, their sizes and captions."""
    store = tensorstore_ds.open_store(store_path)
    where = np.arange(SHOWN)
    store.array("images").take(where)
    store.array("image_size").take(where)
    store.captions.take(where)
    store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--clips", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "tensorstore_ds-bench-preview"))
    args = parser.parse_args()
    work = Path(args.workdir)
    images, audio = build_image_store(work, args.samples), build_audio_store(work, args.clips)
    out = work / "out"
    n = len(tensorstore_ds.open_store(images))
    sheet, page = str(out / "sheet.png"), str(out / "page")
    cases: list[tuple[str, Callable[[], object]]] = [
        ("tensorstore-ds info (baseline)", run(command("info", str(images)))),
        (f"open_store + read the {SHOWN} shown samples, in-process (baseline)", lambda: read_shown(images)),
        (f"preview(), {SHOWN} images -> PNG, in-process", lambda: preview(images, sheet)),
        (f"tensorstore-ds preview, {SHOWN} images -> PNG", run(command("preview", str(images), "-o", sheet))),
        (f"tensorstore-ds preview, {SHOWN} images -> PNG + --html", run(command("preview", str(images), "-o", sheet, "--html", page))),
        (f"tensorstore-ds preview, {SHOWN} random images (--seed 1) -> PNG", run(command("preview", str(images), "-o", sheet, "--seed", "1"))),
        ("tensorstore-ds preview, 12 clips of 10 s -> PNG + --html (WAVs)", run(command("preview", str(audio), "-o", sheet, "--html", page + "-audio"))),
    ]  # fmt: skip
    rows = [(name, seconds(fn, args.repeats)) for name, fn in cases]
    base = rows[0][1]
    print(
        f"image store: {n} samples ({args.samples} rows), audio store: {args.clips} clips; "
        f"median of {args.repeats} runs"
    )
    for name, value in rows:
        print(f"  {name:<64} {value:6.3f} s  {value / base:5.2f}x info")


if __name__ == "__main__":
    main()
