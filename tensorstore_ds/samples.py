"""A built-in sample dataset, made on the fly: photos-like JPEGs with captions.

Used by the demo and the benchmarks. Images are smooth random fields plus
noise at mixed sizes, saved as JPEG in the imagefolder convention (files plus
``metadata.jsonl``), so converting them exercises the real decode path.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

COLORS = ("red", "green", "blue", "golden", "grey", "purple")
THINGS = ("landscape", "street", "kitchen", "forest", "harbour", "market")


def photo(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A photo-like RGB image: a smooth colour field with fine noise."""
    coarse = rng.integers(0, 256, (4, 4, 3)).astype(np.float32)
    ys = np.linspace(0, 3, height, dtype=np.float32)[:, None]
    xs = np.linspace(0, 3, width, dtype=np.float32)[None, :]
    y0, x0 = np.floor(ys).astype(int).clip(0, 2), np.floor(xs).astype(int).clip(0, 2)
    fy, fx = (ys - y0)[..., None], (xs - x0)[..., None]
    img = (coarse[y0, x0] * (1 - fy) * (1 - fx) + coarse[y0 + 1, x0] * fy * (1 - fx)
           + coarse[y0, x0 + 1] * (1 - fy) * fx + coarse[y0 + 1, x0 + 1] * fy * fx)
    img += rng.normal(0, 12, img.shape).astype(np.float32)
    return img.clip(0, 255).astype(np.uint8)


def make_image_folder(root: str | Path, count: int, sizes: tuple[tuple[int, int], ...] = ((640, 480), (800, 600), (1024, 768)),
                      seed: int = 0) -> Path:
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
