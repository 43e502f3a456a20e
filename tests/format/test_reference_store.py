"""A store written by an earlier version must keep reading with exactly the same values.

tests/data/reference_store was made by tools/make_reference_store.py and is
never rewritten by the tests. If this fails after a change to the reader or
the format, old stores no longer read as they did: fix the reader (or bump the
format version on purpose, keeping a reader for version 1).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from tensorstore_ds import TensorStoreDataset, collate, open_store

STORE = Path(__file__).parents[1] / "data" / "reference_store"
NUM_SAMPLES = 6
SOURCE_ROWS = [0, 1, 2, 3, 5, 6]
PIXEL_SUMS = [16992, 24096, 31200, 31648, 22560, 17376]
IMAGES_SHA256 = "839dc09606bbb335c1571ed65358589ca9149a532c1c2774151990516e24b91e"
CAPTIONS = [
    ["a red square", "un carré rouge"],
    ["ein grünes Quadrat über der Straße"],
    ["青い四角", "a blue square"],
    ["a yellow square"],
    ["Ελληνικά γράμματα", "emoji 🐱🚀", "third caption"],
    ['plain ascii, with "quotes" and a\ttab'],
]
META = [
    {"id": 0, "lang": "fr"},
    {"id": 1, "lang": "de"},
    {"id": 2, "lang": "ja"},
    {"id": 3, "lang": "en"},
    {"id": 5, "lang": "el"},
    {"id": 6, "lang": None},
]
FIELDS = ["caption", "captions", "image_size", "images", "meta", "source_row"]


def pattern(row: int) -> np.ndarray:
    """The source image of ``row`` (stored unresized: the source is already 8x8)."""
    y, x = np.mgrid[0:8, 0:8]
    return np.stack([(row * 37 + y * 8 + x * 3 + c * 50) % 256 for c in range(3)], axis=-1).astype(np.uint8)


@pytest.fixture(scope="module", autouse=True)
def unchanged() -> object:
    """The tests read the store and never change, add or remove a file."""
    before = snapshot()
    yield
    assert snapshot() == before


def snapshot() -> dict[str, str]:
    return {
        str(p.relative_to(STORE)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(STORE.rglob("*"))
        if p.is_file()
    }


def test_store_is_small_and_complete() -> None:
    files = snapshot()
    assert "manifest.json" in files and "zarr.json" in files and ".convert" not in {f.split("/")[0] for f in files}
    assert sum(p.stat().st_size for p in STORE.rglob("*") if p.is_file()) < 100_000


def test_open_store_reads_the_known_values() -> None:
    store = open_store(STORE)
    assert store.manifest.format_version == 1
    assert len(store) == NUM_SAMPLES and store.media == "image" and store.fields == FIELDS
    assert store.manifest.counts["converted"] == 6 and store.manifest.counts["failed"] == 1
    assert store.manifest.options["image_size"] == 8 and store.manifest.options["chunk_rows"] == 4
    images = store.array("images")[:]
    assert images.shape == (6, 8, 8, 3) and images.dtype == np.uint8
    assert images.reshape(6, -1).sum(axis=1).tolist() == PIXEL_SUMS
    assert hashlib.sha256(images.tobytes()).hexdigest() == IMAGES_SHA256
    for i, row in enumerate(SOURCE_ROWS):
        assert np.array_equal(images[i], pattern(row))
        assert np.array_equal(store.array("image")[i], pattern(row))
    assert store.array("source_row")[:].tolist() == SOURCE_ROWS
    assert store.array("image_size")[:].tolist() == [[8, 8]] * 6
    assert store.captions.take(range(6)) == [c[0] for c in CAPTIONS]
    assert store.captions[-1] == CAPTIONS[-1][0]
    assert store.text("captions").take(range(6)) == CAPTIONS
    assert store.text("meta").take(range(6)) == META
    failures = store.failures()
    assert [(f["row"], f["key"], f["reason"]) for f in failures] == [(4, "image (bytes)", "undecodable-image")]
    assert {"row", "key", "reason", "detail"} <= set(failures[0])
    store.close()


def test_zarr_reads_the_same_values() -> None:
    import zarr

    group = zarr.open_group(str(STORE), mode="r")
    assert group.attrs["tensorstore_ds"]["format_version"] == 1
    assert hashlib.sha256(group["images"][:].tobytes()).hexdigest() == IMAGES_SHA256
    assert group["source_row"][:].tolist() == SOURCE_ROWS
    offsets, data = group["text/caption/offsets"][:], group["text/caption/bytes"][:]
    assert [bytes(data[offsets[i] : offsets[i + 1]]).decode() for i in range(6)] == [c[0] for c in CAPTIONS]


@pytest.mark.parametrize("mode", ["ram", "paged"])
def test_dataset_serves_the_known_values(mode: str) -> None:
    ds = TensorStoreDataset(
        STORE,
        fields=["image", "caption", "captions", "meta", "length", "source_row"],
        mode=mode,
        memory_budget="64MiB",
        progress=False,
    )
    assert ds.mode == mode and len(ds) == NUM_SAMPLES and ds.chunk_rows == 4
    for i in range(NUM_SAMPLES):
        item = ds[i]
        assert item["image"].shape == (3, 8, 8) and item["image"].dtype == torch.uint8
        assert int(item["image"].sum()) == PIXEL_SUMS[i]
        assert np.array_equal(item["image"].permute(1, 2, 0).numpy(), pattern(SOURCE_ROWS[i]))
        assert item["caption"] == CAPTIONS[i][0] and item["captions"] == CAPTIONS[i] and item["meta"] == META[i]
        assert item["image_size"].tolist() == [8, 8] and int(item["source_row"]) == SOURCE_ROWS[i]
    batch = collate(ds.__getitems__([5, 0, 4]))
    assert batch["image"].flatten(1).sum(1).tolist() == [PIXEL_SUMS[5], PIXEL_SUMS[0], PIXEL_SUMS[4]]
    assert batch["caption"] == [CAPTIONS[5][0], CAPTIONS[0][0], CAPTIONS[4][0]]
    ds.close()
