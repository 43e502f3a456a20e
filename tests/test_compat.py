"""The seed-compatible classes: signatures, items, batches, the conversion cache, placeholders."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pytest
import torch.utils.data
from PIL import Image
from torch.utils.data import DataLoader

import tensorstore_ds
from tensorstore_ds import compat, open_store
from tensorstore_ds.compat import (
    InMemoryAudioTextDataset,
    InMemoryImageTextDataset,
    cache_root,
    collate_in_memory_audio,
    collate_in_memory_images,
)
from tensorstore_ds.errors import OptionsError, StoreLockedError
from tensorstore_ds.serve import ring
from tests.httpserver import TestServer
from tests.media import audio_bytes, audio_struct, write_image

# The conversion module, to patch its internals.
convert_module = importlib.import_module("tensorstore_ds.conversion.run")  # where a conversion decodes

ROOT = Path(__file__).resolve().parents[1]
EMPTY = inspect.Parameter.empty
SEED_IMAGE = [
    ("hf_dataset", EMPTY),
    ("img_col", "image_url"),
    ("txt_col", "caption"),
    ("max_samples", None),
    ("image_size", (224, 224)),
    ("num_workers", None),
]
SEED_AUDIO = [
    ("hf_dataset", EMPTY),
    ("audio_col", "audio"),
    ("txt_col", "caption"),
    ("max_samples", None),
    ("target_sr", 16000),
    ("max_duration", 30.0),
    ("num_workers", None),
]
EXTRAS = [("cache_dir", None), ("keep_placeholders", False), ("memory_budget", "auto")]
IMAGES, DEAD_ROW, SMALL = 7, 2, (32, 32)
CLIPS, BAD_CLIP = 4, 1


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """``datasets``' cache and ours in tmp_path; no fetch retries (a dead URL fails at once)."""
    monkeypatch.setenv(compat.CACHE_ENV, str(tmp_path / "cache"))
    plain = convert_module.ConvertOptions.fetch_options
    monkeypatch.setattr(
        convert_module.ConvertOptions, "fetch_options", lambda self: dataclasses.replace(plain(self), retries=0)
    )
    return tmp_path / "cache"


def dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/gone.jpg"


@pytest.fixture
def pixmo(tmp_path: Path, http_server: TestServer) -> datasets.Dataset:
    """A pixmo-cap-style dataset: JPEG URLs (row 2 dead), list captions, an ``alt`` caption column."""
    for i in range(IMAGES):
        write_image(tmp_path / "www" / f"{i}.jpg", 30 + i, 40, seed=i, fmt="JPEG")
    http_server.serve_dir(tmp_path / "www", "/img/")
    urls = [http_server.url_for(f"/img/{i}.jpg") for i in range(IMAGES)]
    urls[DEAD_ROW] = dead_url()
    captions = [[f"photo {i}", f"second caption {i}"] for i in range(IMAGES)]
    return datasets.Dataset.from_dict(
        {"image_url": urls, "caption": captions, "alt": [f"alt {i}" for i in range(IMAGES)]}
    )


@pytest.fixture
def musiccaps() -> datasets.Dataset:
    """A MusicCaps-style dataset: an embedded Audio column (row 1 undecodable), dict captions."""
    blobs = [audio_bytes(8000, 0.5, freq=300.0 + 100 * i) for i in range(CLIPS)]
    blobs[BAD_CLIP] = b"this is not audio"
    table = pa.table(
        {
            "audio": audio_struct([(b, f"{i}.wav") for i, b in enumerate(blobs)]),
            "caption": [{"raw": f"tune {i}", "lang": "en"} for i in range(CLIPS)],
        }
    )
    return datasets.Dataset(table).cast_column("audio", datasets.Audio(decode=False))


def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any conversion or decoding raise."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a cache hit must not convert or decode")

    monkeypatch.setattr(convert_module, "decode_sample", refuse)
    monkeypatch.setattr(convert_module, "_run", refuse)
    monkeypatch.setattr(compat, "convert", refuse)


# --- the seed's interface -----------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "seed"), [(InMemoryImageTextDataset, SEED_IMAGE), (InMemoryAudioTextDataset, SEED_AUDIO)]
)
def test_signatures_match_the_seed(cls: type, seed: list[tuple[str, Any]]) -> None:
    params = list(inspect.signature(cls).parameters.values())
    assert [(p.name, p.default) for p in params[: len(seed)]] == seed
    assert all(p.kind is p.POSITIONAL_OR_KEYWORD for p in params[: len(seed)])
    assert [(p.name, p.default) for p in params[len(seed) :]] == EXTRAS
    assert all(p.kind is p.KEYWORD_ONLY for p in params[len(seed) :])


def test_image_items_and_batches(pixmo: datasets.Dataset) -> None:
    ds = InMemoryImageTextDataset(pixmo, num_workers=0)
    assert len(ds) == IMAGES - 1 and ds.failed_indices == [DEAD_ROW] and ds.converted_now
    assert ds.failures[0]["row"] == DEAD_ROW
    item = ds[0]
    assert set(item) == {"image", "caption"}
    assert isinstance(item["image"], Image.Image) and item["image"].mode == "RGB"
    assert item["image"].size == (224, 224)
    stored = open_store(ds.store_path).array("images")
    good_rows = [i for i in range(IMAGES) if i != DEAD_ROW]
    assert [ds[i]["caption"] for i in range(len(ds))] == [f"photo {r}" for r in good_rows]  # first of a list
    assert np.array_equal(np.asarray(ds[-1]["image"]), stored[len(ds) - 1])
    with pytest.raises(IndexError):
        ds[len(ds)]
    loader = DataLoader(ds, batch_size=4, shuffle=True, collate_fn=collate_in_memory_images)
    batches = list(loader)
    assert [set(b) for b in batches] == [{"images", "captions"}] * 2
    assert all(isinstance(im, Image.Image) and im.size == (224, 224) for b in batches for im in b["images"])
    assert sorted(c for b in batches for c in b["captions"]) == sorted(f"photo {r}" for r in good_rows)


def test_audio_items_and_batches(musiccaps: datasets.Dataset) -> None:
    ds = InMemoryAudioTextDataset(musiccaps, num_workers=0)
    assert len(ds) == CLIPS - 1 and ds.failed_indices == [BAD_CLIP]
    item = ds[0]
    assert set(item) == {"audio", "caption"} and item["caption"] == "tune 0"  # a dict's "raw"
    assert isinstance(item["audio"], np.ndarray) and item["audio"].dtype == np.float32
    assert item["audio"].shape == (16000 * 30,)
    assert np.abs(item["audio"][:8000]).max() > 0.3 and not item["audio"][8200:].any()  # 0.5 s, then padding
    batch = next(iter(DataLoader(ds, batch_size=2, collate_fn=collate_in_memory_audio)))
    assert set(batch) == {"audio", "captions"} and batch["captions"] == ["tune 0", "tune 2"]
    assert all(isinstance(a, np.ndarray) and a.dtype == np.float32 and a.shape == (480000,) for a in batch["audio"])


def test_dataloader_workers(pixmo: datasets.Dataset) -> None:
    ds = InMemoryImageTextDataset(pixmo, image_size=SMALL, num_workers=0)
    expected = sorted(ds[i]["caption"] for i in range(len(ds)))
    loader = DataLoader(ds, batch_size=2, shuffle=True, num_workers=1, collate_fn=collate_in_memory_images)
    for _ in range(3):  # more batches than a worker's ring has slots
        seen = [(c, im.size) for b in loader for c, im in zip(b["captions"], b["images"])]
        assert sorted(c for c, _ in seen) == expected and {s for _, s in seen} == {SMALL}


class RingProbe(torch.utils.data.Dataset):  # type: ignore[type-arg]
    """Serves, per batch, the ring slot states of the worker right after the compat gather."""

    def __init__(self, ds: InMemoryImageTextDataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitems__(self, indices: list[int]) -> list[list[int]]:
        self.ds.__getitems__(indices)
        return [ring._RINGS[True].state.tolist()]


def test_workers_give_their_ring_slots_back(pixmo: datasets.Dataset) -> None:
    ds = InMemoryImageTextDataset(pixmo, image_size=SMALL, num_workers=0)
    loader = DataLoader(RingProbe(ds), batch_size=2, num_workers=1, collate_fn=lambda b: b[0])
    states = list(loader)
    assert len(states) == 3 and all(not any(s) for s in states)


# --- options ------------------------------------------------------------------------


def test_datasets_without_a_fingerprint_are_refused() -> None:
    with pytest.raises(OptionsError, match="fingerprint"):
        InMemoryImageTextDataset([{"image_url": "http://x/1.jpg", "caption": "one"}])


def test_waits_for_another_process_converting(pixmo: datasets.Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []

    def locked_once(source: Any, out: Path, **options: Any) -> Any:
        calls.append(out)
        if len(calls) == 1:
            raise StoreLockedError(out, 4242)
        return real_convert(source, out, **options)

    real_convert = compat.convert
    monkeypatch.setattr(compat, "convert", locked_once)
    monkeypatch.setattr(compat, "LOCK_POLL_SECONDS", 0.0)
    ds = InMemoryImageTextDataset(pixmo, image_size=SMALL, num_workers=0)
    assert len(calls) == 2 and len(ds) == IMAGES - 1


def test_non_square_image_size_is_refused(pixmo: datasets.Dataset, isolated: Path) -> None:
    with pytest.raises(OptionsError, match="square"):
        InMemoryImageTextDataset(pixmo, image_size=(224, 160), num_workers=0)
    assert not isolated.exists()


def test_cache_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert cache_root(tmp_path / "given") == tmp_path / "given"
    assert cache_root() == tmp_path / "cache"  # $TENSORSTORE_DS_CACHE
    monkeypatch.delenv(compat.CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "tensorstore_ds"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "tensorstore_ds"


def test_env_and_cache_dir(pixmo: datasets.Dataset, isolated: Path, tmp_path: Path) -> None:
    from_env = InMemoryImageTextDataset(pixmo, image_size=SMALL, num_workers=0)
    assert from_env.store_path.parent == isolated and (from_env.store_path / "manifest.json").is_file()
    assert len(from_env.store_path.name) == 16
    given = InMemoryImageTextDataset(pixmo, image_size=SMALL, num_workers=0, cache_dir=tmp_path / "mine")
    assert given.store_path == tmp_path / "mine" / from_env.store_path.name and given.converted_now


# --- the cache ----------------------------------------------------------------------


def test_cache_hit_does_not_decode(pixmo: datasets.Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    first = InMemoryImageTextDataset(pixmo, image_size=SMALL, num_workers=0)
    stamp = (first.store_path / "manifest.json").stat().st_mtime_ns
    no_decoding(monkeypatch)
    again = InMemoryImageTextDataset(pixmo, image_size=SMALL, num_workers=0)
    assert again.store_path == first.store_path and not again.converted_now
    assert (again.store_path / "manifest.json").stat().st_mtime_ns == stamp
    assert again.failed_indices == first.failed_indices and len(again) == len(first)
    assert np.array_equal(np.asarray(again[3]["image"]), np.asarray(first[3]["image"]))


def test_cache_hit_in_another_process(pixmo: datasets.Dataset, tmp_path: Path) -> None:
    pixmo.save_to_disk(tmp_path / "saved")
    first = InMemoryImageTextDataset(datasets.load_from_disk(tmp_path / "saved"), image_size=SMALL, num_workers=0)
    code = (
        "import sys, datasets, tensorstore_ds.conversion.run as c\n"
        "c.decode_sample = c._run = None  # any conversion would fail\n"
        "from tensorstore_ds.compat import InMemoryImageTextDataset\n"
        f"ds = InMemoryImageTextDataset(datasets.load_from_disk(sys.argv[1]), image_size={SMALL})\n"
        "print(ds.converted_now, len(ds), ds.store_path)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "saved")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.split()
    assert out == ["False", str(len(first)), str(first.store_path)]


def test_convert_returns_a_finished_store_without_decoding(
    pixmo: datasets.Dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = {"image_column": "image_url", "image_size": 16, "workers": 0, "progress": False}
    manifest = tensorstore_ds.convert(pixmo, tmp_path / "store", **options)
    no_decoding(monkeypatch)
    assert tensorstore_ds.convert(pixmo, tmp_path / "store", **options).counts == manifest.counts


@pytest.mark.parametrize("change", [{"max_samples": 3}, {"image_size": (48, 48)}, {"txt_col": "alt"}])
def test_a_changed_option_makes_a_new_store(pixmo: datasets.Dataset, change: dict[str, Any]) -> None:
    base = InMemoryImageTextDataset(pixmo, image_size=SMALL, num_workers=0)
    changed = InMemoryImageTextDataset(pixmo, **{"image_size": SMALL, "num_workers": 0, **change})
    assert changed.converted_now and changed.store_path != base.store_path
    if "max_samples" in change:
        assert len(changed) == 2  # rows 0, 1 and the dead row 2
    if "image_size" in change:
        assert changed[0]["image"].size == (48, 48)
    if "txt_col" in change:
        assert changed[0]["caption"] == "alt 0"
    assert not InMemoryImageTextDataset(pixmo, image_size=SMALL, num_workers=0).converted_now


def test_a_changed_dataset_makes_a_new_store(pixmo: datasets.Dataset) -> None:
    base = InMemoryImageTextDataset(pixmo, image_size=SMALL, num_workers=0)
    edited = pixmo.map(lambda row: {"alt": row["alt"] + "!"})
    other = InMemoryImageTextDataset(edited, image_size=SMALL, num_workers=0)
    assert other.converted_now and other.store_path != base.store_path


def test_audio_cache(musiccaps: datasets.Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    first = InMemoryAudioTextDataset(musiccaps, max_duration=1.0, num_workers=0)
    shorter = InMemoryAudioTextDataset(musiccaps, max_duration=0.5, num_workers=0)
    assert shorter.store_path != first.store_path and shorter[0]["audio"].shape == (8000,)
    no_decoding(monkeypatch)
    again = InMemoryAudioTextDataset(musiccaps, max_duration=1.0, num_workers=0)
    assert again.store_path == first.store_path and not again.converted_now
    assert np.array_equal(again[2]["audio"], first[2]["audio"])
    with pytest.raises(AssertionError, match="cache hit"):
        InMemoryAudioTextDataset(musiccaps, max_duration=1.0, target_sr=8000, num_workers=0)


# --- placeholders -------------------------------------------------------------------


def test_image_placeholders(pixmo: datasets.Dataset) -> None:
    left_out = InMemoryImageTextDataset(pixmo, image_size=SMALL, num_workers=0)
    kept = InMemoryImageTextDataset(pixmo, image_size=SMALL, num_workers=0, keep_placeholders=True)
    assert kept.store_path == left_out.store_path and not kept.converted_now  # the same store
    assert len(kept) == IMAGES and kept.failed_indices == [DEAD_ROW]
    grey = kept[DEAD_ROW]
    assert grey["caption"] == f"photo {DEAD_ROW}" and grey["image"].size == SMALL
    assert (np.asarray(grey["image"]) == 128).all() and grey["image"].mode == "RGB"
    rows = [r for r in range(IMAGES) if r != DEAD_ROW]
    items = kept.__getitems__(rows)
    assert [i["caption"] for i in items] == [left_out[j]["caption"] for j in range(len(left_out))]
    assert np.array_equal(np.asarray(items[-1]["image"]), np.asarray(left_out[-1]["image"]))
    batch = collate_in_memory_images(kept.__getitems__([1, 2, 3]))
    assert batch["captions"] == ["photo 1", "photo 2", "photo 3"]
    head = InMemoryImageTextDataset(pixmo, max_samples=3, image_size=SMALL, num_workers=0, keep_placeholders=True)
    assert len(head) == 3 and (np.asarray(head[-1]["image"]) == 128).all()


def test_audio_placeholders(musiccaps: datasets.Dataset) -> None:
    ds = InMemoryAudioTextDataset(musiccaps, target_sr=8000, max_duration=1.0, num_workers=0, keep_placeholders=True)
    assert len(ds) == CLIPS and ds.failed_indices == [BAD_CLIP]
    silence = ds[BAD_CLIP]
    assert silence["caption"] == f"tune {BAD_CLIP}"
    assert silence["audio"].dtype == np.float32 and silence["audio"].shape == (8000,) and not silence["audio"].any()
    assert ds[BAD_CLIP + 1]["caption"] == f"tune {BAD_CLIP + 1}" and ds[BAD_CLIP + 1]["audio"].any()
