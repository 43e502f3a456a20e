"""PyAV against soundfile: decode speed on FLAC and WAV, and what PyAV costs to install.

Decodes the same 30 s stereo 44.1 kHz recording, as WAV and as FLAC, with
soundfile (the first decoder) and with PyAV (the fallback), each ``--runs``
times, and prints medians and the ratio PyAV / soundfile measured in the same
run; M4A (AAC) and WebM (Opus) through PyAV are timed for reference. It then
prints the installed size of PyAV's package and its bundled FFmpeg libraries
next to soundfile's and torch's.

Run: ``.venv/bin/python tools/bench_audio_containers.py`` (about 20 s).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import io
import statistics
import time
from collections.abc import Callable

import av
import numpy as np
import soundfile as sf

from tensorstore_ds.conversion.decode.containers import ContainerAudio

SECONDS, RATE = 30.0, 44100


def signal() -> np.ndarray:
    t = np.arange(int(SECONDS * RATE)) / RATE
    noise = np.random.default_rng(0).normal(0, 0.05, t.size)
    return np.stack([0.3 * np.sin(2 * np.pi * 440 * t) + noise, 0.3 * np.sin(2 * np.pi * 330 * t) - noise], 1)


def soundfile_bytes(x: np.ndarray, fmt: str) -> bytes:
    out = io.BytesIO()
    sf.write(out, x.astype(np.float32), RATE, format=fmt, subtype="PCM_16")
    return out.getvalue()


def pyav_bytes(x: np.ndarray, fmt: str, codec: str, rate: int) -> bytes:
    out = io.BytesIO()
    planar = np.ascontiguousarray(x.T.astype(np.float32))
    with av.open(out, "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate, layout="stereo")
        frame = av.AudioFrame.from_ndarray(planar, format="fltp", layout="stereo")
        frame.sample_rate = RATE
        resampler = av.AudioResampler(format=stream.codec_context.format.name, layout="stereo", rate=rate)
        for part in [*resampler.resample(frame), *resampler.resample(None)]:
            for packet in stream.encode(part):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()


def median_seconds(fn: Callable[[], object], runs: int) -> float:
    fn()  # warm up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def with_pyav(data: bytes) -> np.ndarray:
    with ContainerAudio(data) as audio:
        return audio.read(0.0, None, 10**9)


def installed_mb(distribution: str) -> float:
    """Installed size of a distribution, from its RECORD (bundled shared libraries included)."""
    files = importlib.metadata.files(distribution) or []
    return sum(f.size or 0 for f in files) / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    x = signal()
    print(f"{SECONDS:g} s stereo {RATE} Hz, median of {args.runs} runs; seconds per file (x realtime)")
    for fmt in ("WAV", "FLAC"):
        data = soundfile_bytes(x, fmt)
        t_sf = median_seconds(lambda data=data: sf.read(io.BytesIO(data), dtype="float32"), args.runs)
        t_av = median_seconds(lambda data=data: with_pyav(data), args.runs)
        print(
            f"{fmt:5} soundfile {t_sf * 1e3:7.1f} ms ({SECONDS / t_sf:6.0f}x)  "
            f"PyAV {t_av * 1e3:7.1f} ms ({SECONDS / t_av:6.0f}x)  PyAV/soundfile {t_av / t_sf:.2f}"
        )
    for name, fmt, codec, rate in (("M4A", "mp4", "aac", 44100), ("WebM", "webm", "libopus", 48000)):
        data = pyav_bytes(x, fmt, codec, rate)
        t_av = median_seconds(lambda data=data: with_pyav(data), args.runs)
        print(f"{name:5} PyAV {t_av * 1e3:7.1f} ms ({SECONDS / t_av:6.0f}x)")
    sizes = {name: installed_mb(name) for name in ("av", "soundfile", "torch")}
    print("installed size: " + ", ".join(f"{name} {mb:.0f} MiB" for name, mb in sizes.items()))


if __name__ == "__main__":
    main()
