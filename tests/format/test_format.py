"""The store format: manifest validation, chunk files, names, atomic writes, the caption index."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tensorstore_ds.conversion.writer import Column, Plan, StoreWriter
from tensorstore_ds.errors import StoreFormatError, StoreIncompleteError, StoreNotFoundError
from tensorstore_ds.format import text as text_format
from tensorstore_ds.format.layout import ArraySpec, chunk_rows_for, write_json_atomic
from tensorstore_ds.format.manifest import FORMAT_VERSION, MANIFEST, WORK_DIR, Manifest, check_name
from tensorstore_ds.format.text import TextColumn, TextColumnWriter, encode_value
from tensorstore_ds.store.chunked import ChunkedArray
from tensorstore_ds.store.store import open_store

ROW = (4, 4, 3)
CAPTIONS = ["one", "two", "three", "four", "five"]


def rows(n: int) -> np.ndarray:
    return (np.arange(n * 48).reshape(n, *ROW) % 251).astype(np.uint8)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A finished store of 5 samples in chunks of 2 rows, written by the writer itself."""
    plan = Plan(
        (Column("images", ROW, "uint8", True), Column("source_row", (), "int64", False)),
        {"caption": "utf-8", "extra": "json"},
        2,
        {"image_size": 4},
        {"kind": "test", "fingerprint": "f"},
    )
    writer = StoreWriter.open(tmp_path / "store", plan)
    data = rows(5)
    for i in range(5):
        writer.add(
            i * 2, {"images": data[i], "source_row": np.int64(i * 2)}, {"caption": CAPTIONS[i], "extra": {"i": i}}
        )
        writer.add_failure(i * 2 + 1, f"key{i}", "undecodable-image", "broken")
    writer.finish({"rows_read": 10})
    writer.close()
    return tmp_path / "store"


def edit_manifest(root: Path, change: Any) -> None:
    doc = json.loads((root / MANIFEST).read_bytes())
    change(doc)
    (root / MANIFEST).write_text(json.dumps(doc))


def test_a_written_store_reads_back(store: Path) -> None:
    s = open_store(store)
    assert len(s) == 5 and s.array_names == ["images", "source_row"]
    np.testing.assert_array_equal(np.asarray(s.array("images")), rows(5))
    np.testing.assert_array_equal(s.array("images")[[4, 0, 3, 3]], rows(5)[[4, 0, 3, 3]])
    np.testing.assert_array_equal(s.array("images")[-1], rows(5)[4])
    assert np.asarray(s.array("source_row")).tolist() == [0, 2, 4, 6, 8]
    assert s.captions.take(range(5)) == CAPTIONS and s.text("extra")[3] == {"i": 3}
    assert [f["row"] for f in s.failures()] == [1, 3, 5, 7, 9]
    assert s.manifest.counts["failed_by_reason"] == {"undecodable-image": 5}
    assert sorted(p.name for p in (store / "images" / "c").iterdir()) == ["0", "1", "2"]
    assert (store / "images" / "c" / "2" / "0" / "0" / "0").stat().st_size == 2 * 48  # edge chunk at full size
    # Small arrays and text that fit one chunk get a chunk of their own size, not megabytes of padding.
    assert (store / "source_row" / "c" / "0").stat().st_size == 5 * 8
    assert (store / "text" / "caption" / "bytes" / "c" / "0").read_bytes() == "".join(CAPTIONS).encode()
    assert (store / "text" / "caption" / "offsets" / "c" / "0").stat().st_size == 6 * 8
    assert not (store / WORK_DIR).exists()
    s.close()


# --- the manifest ------------------------------------------------------------------------------------------


def test_newer_format_version_is_refused(store: Path) -> None:
    edit_manifest(store, lambda d: d.update(format_version=999))
    with pytest.raises(StoreFormatError, match="newer") as info:
        open_store(store)
    assert info.value.path == str(store / MANIFEST) and "999" in str(info.value)


@pytest.mark.parametrize("version", [0, -1, "1", None, 1.5])
def test_bad_format_version_is_refused(store: Path, version: Any) -> None:
    edit_manifest(store, lambda d: d.update(format_version=version))
    with pytest.raises(StoreFormatError, match="format_version"):
        open_store(store)


def test_manifest_that_is_not_json(store: Path) -> None:
    (store / MANIFEST).write_bytes(b'{"format": "tensorstore_ds", "arr')
    with pytest.raises(StoreFormatError, match=f"{MANIFEST}: manifest is not valid JSON"):
        open_store(store)
    (store / MANIFEST).write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(StoreFormatError, match="not valid JSON"):
        open_store(store)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda d: d.update(format="zarr"), "not a tensorstore_ds manifest"),
        (lambda d: d.pop("arrays"), "missing or mangles"),
        (lambda d: d.update(num_samples=-1), "bad num_samples"),
        (lambda d: d["text"]["caption"].update(encoding="latin-1"), "text encodings"),
        (lambda d: d["arrays"]["images"].update(dtype="complex64"), "invalid entry"),
        (lambda d: d["arrays"]["images"].update(shape=[5, 4, 4, 3], chunk_rows=0), "invalid entry"),
        (lambda d: d["arrays"]["images"].update(shape=[2**40, 4096, 4096, 3]), "absurd"),
        (lambda d: d["arrays"]["images"].update(shape=[4, 4, 4, 3]), "4 rows, the store has 5 samples"),
        (lambda d: d["arrays"].pop("text/caption/offsets"), "lacks its offsets array"),
    ],
)
def test_inconsistent_manifests_are_refused(store: Path, change: Any, match: str) -> None:
    edit_manifest(store, change)
    with pytest.raises(StoreFormatError, match=match):
        open_store(store)


def test_missing_and_unfinished_stores(tmp_path: Path, store: Path) -> None:
    with pytest.raises(StoreNotFoundError, match="does not exist"):
        open_store(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreNotFoundError, match="has no manifest.json"):
        open_store(tmp_path / "empty")
    (tmp_path / "empty" / WORK_DIR).mkdir()
    (tmp_path / "empty" / WORK_DIR / "state.json").write_text('{"converted": 42}')
    with pytest.raises(StoreIncompleteError, match="after 42 samples"):
        open_store(tmp_path / "empty")
    assert isinstance(StoreNotFoundError("x"), FileNotFoundError)


def test_manifest_round_trips(store: Path) -> None:
    manifest = Manifest.read(store)
    assert manifest.format_version == FORMAT_VERSION
    again = Manifest.from_json(json.loads(json.dumps(manifest.to_json())), store / MANIFEST)
    assert again == manifest
    assert manifest.fields == ["caption", "extra", "images", "source_row"]


# --- names -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "../x",
        "/abs",
        "a/../b",
        "a//b",
        "a/",
        "",
        ".hidden",
        "a/./b",
        "x\\..\\y",
        "images/../../etc",
        "ok/..",
        "caption\n",
        "~user",
    ],
)
def test_names_that_could_escape_the_store_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(StoreFormatError, match="not a safe store-relative path"):
        check_name(name, tmp_path)


@pytest.mark.parametrize("name", ["images", "text/caption/bytes", "aspect_list", "a.b-c_d", "0"])
def test_ordinary_names_are_accepted(tmp_path: Path, name: str) -> None:
    assert check_name(name, tmp_path) == name


@pytest.mark.parametrize(
    "where, name", [("arrays", "../x"), ("arrays", "/abs"), ("text", "../x"), ("files", "/etc/passwd")]
)
def test_manifest_names_escaping_the_store_are_refused(store: Path, where: str, name: str) -> None:
    entry = {
        "arrays": {"shape": [5], "dtype": "uint8", "chunk_rows": 5},
        "text": {"encoding": "utf-8"},
        "files": {"size": 1},
    }[where]
    edit_manifest(store, lambda d: d.setdefault(where, {}).update({name: entry}))
    with pytest.raises(StoreFormatError, match="not a safe store-relative path"):
        open_store(store)


# --- chunk files -------------------------------------------------------------------------------------------


def chunk(store: Path, k: int) -> Path:
    return store / "images" / "c" / str(k) / "0" / "0" / "0"


def test_missing_chunk_file_is_named(store: Path) -> None:
    chunk(store, 1).unlink()
    with pytest.raises(StoreFormatError, match="chunk file is missing") as info:
        open_store(store)
    assert info.value.path == str(chunk(store, 1))


def test_truncated_chunk_file_is_named(store: Path) -> None:
    os.truncate(chunk(store, 2), 95)
    with pytest.raises(StoreFormatError, match="truncated: 95 bytes, expected 96") as info:
        open_store(store)
    assert info.value.path == str(chunk(store, 2))


def test_extended_chunk_file_is_named(store: Path) -> None:
    with open(chunk(store, 0), "ab") as f:
        f.write(b"\0")
    with pytest.raises(StoreFormatError, match="longer than the format allows: 97 bytes") as info:
        open_store(store)
    assert info.value.path == str(chunk(store, 0))


def test_text_chunk_and_small_array_files_are_checked_too(store: Path) -> None:
    target = store / "text" / "caption" / "bytes" / "c" / "0"
    os.truncate(target, 3)
    with pytest.raises(StoreFormatError, match="truncated") as info:
        open_store(store)
    assert info.value.path == str(target)


def test_chunk_symlink_is_refused(store: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.write_bytes(chunk(store, 1).read_bytes())
    chunk(store, 1).unlink()
    chunk(store, 1).symlink_to(outside)
    with pytest.raises(StoreFormatError, match="not a regular file"):
        open_store(store)


def test_chunk_that_changes_size_after_opening(store: Path) -> None:
    s = open_store(store)
    os.truncate(chunk(store, 1), 10)
    with pytest.raises(StoreFormatError, match="changed size"):
        s.array("images")[2]
    s.close()


def test_missing_array_metadata(store: Path) -> None:
    (store / "source_row" / "zarr.json").unlink()
    with pytest.raises(StoreFormatError, match="metadata of array 'source_row' is missing"):
        open_store(store)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda d: d.update(shape=[6, 4, 4, 3]), r"shape is \[6, 4, 4, 3\], the manifest says \[5, 4, 4, 3\]"),
        (lambda d: d.update(data_type="int8"), "data_type is 'int8'"),
        (lambda d: d["chunk_grid"]["configuration"].update(chunk_shape=[3, 4, 4, 3]), "chunk_grid"),
        (lambda d: d.update(codecs=[{"name": "bytes"}, {"name": "gzip", "configuration": {"level": 1}}]), "codecs"),
    ],
)
def test_zarr_metadata_must_agree_with_the_manifest(store: Path, change: Any, match: str) -> None:
    meta = store / "images" / "zarr.json"
    doc = json.loads(meta.read_bytes())
    change(doc)
    meta.write_text(json.dumps(doc))
    with pytest.raises(StoreFormatError, match=match) as info:
        open_store(store)
    assert info.value.path == str(meta)
    meta.write_text("{not json")
    with pytest.raises(StoreFormatError, match="array metadata is not valid JSON"):
        open_store(store)


def test_corrupt_offsets_are_refused(store: Path) -> None:
    offsets = store / "text" / "caption" / "offsets" / "c" / "0"
    data = bytearray(offsets.read_bytes())
    data[8:16] = (100).to_bytes(8, "little")  # offsets[1] beyond offsets[2]
    offsets.write_bytes(bytes(data))
    s = open_store(store)
    with pytest.raises(StoreFormatError, match="offsets are not increasing"):
        _ = s.captions


# --- layout --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "row_bytes, target, rows",
    [
        (150528, 16 * 2**20, 104),  # 224x224x3 images in 16 MiB: 111 rounded down to a multiple of 8
        (320000, 16 * 2**20, 48),  # 10 s of 16 kHz float16 audio
        (1000, 16_000, 16),
        (1000, 15_999, 15),  # fewer than 16 rows are kept as they are
        (1000, 8_000, 8),
        (1000, 999, 1),  # a row larger than the target still gets a chunk of one row
        (0, 100, 96),
    ],
)
def test_chunk_rows_for(row_bytes: int, target: int, rows: int) -> None:
    assert chunk_rows_for(row_bytes, target) == rows


def test_array_spec_keys_and_metadata() -> None:
    spec = ArraySpec("text/caption/bytes", (10,), "uint8", 4)
    assert spec.chunk_key(2) == "text/caption/bytes/c/2" and spec.num_chunks == 3 and spec.chunk_bytes == 4
    image = ArraySpec("images", (5, 2, 2, 3), "float16", 2)
    assert image.chunk_key(1) == "images/c/1/0/0/0" and image.row_bytes == 24 and image.nbytes == 120
    meta = image.metadata()
    assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [2, 2, 2, 3]
    assert meta["codecs"] == [{"name": "bytes", "configuration": {"endian": "little"}}]
    with pytest.raises(ValueError, match="dtype"):
        ArraySpec("x", (1,), "object", 1)


def test_write_json_atomic_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "doc.json"
    write_json_atomic(target, {"b": 1, "a": [1, 2]})
    write_json_atomic(target, {"c": "é"}, fsync=False)
    assert json.loads(target.read_bytes()) == {"c": "é"}
    assert sorted(p.name for p in target.parent.iterdir()) == ["doc.json"]

    with pytest.raises(TypeError):
        write_json_atomic(target, {"x": object()})  # fails before anything is written
    (tmp_path / "sub" / "dir.json").mkdir()
    with pytest.raises(OSError):
        write_json_atomic(tmp_path / "sub" / "dir.json", {"x": 1})  # fails at the rename
    assert sorted(p.name for p in target.parent.iterdir()) == ["dir.json", "doc.json"]
    assert json.loads(target.read_bytes()) == {"c": "é"}


# --- the caption index -------------------------------------------------------------------------------------


def read_column(root: Path, name: str, encoding: str, n: int, total: int) -> TextColumn:
    data_spec, offsets_spec = text_format.text_specs(name, n, total)
    data = np.asarray(ChunkedArray(root, data_spec))
    offsets = np.asarray(ChunkedArray(root, offsets_spec))
    return TextColumn(data, offsets, encoding)


ALL_PLANES = "".join(chr(plane * 0x10000 + offset) for plane in range(17) for offset in (0x20, 0xFFFD))


@pytest.mark.parametrize("bytes_chunk", [1000, 16 * 2**20])
def test_text_column_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bytes_chunk: int) -> None:
    monkeypatch.setattr(text_format, "BYTES_CHUNK", bytes_chunk)  # small: values span chunk files
    big = ("a long caption é中😀 " * 60_000)[: 2**20]
    values = ["", "plain", ALL_PLANES, "\U0010ffff\x00\n", big, "tail"]
    writer = TextColumnWriter(tmp_path, "caption", "utf-8")
    writer.extend(values[:3])
    writer.extend(values[3:])
    total = writer.finish()
    assert total == sum(len(v.encode()) for v in values)
    column = read_column(tmp_path, "caption", "utf-8", len(values), total)
    assert len(column) == len(values) and column.take(range(len(values))) == values
    assert column[-1] == "tail" and column[-2] == big
    with pytest.raises(IndexError):
        column[len(values)]
    with pytest.raises(IndexError):
        column[-len(values) - 1]
    meta = json.loads((tmp_path / "text" / "caption" / "bytes" / "zarr.json").read_bytes())
    assert meta["attributes"] == {"encoding": "utf-8"}
    files = list((tmp_path / "text" / "caption" / "bytes" / "c").iterdir())
    assert len(files) == -(-total // bytes_chunk)


def test_json_text_column_round_trip(tmp_path: Path) -> None:
    values = [["a", "b"], {"raw": ALL_PLANES}, None, 3.5, [], "x"]
    writer = TextColumnWriter(tmp_path, "captions", "json")
    writer.extend(values)
    total = writer.finish()
    assert read_column(tmp_path, "captions", "json", len(values), total).take(range(6)) == values
    assert encode_value(ALL_PLANES, "json") == json.dumps(ALL_PLANES, ensure_ascii=False).encode()


def test_empty_text_column(tmp_path: Path) -> None:
    writer = TextColumnWriter(tmp_path, "caption", "utf-8")
    assert writer.finish() == 0
    column = read_column(tmp_path, "caption", "utf-8", 0, 0)
    assert len(column) == 0 and column.take([]) == []
