"""Hostile inputs end to end: every row of three hostile corpora gets its documented outcome
through a real ``convert()`` run, good rows are all there and right, and the store verifies.

The corpora themselves (every case and its expected outcome) are in tests/hostile.py.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pytest
from PIL import EpsImagePlugin, Image

import tensorstore_ds.conversion.run
from tensorstore_ds import open_store, verify
from tensorstore_ds.conversion.api import convert
from tensorstore_ds.conversion.decode import decode_sample
from tensorstore_ds.conversion.decode.image import ImageOptions, decode_image
from tensorstore_ds.errors import ColumnNotFoundError, DecodeError, DecoderStartError, OptionsError
from tests.hostile import (
    SIZE,
    CorpusResult,
    audio_bytes_cases,
    encode,
    good_image,
    run_audio_corpus,
    run_image_file_corpus,
    run_image_url_corpus,
    write_parquet,
)
from tests.httpserver import Response, TestServer


def check(result: CorpusResult, hostile_at_least: int) -> None:
    assert not result.foreign, result.foreign
    assert not result.problems, "\n".join(result.problems)
    assert result.hostile >= hostile_at_least and result.converted + result.failed == result.rows
    assert result.lost == result.wrong == 0


def test_image_url_corpus(tmp_path: Path, http_server: TestServer) -> None:
    """404s, retries, Retry-After, timeouts, stalls, redirect loops, size limits, schemes, bad images, captions."""
    result = run_image_url_corpus(http_server, tmp_path)
    check(result, 60)
    assert http_server.hits["/loop/a"] + http_server.hits["/loop/b"] == 5  # max_redirects followed, then refused


def test_image_file_corpus(tmp_path: Path) -> None:
    """Truncated, corrupt, empty, mislabelled, bomb, extreme, CMYK, 16-bit, palette, animated, rotated files;
    bytes captions that are None, empty, not UTF-8, 1 MiB, in every plane. Decoded in a worker process."""
    check(run_image_file_corpus(tmp_path), 35)


def test_audio_corpus(tmp_path: Path) -> None:
    """Truncated FLAC/OGG/MP3/WAV, empty, text, NaN/inf, silence, 8-96 kHz, 1-8 channels, tiny clips,
    clip windows outside the recording, absurd header rates."""
    check(run_audio_corpus(tmp_path), 30)


def test_file_urls_only_when_allowed(tmp_path: Path, http_server: TestServer) -> None:
    png = good_image(3)
    (tmp_path / "local.png").write_bytes(png)
    http_server.route("/a.png", Response(200, png, {"Content-Type": "image/png"}))
    urls = [
        http_server.url_for("/a.png"),
        f"file://{tmp_path}/local.png",
        "ftp://127.0.0.1/a.png",
        f"file://{tmp_path}/missing.png",
    ]
    src = write_parquet(tmp_path / "src.parquet", {"image_url": urls, "caption": ["a", "b", "c", "d"]})
    options: dict[str, Any] = {"image_size": SIZE, "workers": 0, "progress": False, "retries": 0}
    convert(src, tmp_path / "default", **options)
    assert [(f["row"], f["reason"]) for f in open_store(tmp_path / "default").failures()] == [
        (1, "scheme-refused"),
        (2, "scheme-refused"),
        (3, "scheme-refused"),
    ]
    convert(src, tmp_path / "with-file", allow_schemes=("http", "https", "file"), **options)
    store = open_store(tmp_path / "with-file")
    assert np.asarray(store.array("source_row")).tolist() == [0, 1]
    np.testing.assert_array_equal(store.array("images")[1], decode_image(png, ImageOptions(SIZE))[0])
    assert [(f["row"], f["reason"]) for f in store.failures()] == [(2, "scheme-refused"), (3, "file-error")]
    with pytest.raises(OptionsError, match="allowed_schemes"):
        convert(src, tmp_path / "ftp", allow_schemes=("http", "ftp"), **options)
    assert not (tmp_path / "ftp").exists()


def test_a_missing_column_names_the_available_ones(tmp_path: Path) -> None:
    src = write_parquet(tmp_path / "src.parquet", {"image": ["a.png"], "caption": ["x"], "ytid": ["y"]})
    with pytest.raises(
        ColumnNotFoundError,
        match=r"caption column 'text' is not in the source; "
        r"available columns: 'image', 'caption', 'ytid'",
    ):
        convert(src, tmp_path / "out", caption_column="text", progress=False)
    with pytest.raises(ColumnNotFoundError, match=r"kept column 'nope'.*'image', 'caption', 'ytid'"):
        convert(src, tmp_path / "out", keep_columns=("nope",), progress=False)
    assert not (tmp_path / "out").exists()


def test_eps_never_runs_ghostscript(monkeypatch: pytest.MonkeyPatch) -> None:
    def ghostscript(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("Ghostscript was started on untrusted bytes")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", ghostscript)
    monkeypatch.setattr(EpsImagePlugin, "has_ghostscript", lambda: True)
    with pytest.raises(DecodeError, match="undecodable-image"):
        decode_image(encode(Image.new("RGB", (8, 8)), "EPS"), ImageOptions(SIZE))


def test_failure_details_are_the_same_in_every_run(tmp_path: Path) -> None:
    """Details of in-memory audio failures once named a BytesIO by its address: a resumed store differed."""
    blobs, _ = audio_bytes_cases()
    ds = datasets.Dataset.from_dict(
        {"audio": [{"bytes": b, "path": None} for b in blobs], "caption": [f"c{i}" for i in range(len(blobs))]}
    )
    for out in ("a", "b"):
        convert(
            ds, tmp_path / out, audio_column="audio", sample_rate=8000, audio_seconds=0.1, workers=0, progress=False
        )
    failures = [(tmp_path / out / "failures.jsonl").read_bytes() for out in ("a", "b")]
    assert failures[0] == failures[1] and b"0x" not in failures[0]
    assert len(open_store(tmp_path / "a").failures()) >= 3


# --- a decoder that crashes its process -------------------------------------------------------------------

CRASH = b"CRASH!"


def crash_or_decode(payload: Any, *args: Any) -> dict[str, Any]:
    """Kills its own process on bytes starting with CRASH (as a segfaulting decoder would)."""
    if isinstance(payload, (bytes, bytearray)) and payload.startswith(CRASH):
        os.kill(os.getpid(), signal.SIGKILL)
    return decode_sample(payload, *args)


def test_a_decoder_crash_fails_only_its_sample(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    images = [good_image(i) for i in range(24)]
    crashing = {5, 6, 17}
    for i in crashing:
        images[i] = CRASH + images[i]
    images[9] = b"not an image"
    ds = datasets.Dataset(pa.table({"image": images, "caption": [f"c{i}" for i in range(24)]}))
    monkeypatch.setattr(tensorstore_ds.conversion.run, "decode_sample", crash_or_decode)
    manifest = convert(
        ds, tmp_path / "out", image_column="image", image_size=SIZE, chunk_mb=0.002, workers=2, progress=False
    )
    store = open_store(tmp_path / "out")
    good = [i for i in range(24) if i not in crashing | {9}]
    assert np.asarray(store.array("source_row")).tolist() == good
    want = np.stack([decode_image(images[i], ImageOptions(SIZE))[0] for i in good])
    np.testing.assert_array_equal(np.asarray(store.array("images")), want)
    assert [(f["row"], f["reason"]) for f in store.failures()] == [
        (5, "decoder-crashed"),
        (6, "decoder-crashed"),
        (9, "undecodable-image"),
        (17, "decoder-crashed"),
    ]
    assert manifest.counts["failed_by_reason"] == {"decoder-crashed": 3, "undecodable-image": 1}
    assert verify(tmp_path / "out", progress=False).ok


def always_crash(payload: Any, *args: Any) -> dict[str, Any]:
    """A decoder whose process dies whatever it is given (a broken library, an unusable environment)."""
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("unreachable")


def test_decoders_that_cannot_run_stop_the_conversion_and_blame_no_sample(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only a sample that kills a working decoder is recorded; a decoder that never works is a clear error."""
    ds = datasets.Dataset(pa.table({"image": [good_image(i) for i in range(6)], "caption": ["c"] * 6}))
    monkeypatch.setattr(tensorstore_ds.conversion.run, "decode_sample", always_crash)
    with pytest.raises(DecoderStartError, match="cannot run: a fresh one failed on a known-good sample.*nothing was"):
        convert(ds, tmp_path / "out", image_column="image", image_size=SIZE, workers=2, progress=False)
    state = json.loads((tmp_path / "out" / ".convert" / "state.json").read_text())
    assert state["failed"] == 0 and state["converted"] == 0
