"""Fields made at serving time: the per-epoch caption choice and audio masks."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from torch.utils.data import DataLoader

import tensorstore_ds
from tensorstore_ds import ChunkShuffleSampler, TensorStoreDataset, collate, open_store
from tensorstore_ds.errors import OptionsError
from tensorstore_ds.serve.derived import pick

CLIPS, RATE, SECONDS, CHUNK_ROWS = 12, 8000, 0.25, 4
SAMPLES = int(RATE * SECONDS)


def clip(i: int) -> dict[str, Any]:
    frames = 1000 + 150 * i  # shorter and longer than SAMPLES: padded and cut
    t = np.arange(frames) / RATE
    return {"array": (0.5 * np.sin(2 * np.pi * (200 + 20 * i) * t)).tolist(), "sampling_rate": RATE}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A MusicCaps-like audio store: several captions per clip and an aspect_list kept column."""
    import datasets

    root = tmp_path_factory.mktemp("derived")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", str(root / "hf-cache"))
        source = datasets.Dataset.from_dict(
            {
                "audio": [clip(i) for i in range(CLIPS)],
                "caption": [[f"clip {i} take {k}" for k in range(1 + i % 4)] for i in range(CLIPS)],
                "aspect_list": [["calm", f"tone {i}"] for i in range(CLIPS)],
            }
        )
        tensorstore_ds.convert(
            source,
            root / "store",
            audio_column="audio",
            sample_rate=RATE,
            audio_seconds=SECONDS,
            keep_columns=["aspect_list"],
            chunk_mb=CHUNK_ROWS * SAMPLES * 2 / 2**20,
            workers=0,
            progress=False,
        )
    return root / "store"


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TENSORSTORE_DS_SHM_DIR", str(tmp_path / "shm"))
    (tmp_path / "shm").mkdir()


def captions_by_index(batches: Iterator[Any]) -> dict[int, str]:
    return {i: c for b in batches for i, c in zip(b["index"].tolist(), b["caption"])}


def epoch_captions(ds: Any, epoch: int, seed: int = 0, **loader: Any) -> dict[int, str]:
    sampler = ChunkShuffleSampler(ds, seed=seed)
    sampler.set_epoch(epoch)
    return captions_by_index(iter(DataLoader(ds, batch_size=5, sampler=sampler, collate_fn=collate, **loader)))


def test_first_is_the_default_and_the_stored_caption(store: Path) -> None:
    ds = TensorStoreDataset(store, mode="ram", progress=False)
    stored = open_store(store).text("captions")
    assert ds.fields == ["audio", "caption"]
    assert epoch_captions(ds, 3) == {i: stored[i][0] for i in range(CLIPS)}


@pytest.mark.parametrize("mode", ["ram", "paged"])
def test_random_picks_per_seed_epoch_and_sample(store: Path, mode: str) -> None:
    ds = TensorStoreDataset(store, mode=mode, memory_budget="64KiB", caption_choice="random", progress=False)
    assert ds.fields == ["audio", "caption"]  # the caption lists are read, not served
    stored = open_store(store).text("captions")
    epochs = [epoch_captions(ds, e) for e in range(4)]
    for picks in epochs:
        assert all(picks[i] in stored[i] for i in range(CLIPS))
    assert epochs[0] != epochs[1] and len({tuple(sorted(p.items())) for p in epochs}) == 4
    assert epoch_captions(ds, 2) == epochs[2]  # deterministic
    assert epoch_captions(ds, 2, seed=1) != epochs[2]
    expected = pick(0, 2, np.arange(CLIPS), np.array([len(stored[i]) for i in range(CLIPS)]))
    assert epochs[2] == {i: stored[i][int(k)] for i, k in enumerate(expected)}


def test_workers_follow_the_epoch(store: Path) -> None:
    """Persistent workers see each new epoch (the seed and epoch are in shared memory; spawned workers: in
    test_resume_loader.py)."""
    ds = TensorStoreDataset(store, mode="ram", caption_choice="random", progress=False)
    reference = [epoch_captions(ds, e) for e in range(3)]
    sampler = ChunkShuffleSampler(ds, seed=0)
    loader = DataLoader(
        ds,
        batch_size=5,
        sampler=sampler,
        collate_fn=collate,
        num_workers=2,
        persistent_workers=True,
        multiprocessing_context="fork",
    )
    for epoch in range(3):
        sampler.set_epoch(epoch)
        assert captions_by_index(iter(loader)) == reference[epoch]


def test_the_choice_survives_a_resume(store: Path) -> None:
    ds = TensorStoreDataset(store, mode="ram", caption_choice="random", progress=False)
    reference = epoch_captions(ds, 5, seed=4)
    sampler = ChunkShuffleSampler(ds, seed=4)
    sampler.set_epoch(5)
    loader = DataLoader(ds, batch_size=5, sampler=sampler, collate_fn=collate)
    before = captions_by_index(itertools.islice(iter(loader), 1))
    state = sampler.state_at(1, 5)
    ds2 = TensorStoreDataset(store, mode="ram", caption_choice="random", progress=False)
    ds2.set_epoch(0, seed=0)  # a new job starts elsewhere; the restored sampler sets seed 4, epoch 5
    sampler2 = ChunkShuffleSampler(ds2, seed=4)
    sampler2.load_state_dict(state)
    after = captions_by_index(iter(DataLoader(ds2, batch_size=5, sampler=sampler2, collate_fn=collate)))
    assert {**before, **after} == reference and len(before) == 5


def test_several_stores_pick_by_index_of_the_whole(store: Path) -> None:
    from tensorstore_ds import MultiStoreDataset

    ds = MultiStoreDataset([store, store], mode="ram", caption_choice="random", progress=False)
    stored = open_store(store).text("captions")
    counts = np.array([len(stored[i % CLIPS]) for i in range(2 * CLIPS)])
    ds.set_epoch(7, seed=2)
    got = collate(ds.__getitems__(list(range(2 * CLIPS))))["caption"]
    assert got == [stored[i % CLIPS][k] for i, k in enumerate(pick(2, 7, np.arange(2 * CLIPS), counts).tolist())]


def test_captions_and_kept_text_columns_stay_fields(store: Path) -> None:
    ds = TensorStoreDataset(
        store, fields=["caption", "captions", "aspect_list"], caption_choice="random", progress=False
    )
    assert ds.fields == ["caption", "captions", "aspect_list"]
    batch = collate(ds.__getitems__(list(range(CLIPS))))
    assert batch["aspect_list"] == [["calm", f"tone {i}"] for i in range(CLIPS)]
    assert batch["captions"] == [[f"clip {i} take {k}" for k in range(1 + i % 4)] for i in range(CLIPS)]
    assert all(c in cs for c, cs in zip(batch["caption"], batch["captions"]))


def test_bad_caption_choice() -> None:
    with pytest.raises(OptionsError, match=r"caption_choice must be one of \('first', 'random'\), not 'all'"):
        from tensorstore_ds.serve.derived import CaptionChoice

        CaptionChoice("all", ["caption"], ["caption"])


@pytest.mark.parametrize("mode", ["ram", "paged"])
def test_audio_mask_marks_the_real_audio(store: Path, mode: str) -> None:
    ds = TensorStoreDataset(store, fields=["audio", "audio_mask"], mode=mode, memory_budget="64KiB", progress=False)
    assert ds.fields == ["audio", "audio_length", "audio_mask"]
    lengths = open_store(store).array("audio_length")[:]
    assert lengths.min() < SAMPLES and lengths.max() == SAMPLES  # some clips are padded
    expected = np.arange(SAMPLES)[None, :] < lengths[:, None]
    kept = [collate(ds.__getitems__([i, (i + 5) % CLIPS])) for i in range(CLIPS)]  # kept: the ring runs out
    for i, batch in enumerate(kept):
        mask = batch["audio_mask"].numpy()
        assert mask.dtype == np.bool_ and mask.shape == (2, SAMPLES)
        np.testing.assert_array_equal(mask, expected[[i, (i + 5) % CLIPS]])
        np.testing.assert_array_equal(batch["audio_length"].numpy(), lengths[[i, (i + 5) % CLIPS]])
    items = ds.__getitems__([3]).tensors()
    np.testing.assert_array_equal(items["audio_mask"][0].numpy(), expected[3])


def test_audio_mask_from_workers(store: Path) -> None:
    ds = TensorStoreDataset(store, fields=["audio_mask"], progress=False)
    lengths = open_store(store).array("audio_length")[:]
    loader = DataLoader(ds, batch_size=4, collate_fn=collate, num_workers=2, multiprocessing_context="fork")
    for batch in loader:
        idx = batch["index"].numpy()
        np.testing.assert_array_equal(batch["audio_mask"].numpy(), np.arange(SAMPLES) < lengths[idx, None])


def test_audio_mask_needs_an_audio_store(tmp_path: Path) -> None:
    from tests.stores import build_image_store

    images = build_image_store(tmp_path / "images", n=6)
    with pytest.raises(OptionsError, match=r"audio_mask is a field of audio stores; .* holds images"):
        TensorStoreDataset(images, fields=["image", "audio_mask"], progress=False)
