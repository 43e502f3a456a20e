"""Damaged stores: every kind of damage gives a clear error naming the file, and verify names it.

Each :class:`Damage` is applied to a fresh copy of one converted store. Opening
must either refuse with our own error naming the damaged file, or (for damage
that only a checksum can see, such as a flipped bit in a chunk) open and let
``tensorstore_ds.verify`` name the file. Reading a damaged text value raises
our own error too. ``check_damage`` is shared with tools/hardening_report.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tensorstore_ds import open_store, verify
from tensorstore_ds.conversion.api import convert
from tensorstore_ds.errors import (
    StoreError,
    StoreFormatError,
    StoreIncompleteError,
    StoreNotFoundError,
    StoreWriteError,
    TensorStoreDSError,
)
from tensorstore_ds.format.manifest import FAILURES, MANIFEST, WORK_DIR
from tests.media import image_bytes, write_image

SIZE = 8
CHUNK = "images/c/1/0/0/0"  # the second of three image chunks (2 rows each, 5 samples)


def make_store(root: Path) -> Path:
    """A finished store: 5 images in 3 chunks, list captions, a kept column, 2 failures."""
    images = [image_bytes(12, 10, seed=i) for i in range(7)]
    images[2] = b"not an image"
    rows = {
        "image": images,
        "caption": [[f"caption {i}", f"alt {i} é"] for i in range(7)],
        "meta": [{"i": i} for i in range(7)],
    }
    rows["caption"][5] = []
    convert(
        datasets.Dataset.from_dict(rows),
        root,
        image_column="image",
        image_size=SIZE,
        keep_columns=("meta",),
        chunk_mb=2 * SIZE * SIZE * 3 / 2**20,
        workers=0,
        progress=False,
    )
    return root


# --- damages ---------------------------------------------------------------------------------------------


def edit_json(path: Path, change: Callable[[Any], Any]) -> None:
    doc = json.loads(path.read_bytes())
    change(doc)
    path.write_text(json.dumps(doc))


def manifest_edit(change: Callable[[dict[str, Any]], Any], named: str = MANIFEST) -> Callable[[Path, Path], str]:
    """Edit the manifest; ``named`` is the file the error names (the one that disagrees with it)."""

    def apply(store: Path, scratch: Path) -> str:
        edit_json(store / MANIFEST, change)
        return named

    return apply


def flip(name: str, offset: int = 3, mask: int = 0x80) -> Callable[[Path, Path], str]:
    def apply(store: Path, scratch: Path) -> str:
        data = bytearray((store / name).read_bytes())
        data[offset % len(data)] ^= mask
        (store / name).write_bytes(bytes(data))
        return name

    return apply


def remove(name: str) -> Callable[[Path, Path], str]:
    def apply(store: Path, scratch: Path) -> str:
        (store / name).unlink()
        return name

    return apply


def truncate(name: str, by: int = 1) -> Callable[[Path, Path], str]:
    def apply(store: Path, scratch: Path) -> str:
        os.truncate(store / name, (store / name).stat().st_size - by)
        return name

    return apply


def extend(name: str) -> Callable[[Path, Path], str]:
    def apply(store: Path, scratch: Path) -> str:
        with open(store / name, "ab") as f:
            f.write(b"\0" * 7)
        return name

    return apply


def replace(name: str, data: bytes | Callable[[bytes], bytes]) -> Callable[[Path, Path], str]:
    def apply(store: Path, scratch: Path) -> str:
        old = (store / name).read_bytes()
        (store / name).write_bytes(data(old) if callable(data) else data)
        return name

    return apply


def sparse(name: str, size: int) -> Callable[[Path, Path], str]:
    """Replace ``name`` by a sparse file of ``size`` bytes (no disk used)."""

    def apply(store: Path, scratch: Path) -> str:
        with open(store / name, "r+b") as f:
            f.seek(size - 1)
            f.write(b"}")
        return name

    return apply


def symlink_outside(name: str, named: str | None = None) -> Callable[[Path, Path], str]:
    """Move ``name`` (a file or directory) out of the store and leave a symlink to it."""

    def apply(store: Path, scratch: Path) -> str:
        outside = scratch / "outside" / name.replace("/", "_")
        outside.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(store / name, outside)
        (store / name).symlink_to(outside, target_is_directory=outside.is_dir())
        return named or name

    return apply


def special(name: str, kind: str) -> Callable[[Path, Path], str]:
    """Replace a file by a directory or a FIFO (which would block a reader forever)."""

    def apply(store: Path, scratch: Path) -> str:
        (store / name).unlink()
        os.mkdir(store / name) if kind == "dir" else os.mkfifo(store / name)
        return name

    return apply


PER_SAMPLE = ("image_size", "images", "source_row")


def more_samples(store: Path, scratch: Path) -> str:
    """Manifest and every zarr.json agree on 8 samples; the chunk files hold 5."""
    edit_json(
        store / MANIFEST,
        lambda d: [d.update(num_samples=8)] + [d["arrays"][a]["shape"].__setitem__(0, 8) for a in PER_SAMPLE] and None,
    )
    for name in PER_SAMPLE:
        edit_json(store / name / "zarr.json", lambda d: d["shape"].__setitem__(0, 8))
    return "image_size/c/1/0"  # image_size (checked first) has 5 rows a chunk: a second chunk is missing


def unfinished(store: Path, scratch: Path) -> str:
    (store / MANIFEST).unlink()
    (store / WORK_DIR).mkdir()
    (store / WORK_DIR / "state.json").write_text(json.dumps({"converted": 4}))
    return MANIFEST


def caption(store: Any) -> Any:
    return store.captions.take(range(len(store)))


def captions(store: Any) -> Any:
    return store.text("captions").take(range(len(store)))


def offsets_read(store: Any) -> Any:
    return store.captions[0]


def failures_read(store: Any) -> Any:
    return store.failures()


@dataclass
class Damage:
    """One kind of damage and what must happen.

    Parameters
    ----------
    name, apply
        What it is; ``apply(store, scratch)`` damages the store and returns the
        store-relative name of the file the errors must name.
    refused
        A regex the error of ``open_store`` must match, or None when the store
        opens (damage that only checksums reveal).
    error
        The error class ``open_store`` raises.
    verify
        The problem kind ``verify`` must report for the file, or ``"raises"``
        when ``verify`` must raise ``error`` too (no usable manifest).
    read
        For a store that opens: a read that must raise StoreFormatError.
    fix
        When a file we may not edit needs a fix: what (the test is an xfail).
    """

    name: str
    apply: Callable[[Path, Path], str]
    refused: str | None
    verify: str
    error: type[Exception] = StoreFormatError
    read: Callable[[Any], Any] | None = None
    fix: str | None = None


MANIFEST_DAMAGES = [
    Damage("manifest: newer format version", manifest_edit(lambda d: d.update(format_version=2)), "newer", "raises"),
    Damage("manifest: version 0", manifest_edit(lambda d: d.update(format_version=0)), "format_version", "raises"),
    Damage(
        "manifest: version as a string",
        manifest_edit(lambda d: d.update(format_version="1")),
        "format_version",
        "raises",
    ),
    Damage(
        "manifest: version true", manifest_edit(lambda d: d.update(format_version=True)), "format_version", "raises"
    ),
    Damage(
        "manifest: not a tensorstore_ds manifest",
        manifest_edit(lambda d: d.update(format="zarr")),
        "not a tensorstore_ds manifest",
        "raises",
    ),
    Damage("manifest: truncated", truncate(MANIFEST, 40), "not valid JSON", "raises"),
    Damage("manifest: empty", replace(MANIFEST, b""), "not valid JSON", "raises"),
    Damage("manifest: not UTF-8", replace(MANIFEST, b"\xff\xfe{}"), "not valid JSON", "raises"),
    Damage("manifest: bit flip", flip(MANIFEST, 0, 0x01), "not valid JSON", "raises"),
    Damage("manifest: nested 100000 deep", replace(MANIFEST, b"[" * 100_000), "not valid JSON", "raises"),
    Damage("manifest: 65 MiB (sparse)", sparse(MANIFEST, 65 * 2**20), "more than any store writes", "raises"),
    Damage(
        "manifest: Infinity samples",
        replace(MANIFEST, lambda b: re.sub(rb'"num_samples": \d+', b'"num_samples": Infinity', b)),
        "num_samples",
        "raises",
    ),
    Damage("manifest: 10**30 samples", manifest_edit(lambda d: d.update(num_samples=10**30)), "num_samples", "raises"),
    Damage(
        "manifest: shape [10**15, ...]",
        manifest_edit(lambda d: d["arrays"]["images"].update(shape=[10**15, SIZE, SIZE, 3])),
        "absurd",
        "raises",
    ),
    Damage(
        "manifest: chunk_rows 2**40",
        manifest_edit(lambda d: d["arrays"]["images"].update(chunk_rows=2**40)),
        "absurd",
        "raises",
    ),
    Damage(
        "manifest: negative shape",
        manifest_edit(lambda d: d["arrays"]["images"].update(shape=[-5, 8, 8, 3])),
        "invalid entry",
        "raises",
    ),
    Damage(
        "manifest: fractional shape",
        manifest_edit(lambda d: d["arrays"]["images"].update(shape=[5.5, 8, 8, 3])),
        "invalid entry",
        "raises",
    ),
    Damage(
        "manifest: shape disagrees with the files (rows)",
        manifest_edit(lambda d: d["arrays"]["images"].update(shape=[4, SIZE, SIZE, 3]), "images/zarr.json"),
        "4 rows, the store has 5 samples",
        "inconsistent",
    ),
    Damage(
        "manifest: shape disagrees with zarr.json",
        manifest_edit(
            lambda d: [d.update(num_samples=6)] + [d["arrays"][a]["shape"].__setitem__(0, 6) for a in PER_SAMPLE],
            "image_size/zarr.json",
        ),
        "shape is",
        "inconsistent",
    ),
    Damage(
        "manifest and zarr.json agree, the chunk files do not", more_samples, "chunk file is missing", "inconsistent"
    ),
    Damage(
        "manifest: array path ../x",
        manifest_edit(lambda d: d["arrays"].update({"../x": d["arrays"]["images"]})),
        "not a safe store-relative path",
        "raises",
    ),
    Damage(
        "manifest: array path /etc/x",
        manifest_edit(lambda d: d["arrays"].update({"/etc/x": d["arrays"]["images"]})),
        "not a safe store-relative path",
        "raises",
    ),
    Damage(
        "manifest: text column ../../x",
        manifest_edit(lambda d: d["text"].update({"../../x": {"encoding": "json"}})),
        "not a safe store-relative path",
        "raises",
    ),
    Damage(
        "manifest: files entry /etc/passwd",
        manifest_edit(lambda d: d["files"].update({"/etc/passwd": {"size": 1, "sha256": "0" * 64}})),
        "not a safe store-relative path",
        "raises",
    ),
    Damage(
        "manifest: files entry without a size",
        manifest_edit(lambda d: d["files"][CHUNK].pop("size")),
        "not a size and a sha256",
        "raises",
    ),
    Damage(
        "manifest: files is a list",
        manifest_edit(lambda d: d.update(files=list(d["files"]))),
        "files is list",
        "raises",
    ),
    Damage("manifest: options is a list", manifest_edit(lambda d: d.update(options=[])), "options is list", "raises"),
    Damage("manifest: symlink to a manifest outside", symlink_outside(MANIFEST), "outside the store", "raises"),
    Damage("unfinished conversion", unfinished, "unfinished", "raises", error=StoreIncompleteError),
    Damage(
        "store directory missing",
        lambda store, scratch: shutil.rmtree(store) or MANIFEST,
        "does not exist",
        "raises",
        error=StoreNotFoundError,
    ),
]

FILE_DAMAGES = [
    Damage("chunk file missing", remove(CHUNK), "chunk file is missing", "missing"),
    Damage("chunk file truncated", truncate(CHUNK), "truncated", "truncated"),
    Damage("chunk file extended", extend(CHUNK), "longer than the format allows", "extended"),
    Damage("chunk file bit flip (only checksums see it)", flip(CHUNK), None, "altered"),
    Damage("chunk replaced by a directory", special(CHUNK, "dir"), "not a regular file", "irregular"),
    Damage("chunk replaced by a FIFO", special(CHUNK, "fifo"), "not a regular file", "irregular"),
    Damage("chunk symlinked outside the store", symlink_outside(CHUNK), "not a regular file", "irregular"),
    Damage("small array truncated", truncate("source_row/c/0"), "truncated", "truncated"),
    Damage("caption bytes: invalid UTF-8", flip("text/caption/bytes/c/0", 0, 0xC0), None, "altered", read=caption),
    Damage(
        "captions JSON damaged",
        replace("text/captions/bytes/c/0", lambda b: b"{" + b[1:]),
        None,
        "altered",
        read=captions,
    ),
    Damage(
        "caption offsets not increasing",
        replace("text/caption/offsets/c/0", lambda b: b[:8] + b"\xff" * 8 + b[16:]),
        None,
        "altered",
        read=offsets_read,
    ),
    Damage(
        "caption offsets past the bytes",
        replace("text/caption/offsets/c/0", lambda b: b[:-8] + b"\xff" * 7 + b"\x00"),
        None,
        "altered",
        read=offsets_read,
    ),
    Damage("array metadata missing", remove("images/zarr.json"), "metadata of array 'images' is missing", "missing"),
    Damage("array metadata not JSON", replace("images/zarr.json", b"{not json"), "not valid JSON", "truncated"),
    Damage(
        "array metadata disagrees (dtype)",
        replace("images/zarr.json", lambda b: b.replace(b'"uint8"', b'"int8"')),
        "data_type",
        "truncated",
    ),
    Damage(
        "array metadata with a compressor",
        replace("images/zarr.json", lambda b: b.replace(b'"codecs": [', b'"codecs": [{"name": "gzip"}, ')),
        "codecs",
        "extended",
    ),
    Damage("array metadata bit flip", flip("images/zarr.json", 40, 0x01), "not valid JSON|is", "altered"),
    Damage("failures.jsonl missing (only checksums see it)", remove(FAILURES), None, "missing"),
    Damage(
        "unknown file added",
        lambda store, scratch: (store / "images" / "extra.bin").write_bytes(b"x") and "images/extra.bin",
        None,
        "unexpected",
    ),
    Damage(
        "array metadata nested 100000 deep", replace("images/zarr.json", b"[" * 100_000), "not valid JSON", "extended"
    ),
    Damage(
        "array metadata symlinked outside the store",
        symlink_outside("images/zarr.json"),
        "outside the store",
        "irregular",
    ),
    Damage(
        "array directory symlinked outside the store",
        symlink_outside("images", "images/zarr.json"),
        "outside the store",
        "irregular",
    ),
    Damage(
        "failures.jsonl damaged",
        replace(FAILURES, lambda b: b[:10] + b"\x00" + b[11:]),
        None,
        "altered",
        read=failures_read,
    ),
]

DAMAGES = MANIFEST_DAMAGES + FILE_DAMAGES


def check_damage(pristine: Path, scratch: Path, damage: Damage) -> tuple[list[str], list[str]]:
    """Damage a copy of ``pristine`` and check every promise; return (problems, foreign crashes)."""
    store = scratch / "store"
    shutil.copytree(pristine, store, symlinks=True)
    problems: list[str] = []
    foreign: list[str] = []
    name = damage.apply(store, scratch)
    target = str(store / name)

    def attempt(what: str, call: Callable[[], Any], refused: str | None) -> Any:
        try:
            result = call()
        except TensorStoreDSError as exc:
            if refused is None:
                problems.append(f"{what} raised {type(exc).__name__}: {exc}")
            elif not isinstance(exc, damage.error) or not re.search(refused, str(exc)):
                problems.append(
                    f"{what} raised {type(exc).__name__}: {exc}; expected {damage.error.__name__} matching {refused!r}"
                )
            elif isinstance(exc, StoreFormatError) and exc.path != target:
                problems.append(f"{what} names {exc.path}, not the damaged file {target}")
            return None
        except Exception as exc:
            foreign.append(f"{what} raised {type(exc).__name__}: {str(exc)[:200]}")
            return None
        if refused is not None:
            problems.append(f"{what} accepted the damaged store")
        return result

    opened = attempt("open_store", lambda: open_store(store), damage.refused)
    if opened is not None and damage.read is not None:
        try:
            damage.read(opened)
        except StoreFormatError:
            pass
        except Exception as exc:
            (problems if isinstance(exc, TensorStoreDSError) else foreign).append(
                f"reading raised {type(exc).__name__}: {str(exc)[:200]}"
            )
        else:
            problems.append("reading the damaged value succeeded")
    if opened is not None:
        opened.close()
    if damage.verify == "raises":
        attempt("verify", lambda: verify(store, progress=False), damage.refused)
    else:
        report = attempt("verify", lambda: verify(store, progress=False), None)
        if report is not None and (name, damage.verify) not in {(f, k) for f, k, _ in report.problems}:
            problems.append(f"verify did not report {damage.verify} {name}: {report.problems}")
    return problems, foreign


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pristine")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", str(root / "hf-cache"))
        store = make_store(root / "store")
    shutil.rmtree(root / "hf-cache", ignore_errors=True)
    assert verify(store, progress=False).ok and len(open_store(store)) == 5
    return store


def params() -> list[Any]:
    return [
        pytest.param(d, id=d.name, marks=[pytest.mark.xfail(strict=True, reason=d.fix)] if d.fix else [])
        for d in DAMAGES
    ]


@pytest.mark.parametrize("damage", params())
def test_damage_is_named(pristine: Path, tmp_path: Path, damage: Damage) -> None:
    problems, foreign = check_damage(pristine, tmp_path, damage)
    assert not foreign, foreign
    assert not problems, problems


def test_every_damaged_chunk_is_named_by_verify(pristine: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(pristine, store)
    flip("images/c/0/0/0/0")(store, tmp_path)
    truncate("images/c/2/0/0/0")(store, tmp_path)
    remove("image_size/c/0/0")(store, tmp_path)
    flip("text/meta/bytes/c/0")(store, tmp_path)
    problems = {(name, kind) for name, kind, _ in verify(store, progress=False).problems}
    assert problems == {
        ("images/c/0/0/0/0", "altered"),
        ("images/c/2/0/0/0", "truncated"),
        ("image_size/c/0/0", "missing"),
        ("text/meta/bytes/c/0", "altered"),
    }


def test_unknown_fields_are_ignored_for_forward_compatibility(pristine: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(pristine, store)
    edit_json(
        store / MANIFEST,
        lambda d: None,
    )
    opened = open_store(store)
    assert len(opened) == 5 and opened.captions[0] == "caption 0"
    assert verify(store, progress=False).ok  # the manifest is not among the checksummed files
    opened.close()


def test_the_dataset_refuses_damaged_and_unfinished_stores(pristine: Path, tmp_path: Path) -> None:
    from tensorstore_ds import TensorStoreDataset

    for damage, error, match in [
        (truncate(CHUNK), StoreFormatError, "truncated"),
        (unfinished, StoreIncompleteError, "unfinished"),
    ]:
        store = tmp_path / damage.__name__ / "store"
        shutil.copytree(pristine, store)
        damage(store, tmp_path)
        for mode in ("ram", "paged"):
            with pytest.raises(error, match=match):
                TensorStoreDataset(store, mode=mode, memory_budget="1GiB", progress=False)


def test_damaged_caption_through_the_dataset_is_our_error(pristine: Path, tmp_path: Path) -> None:
    from tensorstore_ds import TensorStoreDataset

    store = tmp_path / "store"
    shutil.copytree(pristine, store)
    flip("text/caption/bytes/c/0", 0, 0xC0)(store, tmp_path)
    ds = TensorStoreDataset(store, mode="paged", memory_budget="1GiB", progress=False)
    with pytest.raises(StoreFormatError, match="not valid utf-8"):
        ds[0]
    assert ds[1]["caption"] == "caption 1"  # the other values are intact
    ds.close()


def test_huge_array_metadata_is_not_read_whole(pristine: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(pristine, store)
    sparse("images/zarr.json", 128 * 2**20)(store, tmp_path)
    tracemalloc.start()
    try:
        with pytest.raises(StoreFormatError):
            open_store(store)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, f"opening allocated {peak / 2**20:.0f} MiB"


def test_reading_a_chunk_truncated_after_opening_is_an_error(pristine: Path, tmp_path: Path) -> None:
    """Checked again when a chunk is first mapped (a chunk mapped before cannot be guarded: see the report)."""
    store = tmp_path / "store"
    shutil.copytree(pristine, store)
    opened = open_store(store)
    truncate(CHUNK, 17)(store, tmp_path)
    with pytest.raises(StoreFormatError, match="changed size"):
        opened.array("images")[3]
    np.testing.assert_array_equal(opened.array("images")[0], open_store(pristine).array("images")[0])
    opened.close()


@pytest.mark.parametrize("damage", ["state not JSON", "state counts mangled", "part missing", "part not JSON"])
def test_damaged_conversion_state_is_named(tmp_path: Path, damage: str) -> None:
    """The resume state and the per-chunk parts of an unfinished conversion, damaged: a StoreError naming the
    file and saying how to start over, never a JSON traceback."""
    names = []
    for i in range(9):
        if i != 6:
            write_image(tmp_path / "img" / f"{i}.png", 10, 10, seed=i)
        names.append(f"img/{i}.png")
    src = str(tmp_path / "src.parquet")
    pq.write_table(pa.table({"image": names, "caption": [f"c{i}" for i in range(9)]}), src)
    out, options = (
        tmp_path / "out",
        {"image_size": SIZE, "chunk_mb": 2 * SIZE * SIZE * 3 / 2**20, "workers": 0, "progress": False},
    )
    with pytest.raises(TensorStoreDSError):
        convert(src, out, on_error="fail", **options)  # stops at row 6 after 3 committed chunks
    state, part = out / WORK_DIR / "state.json", out / WORK_DIR / "parts" / "00000001.json"
    damaged = {
        "state not JSON": lambda: state.write_bytes(b'{"chunks": 3, "opt'),
        "state counts mangled": lambda: edit_json(state, lambda d: d.update(converted="6")),
        "part missing": part.unlink,
        "part not JSON": lambda: part.write_bytes(b"\x00\x01"),
    }
    damaged[damage]()
    with pytest.raises(StoreError, match="is damaged.*overwrite=True") as info:
        convert(src, out, **options)
    assert str(state if damage.startswith("state") else part) in str(info.value)
    assert not isinstance(info.value, StoreWriteError)
    assert convert(src, out, overwrite=True, **options).num_samples == 8
