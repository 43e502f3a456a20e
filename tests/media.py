"""Small deterministic media for tests: images, audio, and the files that hold them.

Everything here is a pure function of its arguments, so a test can rebuild
the exact bytes it served or wrote and compare the store against the decoders.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from PIL import Image


def pixels(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A ``(height, width, 3)`` uint8 pattern that differs for every ``seed``."""
    y, x = np.mgrid[0:height, 0:width]
    r = (x * 255 // max(1, width - 1) + 37 * seed) % 256
    g = (y * 255 // max(1, height - 1) + 91 * seed) % 256
    b = ((x + y) * 16 + 53 * seed) % 256
    return np.stack([r, g, b], axis=-1).astype(np.uint8)


def image_bytes(height: int = 32, width: int = 32, seed: int = 0, fmt: str = "PNG") -> bytes:
    """An encoded image (``PNG`` is lossless, ``JPEG`` is not) of :func:`pixels`."""
    buf = io.BytesIO()
    Image.fromarray(pixels(height, width, seed)).save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def noise_png(seed: int, size: int = 32) -> bytes:
    """A ``size`` x ``size`` PNG of uniform noise (incompressible: chunks of distinct stores differ everywhere)."""
    noise = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, "PNG")
    return buffer.getvalue()


def write_image(
    path: str | os.PathLike[str], height: int = 32, width: int = 32, seed: int = 0, fmt: str = "PNG"
) -> Path:
    """Write :func:`image_bytes` to ``path`` (parents created); return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_bytes(height, width, seed, fmt))
    return path


def sine(
    sample_rate: int, seconds: float, freq: float = 440.0, channels: int = 1, amplitude: float = 0.5
) -> np.ndarray:
    """A float32 sine, ``(frames,)`` or ``(frames, channels)`` (channel c at ``freq * (c + 1)``)."""
    t = np.arange(round(sample_rate * seconds)) / sample_rate
    waves = [amplitude * np.sin(2 * np.pi * freq * (c + 1) * t) for c in range(channels)]
    data = np.stack(waves, axis=-1) if channels > 1 else waves[0]
    return data.astype(np.float32)


def audio_bytes(
    sample_rate: int = 8000,
    seconds: float = 1.0,
    freq: float = 440.0,
    fmt: str = "WAV",
    channels: int = 1,
    subtype: str | None = None,
) -> bytes:
    """An encoded recording of :func:`sine` (``WAV`` PCM_16 or ``FLAC``)."""
    buf = io.BytesIO()
    sf.write(buf, sine(sample_rate, seconds, freq, channels), sample_rate, format=fmt, subtype=subtype or "PCM_16")
    return buf.getvalue()


def write_audio(
    path: str | os.PathLike[str], sample_rate: int = 8000, seconds: float = 1.0, freq: float = 440.0, channels: int = 1
) -> Path:
    """Write :func:`audio_bytes` to ``path``, the format taken from the suffix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".wav": "WAV", ".flac": "FLAC"}[path.suffix.lower()]
    path.write_bytes(audio_bytes(sample_rate, seconds, freq, fmt, channels))
    return path


def audio_struct(items: list[tuple[bytes | None, str | None]]) -> Any:
    """A pyarrow ``struct<bytes: binary, path: string>`` array, the layout of an HF Audio column."""
    import pyarrow as pa

    kind = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    return pa.array([{"bytes": b, "path": p} for b, p in items], type=kind)


def isolate_hf_cache(monkeypatch: Any, tmp_path: Path) -> Path:
    """Point the ``datasets`` cache (this process and children) into ``tmp_path``."""
    import datasets

    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def write_table(path: Path, rows: dict[str, list[Any]]) -> Path:
    """Write ``rows`` (columns of equal length) as Parquet, JSON Lines or CSV, chosen by the suffix."""
    import csv
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        pq.write_table(pa.table(rows), path)
    elif path.suffix == ".jsonl":
        keys = list(rows)
        path.write_text("".join(json.dumps(dict(zip(keys, vals))) + "\n" for vals in zip(*rows.values())))
    else:
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(list(rows))
            writer.writerows(zip(*rows.values()))
    return path
