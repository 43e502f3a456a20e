"""Small stores for the sharing tests (remote, pull, merge), made by the real converter."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tensorstore_ds.conversion.api import convert
from tensorstore_ds.store.store import Store
from tests.media import noise_png

SIZE = 16
CHUNK_ROWS = 4
ROW_BYTES = SIZE * SIZE * 3
CHUNK_BYTES = CHUNK_ROWS * ROW_BYTES
SAMPLES = 22
BAD_ROW = 5


def build_image_store(root: Path, n: int = SAMPLES, seed: int = 0) -> Path:
    """A store of ``n`` rows (row ``BAD_ROW`` fails) with caption lists and a kept column; 4 rows a chunk."""
    import datasets

    images = [noise_png(seed * 1000 + i, SIZE) for i in range(n)]
    images[BAD_ROW] = b"not an image"
    source = datasets.Dataset.from_dict(
        {
            "image": images,
            "caption": [[f"cap {seed}-{i}", f"alt {i} é"] for i in range(n)],
            "meta": [{"id": i, "tag": "x" * (i % 3)} for i in range(n)],
        }
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", str(root.parent / f"hf-cache-{root.name}"))
        convert(
            source,
            root,
            image_column="image",
            image_size=SIZE,
            keep_columns=["meta"],
            chunk_mb=CHUNK_BYTES / 2**20,
            workers=0,
            progress=False,
        )
    return root


def chunk_file(root: Path, k: int) -> Path:
    """Image chunk ``k`` of a store."""
    return root / "images" / "c" / str(k) / "0" / "0" / "0"


def snapshot(store: Store) -> dict[str, Any]:
    """Every value of a store, read with its own reader."""
    n = len(store)
    out: dict[str, Any] = {name: store.array(name)[:] for name in store.array_names}
    out.update({f"text:{name}": store.text(name).take(range(n)) for name in store.manifest.text})
    out["failures"] = store.failures()
    return out


def assert_same_values(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert sorted(a) == sorted(b)
    for key, value in a.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(value, b[key], err_msg=key)
        else:
            assert value == b[key], key


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by relative path."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def store_bytes(root: Path) -> dict[str, bytes]:
    """Every file of a store by relative path; the manifest without its ``created`` time.

    Two conversions of the same source and options must give equal results.
    """
    files = tree_bytes(root)
    if "manifest.json" in files:
        doc = json.loads(files["manifest.json"])
        doc.pop("created")
        files["manifest.json"] = json.dumps(doc, sort_keys=True).encode()
    return files


def copy_tree(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, copy_function=shutil.copy2)
    return dst


def chunk_files_bytes(cache: Path) -> int:
    """Bytes of chunk files (anything under a ``c/`` directory) in a cache directory."""
    return sum(
        p.stat().st_size
        for p in cache.rglob("*")
        if p.is_file() and f"{os.sep}c{os.sep}" in str(p) and not p.name.startswith(".")
    )


def batch_items(ds: Any, indices: list[int], index: bool = True) -> list[dict[str, Any]]:
    """Items of one gathered batch as numpy arrays and values (with or without ``index``)."""
    from tensorstore_ds import collate

    batch = collate(ds.__getitems__(indices))
    return [
        {k: (v[i].numpy() if hasattr(v, "numpy") else v[i]) for k, v in batch.items() if index or k != "index"}
        for i in range(len(indices))
    ]


def assert_same_items(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert sorted(x) == sorted(y)
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)
