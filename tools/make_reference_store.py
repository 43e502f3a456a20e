"""Build tests/data/reference_store: a tiny store of today's format, kept in the repository.

tests/test_reference_store.py reads it and checks exact values, so a change to
the reader or the format that stops old stores from reading is caught. Run it
only when the format version changes on purpose (then keep the old store too,
if the new reader still has to read it), from the repository root::

    .venv/bin/python tools/make_reference_store.py            # writes tests/data/reference_store
    .venv/bin/python tools/make_reference_store.py --out DIR  # anywhere else

It prints the values that tests/test_reference_store.py hard-codes.

The store: 7 source rows of 8x8 PNG images (row 4 is not an image, so 6
samples and one failure), image_size 8 (no resize), 4 samples per chunk file
(two chunks, the second padded), a list caption column (non-ASCII text) and a
kept JSON column. The writer's default chunk sizes for the small arrays and the
caption index (2**20 rows, 16 MiB of text) would make every file megabytes of
zero padding; they are set small here so the store stays a few KiB. Chunk
sizes are per-array metadata (manifest and zarr.json), so the store is an
ordinary store of the format, with several chunks in every array.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "tests" / "data" / "reference_store"
MAX_BYTES = 100_000
SIZE, CHUNK_ROWS, BAD_ROW = 8, 4, 4
# Module constants of the writer that set the chunk sizes of small arrays and text.
SMALL_CHUNKS = {
    "tensorstore_ds.conversion.writer": {"SMALL_CHUNK_ROWS": 4},
    "tensorstore_ds.format.text": {"BYTES_CHUNK": 64, "OFFSETS_CHUNK": 4},
}
CAPTIONS = [
    ["a red square", "un carré rouge"],
    ["ein grünes Quadrat über der Straße"],
    ["青い四角", "a blue square"],
    ["a yellow square"],
    ["never stored"],  # row 4: the image is broken
    ["Ελληνικά γράμματα", "emoji 🐱🚀", "third caption"],
    ['plain ascii, with "quotes" and a\ttab'],
]
META = [{"id": i, "lang": lang} for i, lang in enumerate(["fr", "de", "ja", "en", "xx", "el", None])]


def image(i: int) -> np.ndarray:
    """An 8x8 RGB test pattern, different for every row."""
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    channels = [(i * 37 + y * 8 + x * 3 + c * 50) % 256 for c in range(3)]
    return np.stack(channels, axis=-1).astype(np.uint8)


def png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def source() -> Any:
    import datasets

    images = [png(image(i)) for i in range(len(CAPTIONS))]
    images[BAD_ROW] = b"not an image"
    return datasets.Dataset.from_dict({"image": images, "caption": CAPTIONS, "meta": META})


def build(out: Path) -> None:
    import importlib

    import datasets

    import tensorstore_ds

    for module_name, values in SMALL_CHUNKS.items():
        module = importlib.import_module(module_name)
        for name, value in values.items():
            if hasattr(module, name):
                setattr(module, name, value)
    if out.exists():
        shutil.rmtree(out)
    with tempfile.TemporaryDirectory() as cache:
        datasets.config.HF_DATASETS_CACHE = cache
        tensorstore_ds.convert(
            source(),
            out,
            image_column="image",
            image_size=SIZE,
            keep_columns=["meta"],
            chunk_mb=CHUNK_ROWS * SIZE * SIZE * 3 / 2**20,
            workers=0,
            progress=False,
        )


def describe(out: Path) -> None:
    """Print the values that tests/test_reference_store.py checks."""
    from tensorstore_ds import open_store

    store = open_store(out)
    images = store.array("images")[:]
    print("num_samples:", len(store))
    print("chunk_rows:", {name: spec.chunk_rows for name, spec in store.manifest.arrays.items()})
    print("pixel sums:", [int(v) for v in images.reshape(len(store), -1).sum(axis=1)])
    print("images sha256:", hashlib.sha256(images.tobytes()).hexdigest())
    print("source_row:", store.array("source_row")[:].tolist())
    print("image_size:", store.array("image_size")[:].tolist())
    print("captions:", store.captions.take(range(len(store))))
    print("failures:", store.failures())
    store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    build(args.out)
    files = [p for p in args.out.rglob("*") if p.is_file()]
    total = sum(p.stat().st_size for p in files)
    print(f"wrote {args.out}: {len(files)} files, {total} bytes")
    describe(args.out)
    if total > MAX_BYTES:
        print(f"error: the store takes {total} bytes, more than {MAX_BYTES}; check the chunk sizes", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
