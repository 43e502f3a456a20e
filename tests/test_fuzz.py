"""Fuzzing the readers of untrusted bytes: the image decoder, the audio decoder, the manifest.

Each target gets arbitrary bytes and mutations of well-formed seeds (tests/hostile.py),
deterministically (``derandomize=True``), and must either return output of the
documented shape and type or raise one of our own errors, within a time bound.
"""

from __future__ import annotations

import copy
import faulthandler
import json
import math
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tensorstore_ds.conversion.columns import ColumnPlan, captions_of, clip_of, kept_of, media_of
from tensorstore_ds.conversion.decode.audio import AudioOptions, decode_audio
from tensorstore_ds.conversion.decode.image import ImageOptions, decode_image
from tensorstore_ds.errors import DecodeError, SampleError, StoreFormatError, StoreIncompleteError, TensorStoreDSError
from tensorstore_ds.format.layout import DTYPES, ArraySpec
from tensorstore_ds.format.manifest import MANIFEST, TEXT_ENCODINGS, WORK_DIR, Manifest
from tensorstore_ds.format.text import encode_value
from tests.hostile import (
    AUDIO_REASONS,
    EDITS,
    IMAGE_REASONS,
    INTERESTING,
    audio_contract,
    audio_seeds,
    bounded_seconds,
    image_contract,
    image_seeds,
    mutate,
)

# Pillow warns about the broken EXIF and TIFF tags of mutated files; the tests judge outcomes, not warnings.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning")

FUZZ = settings(
    max_examples=200,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
IMAGE = ImageOptions(size=24, max_pixels=2**22)  # bombs beyond 4 Mpx are rejected, not decoded
AUDIO = AudioOptions(sample_rate=16000, seconds=0.25)
IMAGE_SEEDS = image_seeds()
AUDIO_SEEDS = audio_seeds()


@contextmanager
def bounded(what: str, seconds: float = bounded_seconds()) -> Iterator[None]:
    """Fail when the body takes longer than ``seconds``; a C-level hang ends the run after 10x that."""
    faulthandler.dump_traceback_later(10 * seconds, exit=True)
    start = time.monotonic()
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
    elapsed = time.monotonic() - start
    assert elapsed < seconds, f"{what} took {elapsed:.1f} s (bound {seconds} s)"


edits = st.lists(
    st.tuples(st.sampled_from(EDITS), st.integers(0, 2**16), st.sampled_from(INTERESTING) | st.integers(0, 2**32 - 1)),
    min_size=1,
    max_size=4,
)


def mutated(seeds: dict[str, bytes]) -> st.SearchStrategy[bytes]:
    return st.builds(lambda name, e: mutate(seeds[name], e), st.sampled_from(sorted(seeds)), edits)


# --- the image decoder --------------------------------------------------------------------------------------


def check_image(source: Any) -> None:
    with bounded("decode_image"):
        try:
            result = decode_image(source, IMAGE)
        except DecodeError as exc:
            assert exc.reason in IMAGE_REASONS and exc.detail
            return
    problem = image_contract(result, IMAGE.size)
    assert problem is None, problem


@FUZZ
@given(st.binary(max_size=512) | mutated(IMAGE_SEEDS))
def test_image_decoder_on_bytes_and_files(data: bytes) -> None:
    check_image(data)
    with tempfile.NamedTemporaryFile(suffix=".png") as f:
        f.write(data)
        f.flush()
        check_image(f.name)


image_arrays = hnp.arrays(
    st.sampled_from([np.uint8, np.uint16, np.int32, np.float32, np.float64, np.bool_]),
    hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=9),
)


@FUZZ
@given(image_arrays)
def test_image_decoder_on_arrays(array: np.ndarray) -> None:
    check_image(array)


# --- the audio decoder --------------------------------------------------------------------------------------

finite_or_not = st.floats(allow_nan=True, allow_infinity=True, width=32)
clips = st.none() | st.tuples(st.none() | finite_or_not, st.none() | finite_or_not)


def check_audio(source: Any, clip: Any) -> None:
    with bounded("decode_audio"):
        try:
            result = decode_audio(source, AUDIO, clip)
        except DecodeError as exc:
            assert exc.reason in AUDIO_REASONS and exc.detail
            return
    problem = audio_contract(result, AUDIO)
    assert problem is None, problem


@FUZZ
@given(st.binary(max_size=512) | mutated(AUDIO_SEEDS), clips)
def test_audio_decoder_on_bytes(data: bytes, clip: Any) -> None:
    check_audio(data, clip)


audio_arrays = hnp.arrays(
    st.sampled_from([np.int16, np.int32, np.uint8, np.float32, np.float64, np.bool_, np.complex64]),
    hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=70),
)
rates = st.none() | st.integers(-5, 2**40) | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=3)


@FUZZ
@given(audio_arrays, rates, clips)
def test_audio_decoder_on_arrays(array: np.ndarray, rate: Any, clip: Any) -> None:
    check_audio({"array": array, "sampling_rate": rate}, clip)


# --- the manifest -------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


def valid_doc() -> dict[str, Any]:
    """A manifest as the writer makes it."""
    return {
        "format": "tensorstore_ds",
        "format_version": 1,
        "library_version": "0.1.0",
        "created": "2024-01-01T00:00:00Z",
        "num_samples": 5,
        "arrays": {
            "images": {"shape": [5, 4, 4, 3], "dtype": "uint8", "chunk_rows": 2},
            "source_row": {"shape": [5], "dtype": "int64", "chunk_rows": 5},
            "text/caption/bytes": {"shape": [19], "dtype": "uint8", "chunk_rows": 19},
            "text/caption/offsets": {"shape": [6], "dtype": "int64", "chunk_rows": 6},
        },
        "text": {"caption": {"encoding": "utf-8"}},
        "options": {"image_size": 4, "media": "image"},
        "source": {"kind": "test", "fingerprint": "f"},
        "counts": {"rows_read": 10, "converted": 5, "failed": 5, "failed_by_reason": {"undecodable-image": 5}},
        "files": {"images/c/0/0/0/0": {"size": 96, "sha256": "0" * 64}},
    }


@st.composite
def edited_docs(draw: st.DrawFn) -> Any:
    """A valid manifest with a few of its values (at any depth) replaced, deleted or added."""
    doc = valid_doc()
    for _ in range(draw(st.integers(1, 3))):
        parents = [(None, None, doc)]
        node: Any = doc
        while isinstance(node, (dict, list)) and node and draw(st.booleans()):
            key = draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))))
            parents.append((node, key, node[key]))
            node = node[key]
        parent, key, _ = parents[-1]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if parent is None:
            doc = draw(json_values) if action == "replace" else doc
            if action == "add" and isinstance(doc, dict):
                doc[draw(st.text(max_size=6))] = draw(json_values)
        elif action == "replace":
            parent[key] = draw(json_values | st.sampled_from([10**15, -1, 2**63, 1.5, "1", [], {}, True]))
        elif action == "delete":
            del parent[key]
        elif isinstance(parent[key], dict):
            parent[key][draw(st.text(max_size=6))] = draw(json_values)
    return doc


def check_manifest(manifest: Manifest) -> None:
    """What from_json accepts is a usable manifest."""
    assert type(manifest.num_samples) is int and 0 <= manifest.num_samples <= 2**50
    for name, spec in manifest.arrays.items():
        assert isinstance(spec, ArraySpec) and spec.dtype in DTYPES and spec.chunk_rows >= 1
        assert all(type(s) is int and s >= 0 for s in spec.shape) and spec.nbytes <= 2**50
        assert spec.chunk_bytes <= 2**34 and not name.startswith("/") and ".." not in name.split("/")
    assert all(e in TEXT_ENCODINGS for e in manifest.text.values())
    for part in (manifest.options, manifest.source, manifest.counts, manifest.files):
        assert isinstance(part, dict)
    for name, entry in manifest.files.items():
        assert isinstance(name, str) and isinstance(entry, dict)
        assert type(entry.get("size")) is int and isinstance(entry.get("sha256"), str)
    manifest.fields  # noqa: B018 - must not raise
    again = Manifest.from_json(json.loads(json.dumps(manifest.to_json())), Path("again"))
    assert again == manifest


def from_json(doc: Any) -> None:
    with bounded("Manifest.from_json", 5.0):
        try:
            manifest = Manifest.from_json(copy.deepcopy(doc), Path("fuzzed/manifest.json"))
        except StoreFormatError as exc:
            assert exc.path == "fuzzed/manifest.json"
            return
    check_manifest(manifest)


@FUZZ
@given(json_values | edited_docs())
def test_manifest_from_any_json(doc: Any) -> None:
    from_json(doc)


def test_manifest_edge_values() -> None:
    """Values hypothesis rarely combines: huge, infinite, fractional and boolean numbers."""
    for path, value in [
        (("num_samples",), 10**30),
        (("num_samples",), float("inf")),
        (("num_samples",), 5.5),
        (("num_samples",), True),
        (("format_version",), True),
        (("arrays", "images", "shape"), [10**15, 224, 224, 3]),
        (("arrays", "source_row", "shape"), [10**15]),
        (("arrays", "images", "chunk_rows"), 1e300),
        (("arrays", "images", "shape"), [5.7, 4, 4, 3]),
        (("arrays", "images", "chunk_rows"), "2"),
        (("files",), "abc"),
        (("files",), ["images/c/0/0/0/0"]),
        (("files", "x"), {"size": -1}),
        (("files", "x"), {"size": 5, "sha256": None}),
        (("options",), []),
        (("counts",), "many"),
        (("text", "caption"), "utf-8"),
        (("arrays",), []),
    ]:
        doc = valid_doc()
        target = doc
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        from_json(doc)


manifest_bytes = (
    st.binary(max_size=256)
    | st.builds(lambda e: mutate(json.dumps(valid_doc()).encode(), e), edits)
    | st.sampled_from(
        [
            b"[" * 100_000,
            b'{"a":' * 50_000,
            b"\xef\xbb\xbf{}",
            b"NaN",
            b"Infinity",
            json.dumps(valid_doc()).replace("5,", "Infinity,", 1).encode(),
        ]
    )
)


@FUZZ
@given(manifest_bytes)
def test_manifest_read_from_any_bytes(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as root:
        (Path(root) / MANIFEST).write_bytes(data)
        with bounded("Manifest.read", 5.0):
            try:
                manifest = Manifest.read(Path(root))
            except StoreFormatError as exc:
                assert exc.path == os.path.join(root, MANIFEST)
                return
        check_manifest(manifest)


@FUZZ
@given(
    st.binary(max_size=64)
    | st.sampled_from(
        [b"[" * 100_000, b'{"converted": null}', b'{"converted": [1]}', b'{"converted": 1e400}', b"[]", b'"x"']
    )
)
def test_unfinished_store_with_any_state_file(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as root:
        (Path(root) / WORK_DIR).mkdir()
        (Path(root) / WORK_DIR / "state.json").write_bytes(data)
        with pytest.raises(StoreIncompleteError, match="unfinished"):
            Manifest.read(Path(root))


# --- columns: one row's values ------------------------------------------------------------------------------

PLAN = ColumnPlan("image", "image", None, None, ("start", "end"), "caption", False, ("note",))
row_values = json_values | st.binary(max_size=16) | hnp.arrays(np.uint8, hnp.array_shapes(max_dims=3, max_side=3))


@FUZZ
@given(st.fixed_dictionaries(dict.fromkeys(("image", "caption", "start", "end", "note"), row_values)))
def test_a_row_of_any_values_is_used_or_fails_as_a_sample(row: dict[str, Any]) -> None:
    for part in (
        lambda: media_of(row, PLAN, Path("/base")),
        lambda: captions_of(row, PLAN),
        lambda: clip_of(row, PLAN),
        lambda: kept_of(row, PLAN),
    ):
        try:
            value = part()
        except SampleError as exc:
            assert exc.reason and exc.detail
            continue
        if isinstance(value, tuple):  # a clip: numbers or None
            assert all(v is None or isinstance(v, float) for v in value)
        if isinstance(value, list):  # captions: non-empty text
            assert value and all(isinstance(c, str) and c.strip() for c in value)
        if isinstance(value, dict):  # kept values: they must encode
            assert isinstance(encode_value(value, "json"), bytes)


def test_errors_are_ours() -> None:
    """The errors the targets may raise are our own."""
    assert issubclass(DecodeError, TensorStoreDSError) and issubclass(StoreFormatError, TensorStoreDSError)
    assert math.isfinite(bounded_seconds())
