"""Tests of TensorStoreDataset: RAM and paged modes, fields, batches, DataLoader workers,
budgets, broken stores and shared-memory cleanup."""

from __future__ import annotations

import gc
import io
import json
import os
import pickle
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import tensorstore_ds
import tensorstore_ds.serve.budget
from tensorstore_ds import ChunkShuffleSampler, TensorStoreDataset, collate, open_store
from tensorstore_ds.errors import (
    BudgetError,
    OptionsError,
    StoreFormatError,
    StoreIncompleteError,
    StoreNotFoundError,
)
from tensorstore_ds.serve.shm import PREFIX, RamArray
from tensorstore_ds.store.chunked import ChunkedArray
from tensorstore_ds.units import format_bytes

IMAGES, BAD_ROW, SIZE, CHUNK_ROWS = 50, 7, 16, 8
CLIPS, RATE, SECONDS, AUDIO_CHUNK_ROWS = 20, 8000, 0.25, 4
SAMPLES = int(RATE * SECONDS)
# In paged mode the class tests run with room for about two image chunks, so chunks are evicted.
BUDGETS = {"ram": "1GiB", "paged": "16KiB"}
MODES = ["ram", "paged"]


# --- stores ------------------------------------------------------------------------


def png(i: int) -> bytes:
    pixels = np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def clip(i: int) -> dict[str, Any]:
    frames = 1000 + 100 * i  # shorter and longer than SAMPLES: padded and cut
    t = np.arange(frames) / RATE
    return {"array": (0.5 * np.sin(2 * np.pi * (200 + 20 * i) * t)).tolist(), "sampling_rate": RATE}


@dataclass
class Stores:
    image: Path
    audio: Path


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stores]:
    import datasets

    root = tmp_path_factory.mktemp("stores")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", str(root / "hf-cache"))
        images = [png(i) for i in range(IMAGES)]
        images[BAD_ROW] = b"this is not an image"
        source = datasets.Dataset.from_dict(
            {
                "image": images,
                "caption": [[f"cap {i}", f"alt {i} é"] for i in range(IMAGES)],
                "meta": [{"id": i, "tag": "x" * (i % 3)} for i in range(IMAGES)],
            }
        )
        manifest = tensorstore_ds.convert(
            source,
            root / "image",
            image_column="image",
            image_size=SIZE,
            chunk_mb=CHUNK_ROWS * SIZE * SIZE * 3 / 2**20,
            keep_columns=["meta"],
            workers=0,
            progress=False,
        )
        assert manifest.num_samples == IMAGES - 1 and manifest.arrays["images"].chunk_rows == CHUNK_ROWS
        audio = datasets.Dataset.from_dict(
            {
                "audio": [clip(i) for i in range(CLIPS)],
                "caption": [f"sound {i} ♪" for i in range(CLIPS)],
            }
        )
        manifest = tensorstore_ds.convert(
            audio,
            root / "audio",
            audio_column="audio",
            sample_rate=RATE,
            audio_seconds=SECONDS,
            chunk_mb=AUDIO_CHUNK_ROWS * SAMPLES * 2 / 2**20,
            workers=0,
            progress=False,
        )
        assert manifest.num_samples == CLIPS and manifest.arrays["audio"].chunk_rows == AUDIO_CHUNK_ROWS
    yield Stores(root / "image", root / "audio")


@dataclass
class Expected:
    """Every value of the image store, read with open_store."""

    images: np.ndarray
    image_size: np.ndarray
    source_row: np.ndarray
    caption: list[str]
    captions: list[list[str]]
    meta: list[Any]
    audio: np.ndarray
    audio_length: np.ndarray
    audio_caption: list[str]


@pytest.fixture(scope="module")
def expected(stores: Stores) -> Expected:
    image, audio = open_store(stores.image), open_store(stores.audio)
    n = len(image)
    out = Expected(
        image.array("images")[:],
        image.array("image_size")[:],
        image.array("source_row")[:],
        image.captions.take(range(n)),
        image.text("captions").take(range(n)),
        image.text("meta").take(range(n)),
        audio.array("audio")[:],
        audio.array("audio_length")[:],
        audio.captions.take(range(len(audio))),
    )
    image.close()
    audio.close()
    # The stored values are those of the source rows (row BAD_ROW failed and is left out).
    assert out.source_row.tolist() == [r for r in range(IMAGES) if r != BAD_ROW]
    assert out.caption == [f"cap {r}" for r in out.source_row]
    assert out.captions == [[f"cap {r}", f"alt {r} é"] for r in out.source_row]
    assert out.images.shape == (IMAGES - 1, SIZE, SIZE, 3) and out.images.std() > 10
    assert out.audio.shape == (CLIPS, SAMPLES) and out.audio.dtype == np.float16
    return out


def dataset(path: Path, mode: str, **kwargs: Any) -> TensorStoreDataset:
    kwargs.setdefault("memory_budget", BUDGETS[mode])
    return TensorStoreDataset(path, mode=mode, progress=False, **kwargs)


def add_pixels(item: dict[str, Any]) -> dict[str, Any]:
    """A per-item transform (module level, so spawned workers could load it)."""
    return {**item, "pixels": item["image"].float() / 255, "n_words": len(item["caption"].split())}


def shared_paths(ds: TensorStoreDataset) -> list[str]:
    """Files of the shared buffers a dataset holds."""
    paths = [a.buffer.path for a in ds._arrays.values() if not isinstance(a, ChunkedArray)]
    return paths + [p.buffer.path for t in ds._text.values() for p in (t.data, t.offsets)]


def own_shm_files(directory: str = "/dev/shm") -> set[str]:
    """Per-process buffers of this process (shared copies are named by their store instead)."""
    return {f for f in os.listdir(directory) if f.startswith(f"{PREFIX}{os.getpid()}-")}


def with_locks(paths: list[str]) -> list[str]:
    """Shared copies and the lock files that count their users."""
    return paths + [p + ".lock" for p in paths]


# --- the same tests for both readers -------------------------------------------------


class TestServing:
    @pytest.fixture(params=MODES)
    def mode(self, request: pytest.FixtureRequest) -> str:
        return str(request.param)

    def test_items_equal_the_store(self, stores: Stores, expected: Expected, mode: str) -> None:
        ds = dataset(stores.image, mode)
        assert ds.mode == mode and len(ds) == IMAGES - 1
        assert ds.fields == ["image", "caption"]
        for i in range(len(ds)):
            item = ds[i]
            assert set(item) == {"index", "image", "caption"}
            assert item["index"] == i and isinstance(item["index"], int)
            image = item["image"]
            assert image.dtype == torch.uint8 and image.shape == (3, SIZE, SIZE)
            assert np.array_equal(image.permute(1, 2, 0).numpy(), expected.images[i])
            assert isinstance(item["caption"], str) and item["caption"] == expected.caption[i]

    def test_channels_last(self, stores: Stores, expected: Expected, mode: str) -> None:
        ds = dataset(stores.image, mode, channels_last=True)
        for i in (0, 9, len(ds) - 1):
            image = ds[i]["image"]
            assert image.shape == (SIZE, SIZE, 3) and image.is_contiguous()
            assert np.array_equal(image.numpy(), expected.images[i])
        batch = collate(ds.__getitems__([3, 1]))
        assert batch["image"].shape == (2, SIZE, SIZE, 3)

    def test_audio_items(self, stores: Stores, expected: Expected, mode: str) -> None:
        ds = dataset(stores.audio, mode, fields=["audio", "caption", "length"])
        assert ds.fields == ["audio", "audio_length", "caption"] and len(ds) == CLIPS
        for i in range(len(ds)):
            item = ds[i]
            assert set(item) == {"index", "audio", "audio_length", "caption"}
            assert item["audio"].dtype == torch.float16 and item["audio"].shape == (SAMPLES,)
            assert np.array_equal(item["audio"].numpy(), expected.audio[i])
            assert int(item["audio_length"]) == expected.audio_length[i] == min(SAMPLES, 1000 + 100 * i)
            assert item["caption"] == expected.audio_caption[i] == f"sound {i} ♪"

    def test_field_selection(self, stores: Stores, expected: Expected, mode: str) -> None:
        ds = dataset(stores.image, mode, fields=["caption", "captions", "meta", "length", "source_row"])
        assert "images" not in ds._arrays
        for i in (0, 7, len(ds) - 1):
            item = ds[i]
            assert set(item) == {"index", "caption", "captions", "meta", "image_size", "source_row"}
            assert item["captions"] == expected.captions[i]
            row = int(expected.source_row[i])
            assert item["meta"] == expected.meta[i] == {"id": row, "tag": "x" * (row % 3)}
            assert item["image_size"].tolist() == expected.image_size[i].tolist() == [32, 32]
            assert int(item["source_row"]) == expected.source_row[i]
        only = dataset(stores.image, mode, fields=["image"])
        assert set(only[0]) == {"index", "image"} and only.nbytes == expected.images.nbytes

    def test_unknown_field_names_the_fields(self, stores: Stores, mode: str) -> None:
        with pytest.raises(OptionsError, match=r"no field 'nope'.*'caption'.*'image'.*'length'"):
            dataset(stores.image, mode, fields=["image", "nope"])
        with pytest.raises(OptionsError, match="no field 'image'.*'audio'"):
            dataset(stores.audio, mode, fields=["image"])

    def test_getitems_equals_stacked_items(self, stores: Stores, mode: str) -> None:
        ds = dataset(stores.image, mode, fields=["image", "caption", "meta", "length"])
        indices = [5, 0, 48, 5, -1, 17, 33]
        batch = ds.__getitems__(indices)
        assert len(batch) == len(indices)
        tensors = collate(batch)
        items = [ds[i] for i in indices]
        assert tensors["index"].tolist() == [i % len(ds) for i in indices]
        assert torch.equal(tensors["image"], torch.stack([item["image"] for item in items]))
        assert tensors["image"].shape == (len(indices), 3, SIZE, SIZE)
        assert torch.equal(tensors["image_size"], torch.stack([item["image_size"] for item in items]))
        assert tensors["caption"] == [item["caption"] for item in items]
        assert tensors["meta"] == [item["meta"] for item in items]
        for k, item in enumerate(items):
            assert batch[k]["index"] == item["index"] and torch.equal(batch[k]["image"], item["image"])
        empty = collate(ds.__getitems__([]))
        assert empty["image"].shape == (0, 3, SIZE, SIZE) and empty["caption"] == []

    def test_negative_indices(self, stores: Stores, expected: Expected, mode: str) -> None:
        ds = dataset(stores.image, mode)
        n = len(ds)
        for i in (-1, -2, -n):
            item = ds[i]
            assert item["index"] == n + i
            assert np.array_equal(item["image"].permute(1, 2, 0).numpy(), expected.images[n + i])
            assert item["caption"] == expected.caption[n + i]

    def test_out_of_range(self, stores: Stores, mode: str) -> None:
        ds = dataset(stores.image, mode)
        n = len(ds)
        for bad in (n, n + 10, -n - 1):
            with pytest.raises(IndexError, match="out of range"):
                ds[bad]
        with pytest.raises(IndexError, match=str(n)):
            ds.__getitems__([0, 3, n])

    def test_transform_per_item_and_default_collate(self, stores: Stores, expected: Expected, mode: str) -> None:
        ds = dataset(stores.image, mode, transform=add_pixels)
        item = ds[4]
        assert item["pixels"].dtype == torch.float32 and item["n_words"] == 2
        assert torch.allclose(item["pixels"], item["image"].float() / 255)
        batches = list(DataLoader(ds, batch_size=8))  # torch's default collate
        assert next(b["pixels"].shape for b in batches) == (8, 3, SIZE, SIZE)
        assert torch.cat([b["index"] for b in batches]).tolist() == list(range(len(ds)))
        images = torch.cat([b["image"] for b in batches]).permute(0, 2, 3, 1).numpy()
        assert np.array_equal(images, expected.images)
        assert [c for b in batches for c in b["caption"]] == expected.caption
        assert collate([ds[0], ds[1]])["n_words"].tolist() == [2, 2]

    def test_kept_batches_are_never_overwritten(self, stores: Stores, expected: Expected, mode: str) -> None:
        """Batches come from reused ring slots; one the user keeps must stay intact."""
        ds = dataset(stores.image, mode)
        kept = [collate(ds.__getitems__([i, (i + 7) % len(ds)])) for i in range(len(ds))]
        loader = DataLoader(
            ds, batch_size=3, shuffle=True, collate_fn=collate, num_workers=2, multiprocessing_context="fork"
        )
        kept += list(loader) + list(loader)  # more batches than any ring has slots
        for batch in kept:
            index = batch["index"].numpy()
            assert np.array_equal(batch["image"].permute(0, 2, 3, 1).numpy(), expected.images[index])

    @pytest.mark.parametrize("context", ["fork", "spawn"])
    def test_dataloader_workers_serve_every_sample_once(
        self, stores: Stores, expected: Expected, mode: str, context: str
    ) -> None:
        ds = dataset(stores.image, mode, fields=["image", "caption", "source_row"])
        sampler = ChunkShuffleSampler(ds, seed=5)
        loader = DataLoader(
            ds,
            batch_size=6,
            sampler=sampler,
            collate_fn=collate,
            num_workers=2,
            multiprocessing_context=context,
            persistent_workers=True,
        )
        orders = []
        for epoch in range(2):
            sampler.set_epoch(epoch)
            seen: list[int] = []
            for batch in loader:
                index = batch["index"].numpy()
                assert batch["image"].shape == (len(index), 3, SIZE, SIZE)
                assert np.array_equal(batch["image"].permute(0, 2, 3, 1).numpy(), expected.images[index])
                assert batch["caption"] == [expected.caption[i] for i in index]
                assert np.array_equal(batch["source_row"].numpy(), expected.source_row[index])
                seen.extend(index.tolist())
            assert sorted(seen) == list(range(len(ds)))
            orders.append(seen)
        assert orders[0] != orders[1]
        del loader
        gc.collect()
        # Workers never remove the buffers: only the process that made them does.
        assert all(os.path.exists(p) for p in shared_paths(ds))
        assert ds[2]["caption"] == expected.caption[2]

    def test_pickle_is_small_and_serves_the_same(self, stores: Stores, mode: str) -> None:
        ds = dataset(stores.image, mode, fields=["image", "caption", "captions", "meta"])
        for i in range(0, len(ds), 4):
            ds[i]  # map some chunks first: they must not travel in the pickle
        blob = pickle.dumps(ds)
        assert len(blob) < ds.nbytes // 4
        assert b"alt 17" not in blob  # no copy of the text either
        copy = pickle.loads(blob)
        assert copy.mode == ds.mode and copy.fields == ds.fields and len(copy) == len(ds)
        for i in range(len(ds)):
            a, b = ds[i], copy[i]
            assert torch.equal(a["image"], b["image"])
            assert (a["caption"], a["captions"], a["meta"]) == (b["caption"], b["captions"], b["meta"])

    def test_both_modes_serve_identical_samples(self, stores: Stores, mode: str) -> None:
        other = "paged" if mode == "ram" else "ram"
        for path, fields in (
            (stores.image, ["image", "caption", "captions", "meta", "length", "source_row"]),
            (stores.audio, ["audio", "caption", "length"]),
        ):
            ds, ref = dataset(path, mode, fields=fields), dataset(path, other, fields=fields)
            assert (ds.mode, ref.mode) == (mode, other)
            indices = list(range(len(ds)))[::-1]
            a, b = collate(ds.__getitems__(indices)), collate(ref.__getitems__(indices))
            assert a.keys() == b.keys()
            for key in a:
                if isinstance(a[key], torch.Tensor):
                    assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
                else:
                    assert a[key] == b[key], key


def test_items_equal_what_zarr_reads(stores: Stores) -> None:
    import zarr

    group = zarr.open_group(str(stores.image), mode="r")
    images = group["images"][:]
    offsets = group["text/caption/offsets"][:]
    data = group["text/caption/bytes"][:]
    for mode in MODES:
        ds = dataset(stores.image, mode, channels_last=True)
        assert len(ds) == images.shape[0]
        for i in range(len(ds)):
            item = ds[i]
            assert np.array_equal(item["image"].numpy(), images[i])
            assert item["caption"] == bytes(data[offsets[i] : offsets[i + 1]]).decode()


@pytest.mark.parametrize("mode", MODES)
def test_store_with_no_samples(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    source = datasets.Dataset.from_dict({"image": [b"bad", b"worse"], "caption": ["a", "b"]})
    tensorstore_ds.convert(source, tmp_path / "store", image_column="image", image_size=8, workers=0, progress=False)
    ds = dataset(tmp_path / "store", mode)
    assert len(ds) == 0 and ds.nbytes == 8  # the caption offsets
    assert collate(ds.__getitems__([]))["image"].shape == (0, 3, 8, 8)
    with pytest.raises(IndexError):
        ds[0]
    assert list(DataLoader(ds, batch_size=4, collate_fn=collate)) == []


# --- budget and mode -------------------------------------------------------------------


def test_auto_mode_follows_the_budget(stores: Stores) -> None:
    nbytes = dataset(stores.image, "paged").nbytes
    ram = TensorStoreDataset(stores.image, memory_budget=nbytes, progress=False)
    assert ram.mode == "ram" and isinstance(ram._arrays["images"], RamArray)
    assert format_bytes(nbytes) in ram.mode_reason and format_bytes(nbytes) in repr(ram)
    assert "fits" in ram.mode_reason
    # While its copy is on this machine, another dataset of the store counts it once: it costs nothing more.
    again = TensorStoreDataset(stores.image, memory_budget=nbytes - 1, progress=False)
    assert again.mode == "ram" and f"{format_bytes(nbytes)} of it already shared" in again.mode_reason
    assert again._arrays["images"].buffer.path == ram._arrays["images"].buffer.path
    del ram, again
    gc.collect()
    paged = TensorStoreDataset(stores.image, memory_budget=nbytes - 1, progress=False)
    assert paged.mode == "paged" and isinstance(paged._arrays["images"], ChunkedArray)
    assert "does not fit" in paged.mode_reason and format_bytes(nbytes) in paged.mode_reason
    assert format_bytes(nbytes - 1) in paged.mode_reason
    assert dataset(stores.image, "paged", memory_budget="1GiB").mode == "paged"  # an explicit mode is kept


def test_ram_mode_over_budget_fails_before_loading(
    stores: Stores, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TENSORSTORE_DS_SHM_DIR", str(tmp_path))
    with pytest.raises(BudgetError, match="budget is 1.0 KiB") as info:
        dataset(stores.image, "ram", memory_budget=1024)
    assert isinstance(info.value, MemoryError) and "mode='paged'" in str(info.value)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "budget, expected",
    [
        ("1GiB", 2**30),
        ("500 MB", 500 * 10**6),
        ("1e9", 10**9),
        (12_345_678, 12_345_678),
        (0.25, 10**9),
        (1.0, 4 * 10**9),
        ("auto", 2 * 10**9),
        (3e9, 3 * 10**9),
    ],
)
def test_memory_budget_forms(stores: Stores, monkeypatch: pytest.MonkeyPatch, budget: Any, expected: int) -> None:
    monkeypatch.setattr(tensorstore_ds.serve.budget, "available_memory", lambda: 4 * 10**9)
    ds = TensorStoreDataset(stores.image, memory_budget=budget, progress=False)
    assert ds.budget == expected and ds.mode == "ram"


@pytest.mark.parametrize("budget", ["lots", "1 parsec", "-1GiB", "", -5, True])
def test_bad_memory_budget(stores: Stores, budget: Any) -> None:
    with pytest.raises(OptionsError, match="size"):
        TensorStoreDataset(stores.image, memory_budget=budget, progress=False)


def test_gather_threads_serve_the_same_batches(stores: Stores, expected: Expected) -> None:
    one = dataset(stores.image, "ram", fields=["image", "image_size", "caption"])
    threaded = dataset(stores.image, "ram", fields=["image", "image_size", "caption"], gather_threads=3)
    for indices in ([0], [5, 3, 48, 3, 0, 17, 22], list(range(len(one)))[::-1]):
        a, b = collate(one.__getitems__(indices)), collate(threaded.__getitems__(indices))
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["image_size"], b["image_size"])
        assert a["caption"] == b["caption"]
        assert np.array_equal(b["image"].permute(0, 2, 3, 1).numpy(), expected.images[indices])
    with pytest.raises(OptionsError, match="gather_threads must be a whole number of at least 1, not 0"):
        dataset(stores.image, "ram", gather_threads=0)


def test_bad_mode(stores: Stores) -> None:
    with pytest.raises(OptionsError, match="mode must be one of"):
        TensorStoreDataset(stores.image, mode="disk")


def test_paged_mode_keeps_mapped_chunks_within_the_budget(stores: Stores, expected: Expected) -> None:
    probe = dataset(stores.image, "paged", fields=["image", "caption"])
    text_bytes = probe.nbytes - expected.images.nbytes
    chunk = CHUNK_ROWS * SIZE * SIZE * 3
    ds = dataset(stores.image, "paged", fields=["image", "caption"], memory_budget=text_bytes + 5 * chunk // 2)
    images = ds._arrays["images"]
    sampler = ChunkShuffleSampler(ds, seed=2)
    assert sampler.window == 1  # half of the two chunks the budget holds: one served, one read ahead
    seen = []
    for batch in DataLoader(ds, batch_size=5, sampler=sampler, collate_fn=collate):
        assert len(images._maps) * chunk <= ds.budget - text_bytes
        assert np.array_equal(batch["image"].permute(0, 2, 3, 1).numpy(), expected.images[batch["index"].numpy()])
        seen += batch["index"].tolist()
    assert sorted(seen) == list(range(len(ds)))
    assert len(images._maps) == 2
    # A budget below one chunk still works, with one chunk mapped at a time.
    tiny = dataset(stores.image, "paged", fields=["image"], memory_budget=100)
    for _ in DataLoader(tiny, batch_size=7, collate_fn=collate, shuffle=True):
        assert len(tiny._arrays["images"]._maps) == 1
    tiny.close()
    assert len(tiny._arrays["images"]._maps) == 0


def test_chunk_bytes_and_rows(stores: Stores) -> None:
    ds = dataset(stores.image, "paged", fields=["image", "length"])
    assert ds.chunk_rows == CHUNK_ROWS
    # The bytes of one media chunk's samples, not of the small arrays' big chunk files.
    assert ds.chunk_bytes == CHUNK_ROWS * (SIZE * SIZE * 3 + 2 * 4)
    assert dataset(stores.audio, "paged").chunk_rows == AUDIO_CHUNK_ROWS


# --- broken stores ---------------------------------------------------------------------


@pytest.fixture
def copy_store(stores: Stores, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A hard-linked copy of the image store (replace a file before changing it)."""
    copy = tmp_path / "store"
    shutil.copytree(stores.image, copy, copy_function=os.link)
    monkeypatch.setenv("TENSORSTORE_DS_SHM_DIR", str(tmp_path / "shm"))
    (tmp_path / "shm").mkdir()
    return copy


def replace(path: Path, data: bytes) -> None:
    path.unlink()
    path.write_bytes(data)


def assert_fails_everywhere(path: Path, error: type[Exception], match: str) -> None:
    """open_store and both dataset modes fail the same way, before any shared buffer exists."""
    with pytest.raises(error, match=match):
        open_store(path)
    for mode in MODES:
        with pytest.raises(error, match=match):
            dataset(path, mode)
    assert os.listdir(os.environ["TENSORSTORE_DS_SHM_DIR"]) == []


def test_truncated_chunk(copy_store: Path) -> None:
    chunk = copy_store / "images" / "c" / "3" / "0" / "0" / "0"
    replace(chunk, chunk.read_bytes()[:1000])
    assert_fails_everywhere(copy_store, StoreFormatError, re.escape(str(chunk)) + ".*truncated: 1000 bytes")


def test_missing_chunk(copy_store: Path) -> None:
    chunk = copy_store / "images" / "c" / "6" / "0" / "0" / "0"
    chunk.unlink()
    assert_fails_everywhere(copy_store, StoreFormatError, re.escape(str(chunk)) + ".*missing")


def test_truncated_text_chunk(copy_store: Path) -> None:
    chunk = copy_store / "text" / "meta" / "offsets" / "c" / "0"
    replace(chunk, chunk.read_bytes()[:-8])
    assert_fails_everywhere(copy_store, StoreFormatError, re.escape(str(chunk)))


def test_newer_format_version(copy_store: Path) -> None:
    manifest = copy_store / "manifest.json"
    doc = json.loads(manifest.read_bytes())
    replace(manifest, json.dumps({**doc, "format_version": 999}).encode())
    assert_fails_everywhere(copy_store, StoreFormatError, re.escape(str(manifest)) + ".*version 999 is newer")


def test_unfinished_conversion(copy_store: Path) -> None:
    (copy_store / "manifest.json").unlink()
    (copy_store / ".convert").mkdir()
    (copy_store / ".convert" / "state.json").write_text(json.dumps({"converted": 24, "chunks": 3}))
    assert_fails_everywhere(copy_store, StoreIncompleteError, re.escape(str(copy_store)) + ".*unfinished.*24 samples")


def test_not_a_store(copy_store: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    assert_fails_everywhere(missing, StoreNotFoundError, re.escape(str(missing)) + ".*does not exist")
    with pytest.raises(FileNotFoundError):
        TensorStoreDataset(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_fails_everywhere(empty, StoreNotFoundError, "has no manifest.json")


# --- shared memory -------------------------------------------------------------------------


def test_ram_buffers_leave_dev_shm_with_the_dataset(stores: Stores, expected: Expected) -> None:
    before = own_shm_files()
    ds = dataset(stores.image, "ram", fields=["image", "caption", "meta"])
    paths = with_locks(shared_paths(ds))
    assert len(paths) == 10 and all(os.path.dirname(p) == "/dev/shm" and os.path.exists(p) for p in paths)
    assert ds[0]["caption"] == expected.caption[0]
    del ds
    gc.collect()
    assert not any(os.path.exists(p) for p in paths)
    assert own_shm_files() <= before


def test_shm_dir_setting(stores: Stores, expected: Expected, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TENSORSTORE_DS_SHM_DIR", str(tmp_path))
    before = own_shm_files()
    ds = dataset(stores.image, "ram")
    files = sorted(os.listdir(tmp_path))
    copies = [f for f in files if not f.endswith(".lock")]  # images, caption x2: each with its lock file
    assert len(copies) == 3 and all(f.startswith(f"{PREFIX}shared-") and f + ".lock" in files for f in copies)
    assert len(files) == 6 and sorted(os.path.basename(p) for p in shared_paths(ds)) == copies
    assert own_shm_files() == before
    batches = list(DataLoader(ds, batch_size=10, collate_fn=collate, num_workers=2, multiprocessing_context="fork"))
    assert sum(len(b["caption"]) for b in batches) == len(ds)
    assert sorted(os.listdir(tmp_path)) == files
    copy = pickle.loads(pickle.dumps(ds))  # attaches by name, never removes
    del copy
    gc.collect()
    assert sorted(os.listdir(tmp_path)) == files
    del ds, batches
    gc.collect()
    assert os.listdir(tmp_path) == []


def test_buffers_of_a_killed_process_are_reaped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A process killed before its exit handlers run cannot remove its buffers; the next one does."""
    import subprocess
    import sys

    from tensorstore_ds.serve.shm import PREFIX, SharedBuffer

    monkeypatch.setenv("TENSORSTORE_DS_SHM_DIR", str(tmp_path))
    code = (
        "import os, signal; from tensorstore_ds.serve.shm import SharedBuffer; "
        "b = SharedBuffer.create(4096); print(b.path, flush=True); os.kill(os.getpid(), signal.SIGKILL)"
    )
    killed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ))
    orphan = Path(killed.stdout.strip())
    assert killed.returncode == -9 and orphan.exists() and orphan.name.startswith(PREFIX)
    mine = SharedBuffer.create(4096)
    assert not orphan.exists()  # reaped: its creator is dead
    assert Path(mine.path).exists()  # ours stays while we live
    assert [p.name for p in tmp_path.iterdir()] == [Path(mine.path).name]
