"""A built-in sample dataset, made on the fly: photos-like JPEGs with captions.

Used by the demo and the benchmarks. Images are smooth random fields plus
noise at mixed sizes, saved as JPEG in the imagefolder convention (files plus
``metadata.jsonl``), so converting them exercises the real decode path.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np

COLORS = ("red", "green", "blue", "golden", "grey", "purple")
THINGS = ("landscape", "street", "kitchen", "forest", "harbour", "market")


def photo(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A photo-like RGB image: a smooth random colour field with fine noise."""
    from PIL import Image

    coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    field = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BILINEAR), np.int16)
    shift = (int(rng.integers(0, height)), int(rng.integers(0, width)))
    return (field + np.roll(_noise(height, width), shift, axis=(0, 1))).clip(0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=8)
def _noise(height: int, width: int) -> np.ndarray:
    """Fine noise (standard deviation 12 levels), made once per size and shifted per image."""
    return np.random.default_rng(height * 100_003 + width).normal(0, 12, (height, width, 3)).astype(np.int16)


def make_image_folder(
    root: str | Path,
    count: int,
    sizes: tuple[tuple[int, int], ...] = ((640, 480), (800, 600), (1024, 768)),
    seed: int = 0,
) -> Path:
    """Write ``count`` JPEGs and a ``metadata.jsonl`` with captions into ``root``."""
    from PIL import Image

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with open(root / "metadata.jsonl", "w", encoding="utf-8") as meta:
        for i in range(count):
            width, height = sizes[i % len(sizes)]
            name = f"{i:06d}.jpg"
            Image.fromarray(photo(rng, width, height)).save(root / name, quality=90)
            caption = f"a {COLORS[i % len(COLORS)]} {THINGS[(i // len(COLORS)) % len(THINGS)]}, photo {i}"
            meta.write(json.dumps({"file_name": name, "caption": caption}) + "\n")
    return root
