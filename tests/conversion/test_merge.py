"""``merge`` and ``TensorStoreDataset([a, b])``: stores converted from parts of one source, as one."""

from __future__ import annotations

import itertools
import json
import pickle
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from torch.utils.data import DataLoader

from tensorstore_ds import ChunkShuffleSampler, MultiStoreDataset, TensorStoreDataset, collate, open_store, verify
from tensorstore_ds.cli import main
from tensorstore_ds.conversion.api import convert
from tensorstore_ds.conversion.merge import merge
from tensorstore_ds.conversion.writer import StoreWriter
from tensorstore_ds.errors import OptionsError, OptionsMismatchError, StoreError, StoresMismatchError
from tests.httpserver import TestServer
from tests.media import write_image
from tests.stores import (
    CHUNK_BYTES,
    SIZE,
    assert_same_items,
    assert_same_values,
    batch_items,
    snapshot,
    tree_bytes,
)

ROWS = 13
BAD = {4: "img/missing-4.png", 9: "img/missing-9.png"}
OPTIONS: dict[str, Any] = {
    "image_column": "image",
    "keep_columns": ["meta"],
    "image_size": SIZE,
    "chunk_mb": CHUNK_BYTES / 2**20,
    "workers": 0,
    "progress": False,
}
SPLITS = {"halves": [7], "thirds": [3, 8]}
FIELDS = ["image", "caption", "captions", "meta", "image_size"]


@dataclass
class Stores:
    root: Path
    whole: Path
    parts: dict[str, list[Path]]


def write_source(root: Path) -> pa.Table:
    names = []
    for i in range(ROWS):
        if i in BAD:
            names.append(BAD[i])
        else:
            write_image(root / "img" / f"{i}.png", SIZE + i, SIZE, seed=i)
            names.append(f"img/{i}.png")
    return pa.table(
        {
            "image": names,
            "caption": [[f"cap {i}", f"alt {i} é"] for i in range(ROWS)],
            "meta": [{"id": i, "tag": "x" * (i % 3)} for i in range(ROWS)],
        }
    )


def convert_parts(root: Path, table: pa.Table, name: str, cuts: list[int], **options: Any) -> list[Path]:
    """Write the table split at ``cuts`` into Parquet files next to the images and convert each one."""
    bounds = [0, *cuts, ROWS]
    stores = []
    for k, (start, stop) in enumerate(itertools.pairwise(bounds)):
        source = root / f"{name}-{k}.parquet"
        pq.write_table(table.slice(start, stop - start), source)
        convert(str(source), root / f"{name}-{k}", **{**OPTIONS, **options})
        stores.append(root / f"{name}-{k}")
    return stores


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stores]:
    import datasets

    root = tmp_path_factory.mktemp("merge")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", str(root / "hf-cache"))
        mp.setenv("HF_DATASETS_OFFLINE", "1")
        table = write_source(root)
        pq.write_table(table, root / "whole.parquet")
        convert(str(root / "whole.parquet"), root / "whole", **OPTIONS)
        parts = {name: convert_parts(root, table, name, cuts) for name, cuts in SPLITS.items()}
        yield Stores(root, root / "whole", parts)


def without_manifest(root: Path) -> dict[str, bytes]:
    files = tree_bytes(root)
    files.pop("manifest.json")
    return files


def assert_equals_whole(merged: Path, whole: Path) -> None:
    """The same files as converting the whole; the same manifest but for its source and creation time."""
    assert without_manifest(merged) == without_manifest(whole)
    a, b = (json.loads((p / "manifest.json").read_bytes()) for p in (merged, whole))
    for key in ("arrays", "text", "options", "counts", "files", "num_samples", "format_version"):
        assert a[key] == b[key], key
    assert a["source"]["kind"] == "merged" and len(a["source"]["parts"]) >= 2
    assert verify(merged, progress=False).ok
    assert_same_values(snapshot(open_store(merged)), snapshot(open_store(whole)))


@pytest.mark.parametrize("split", sorted(SPLITS))
def test_merged_parts_equal_the_whole(stores: Stores, tmp_path: Path, split: str) -> None:
    whole = open_store(stores.whole)
    assert whole.manifest.counts["failed"] == 2 and [f["row"] for f in whole.failures()] == sorted(BAD)
    last = open_store(stores.parts[split][-1])
    assert last.array("source_row")[0] < len(whole) // 2  # each part numbers its rows from 0
    manifest = merge(tmp_path / "merged", stores.parts[split], progress=False)
    assert manifest.counts == whole.manifest.counts
    assert_equals_whole(tmp_path / "merged", stores.whole)
    merged = open_store(tmp_path / "merged")
    assert merged.array("source_row")[:].tolist() == [r for r in range(ROWS) if r not in BAD]
    assert [(f["row"], f["key"]) for f in merged.failures()] == sorted(BAD.items())


def test_merge_command(stores: Stores, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "merged"
    assert main(["merge", str(out), *map(str, stores.parts["halves"]), "--quiet"]) == 0
    assert "11 samples converted, 2 failed" in capsys.readouterr().out
    assert_equals_whole(out, stores.whole)


def test_interrupted_merge_resumes(stores: Stores, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    add, calls = StoreWriter.add, {"n": 0}

    def failing_add(self: StoreWriter, *args: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt
        add(self, *args)

    monkeypatch.setattr(StoreWriter, "add", failing_add)
    out = tmp_path / "merged"
    with pytest.raises(KeyboardInterrupt):
        merge(out, stores.parts["thirds"], progress=False)
    assert not (out / "manifest.json").exists()
    monkeypatch.setattr(StoreWriter, "add", add)
    merge(out, stores.parts["thirds"], progress=False)
    assert_equals_whole(out, stores.whole)


def test_merge_refuses_different_options(stores: Stores, tmp_path: Path) -> None:
    import datasets

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", str(stores.root / "hf-cache"))
        padded = convert_parts(stores.root, pq.read_table(stores.root / "whole.parquet"), "padded", [7], resize="pad")
    first = stores.parts["halves"][0]
    with pytest.raises(
        StoresMismatchError, match=re.escape(f"stores {first} and {padded[1]} differ in resize: 'squash' and 'pad'")
    ) as info:
        merge(tmp_path / "merged", [first, padded[1]], progress=False)
    assert isinstance(info.value, OptionsMismatchError)
    assert not (tmp_path / "merged").exists()
    with pytest.raises(OptionsError):
        merge(tmp_path / "merged", [], progress=False)


def test_merge_refuses_a_foreign_directory(stores: Stores, tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not empty"):
        merge(out, stores.parts["halves"], progress=False)


# --- several stores served as one -------------------------------------------------------------


def all_items(ds: Any, indices: list[int]) -> list[dict[str, Any]]:
    return batch_items(ds, indices, index=False)


@pytest.fixture(scope="module")
def merged(stores: Stores, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("merged") / "store"
    merge(out, stores.parts["thirds"], progress=False)
    return out


@pytest.mark.parametrize("mode", ["ram", "paged"])
def test_several_stores_serve_like_the_merged_one(stores: Stores, merged: Path, mode: str) -> None:
    budget = "1GiB" if mode == "ram" else str(3 * CHUNK_BYTES)
    multi = MultiStoreDataset(stores.parts["thirds"], fields=FIELDS, mode=mode, memory_budget=budget, progress=False)
    single = TensorStoreDataset(merged, fields=FIELDS, mode="ram", progress=False)
    assert isinstance(multi, MultiStoreDataset) and isinstance(multi, TensorStoreDataset)
    listed = TensorStoreDataset(stores.parts["thirds"], fields=FIELDS, mode=mode, memory_budget=budget, progress=False)
    assert listed.mode == mode and len(listed) == len(multi)
    for indices in (list(range(len(single))), [10, 0, 5, -1, 3, 3, 7]):
        assert_same_items(all_items(listed, indices), all_items(multi, indices))
    assert multi.mode == mode and len(multi) == len(single) == ROWS - len(BAD)
    assert repr(multi).startswith("MultiStoreDataset([")
    order = list(range(len(single)))
    assert_same_items(all_items(multi, order), all_items(single, order))
    batch = [10, 0, 5, -1, 3, 3, 7]
    assert_same_items(all_items(multi, batch), all_items(single, batch))
    assert_same_items([multi[4]], [single[4]])  # type: ignore[list-item]
    with pytest.raises(IndexError):
        multi[len(multi)]
    clone = pickle.loads(pickle.dumps(multi))
    assert_same_items(all_items(clone, batch), all_items(single, batch))


def test_several_stores_through_a_dataloader(stores: Stores, merged: Path) -> None:
    multi = TensorStoreDataset(stores.parts["halves"], mode="paged", memory_budget=str(2 * CHUNK_BYTES), progress=False)
    single = open_store(merged)
    assert multi.chunk_rows == 4 and multi.chunk_bytes == 4 * SIZE * SIZE * 3
    sampler = ChunkShuffleSampler(multi, seed=3)
    loader = DataLoader(
        multi, batch_size=3, sampler=sampler, collate_fn=collate, num_workers=2, multiprocessing_context="fork"
    )
    seen = []
    for batch in loader:
        for i, index in enumerate(batch["index"].tolist()):
            seen.append(index)
            np.testing.assert_array_equal(batch["image"][i].permute(1, 2, 0).numpy(), single.array("images")[index])
            assert batch["caption"][i] == single.captions[index]
    assert sorted(seen) == list(range(len(single)))


def test_local_and_remote_stores_together(
    stores: Stores, merged: Path, http_server: TestServer, tmp_path: Path
) -> None:
    first, second = stores.parts["halves"]
    http_server.serve_dir(second, "/second/")
    multi = TensorStoreDataset(
        [first, http_server.url_for("/second")],
        fields=FIELDS,
        mode="paged",
        memory_budget="1MiB",
        progress=False,
        cache_dir=tmp_path / "cache",
    )
    single = TensorStoreDataset(merged, fields=FIELDS, mode="ram", progress=False)
    order = list(range(len(single)))
    assert_same_items(all_items(multi, order), all_items(single, order))


def test_stores_of_different_layouts_cannot_be_served_together(stores: Stores, tmp_path: Path) -> None:
    import datasets

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", str(stores.root / "hf-cache"))
        bigger = convert_parts(
            stores.root, pq.read_table(stores.root / "whole.parquet"), "bigger", [7], image_size=SIZE + 8
        )
    first = stores.parts["halves"][0]
    with pytest.raises(
        StoresMismatchError,
        match=re.escape(
            f"stores {first} and {bigger[0]} differ in the rows of 'images': 'uint8[16, 16, 3]' and 'uint8[24, 24, 3]'"
        ),
    ):
        TensorStoreDataset([first, bigger[0]], progress=False)
    with pytest.raises(OptionsError):
        TensorStoreDataset([], progress=False)


def test_merge_stores_at_urls(
    stores: Stores, tmp_path: Path, http_server: TestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TENSORSTORE_DS_CACHE", str(tmp_path / "cache"))
    first, second = stores.parts["halves"]
    http_server.serve_dir(second, "/second/")
    merge(tmp_path / "merged", [first, http_server.url_for("/second")], progress=False)
    assert_equals_whole(tmp_path / "merged", stores.whole)
