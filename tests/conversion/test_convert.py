"""``convert`` end to end: URLs, captions, audio clips, failures, resumption, locking, CLI."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import zarr

from tensorstore_ds.cli import main
from tensorstore_ds.conversion.api import convert
from tensorstore_ds.conversion.decode import decode_sample
from tensorstore_ds.conversion.decode.audio import AudioOptions, decode_audio
from tensorstore_ds.conversion.decode.image import ImageOptions, decode_image
from tensorstore_ds.conversion.fetch import Fetcher, FetchOptions
from tensorstore_ds.conversion.pipeline import Pipeline, Task
from tensorstore_ds.conversion.writer import Column, Plan, StoreWriter
from tensorstore_ds.errors import (
    ColumnNotFoundError,
    OptionsError,
    OptionsMismatchError,
    SampleFailedError,
    StoreError,
    StoreIncompleteError,
    StoreLockedError,
)
from tensorstore_ds.format.manifest import WORK_DIR
from tensorstore_ds.store.store import open_store
from tests.httpserver import Response, TestServer
from tests.media import audio_bytes, audio_struct, image_bytes, write_audio, write_image
from tests.stores import store_bytes

SIZE = 16
FAST: dict[str, Any] = {"image_size": SIZE, "chunk_mb": 0.002, "workers": 0, "progress": False}  # 2 rows a chunk
ROOT = Path(__file__).resolve().parents[2]


def write_parquet(path: Path, rows: dict[str, list[Any]] | pa.Table) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(rows if isinstance(rows, pa.Table) else pa.table(rows), path)
    return str(path)


def local_images(root: Path, n: int, size: int = SIZE, bad: dict[int, str] | None = None) -> list[str]:
    """``n`` relative PNG paths under ``root/img``; rows in ``bad`` get that (missing) name instead."""
    names = []
    for i in range(n):
        if bad and i in bad:
            names.append(bad[i])
            continue
        write_image(root / "img" / f"{i}.png", size, size, seed=i)
        names.append(f"img/{i}.png")
    return names


def assert_same_store(a: Path, b: Path) -> None:
    fa, fb = store_bytes(a), store_bytes(b)
    assert sorted(fa) == sorted(fb)
    for name in fa:
        assert fa[name] == fb[name], f"{name} differs"


def dead_url() -> str:
    """A loopback URL on a port where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/gone.png"


# --- a pixmo-cap-style source of image URLs -------------------------------------------------------


def test_image_urls_with_failures(tmp_path: Path, http_server: TestServer) -> None:
    png = {i: image_bytes(SIZE + 4 * i, SIZE, seed=i) for i in range(7)}
    for i, body in png.items():
        http_server.route(f"/img/{i}.png", Response(200, body, {"Content-Type": "image/png"}))
    http_server.route("/page.html", Response(200, b"<html>moved</html>", {"Content-Type": "text/html"}))
    urls = [
        http_server.url_for("/img/0.png"),
        http_server.url_for("/missing.png"),  # 404
        http_server.url_for("/img/2.png"),
        http_server.url_for("/page.html"),  # an HTML page, not an image
        dead_url(),
        http_server.url_for("/img/5.png"),
        http_server.url_for("/img/6.png"),  # no caption: never fetched
        http_server.url_for("/img/4.png"),
    ]
    captions = ["zero", "one", "two", "three", "four", "five", None, "  "]
    src = write_parquet(tmp_path / "pixmo.parquet", {"image_url": urls, "caption": captions})
    manifest = convert(src, tmp_path / "out", retries=0, timeout=10, **FAST)

    store = open_store(tmp_path / "out")
    assert len(store) == 3 and store.media == "image"
    assert np.asarray(store.array("source_row")).tolist() == [0, 2, 5]
    want = np.stack([decode_image(png[i], ImageOptions(SIZE))[0] for i in (0, 2, 5)])
    np.testing.assert_array_equal(np.asarray(store.array("images")), want)
    assert np.asarray(store.array("image_size")).tolist() == [[SIZE, SIZE], [SIZE + 8, SIZE], [SIZE + 20, SIZE]]
    assert store.captions.take(range(3)) == ["zero", "two", "five"]

    failures = store.failures()
    assert [(f["row"], f["key"], f["reason"]) for f in failures] == [
        (1, urls[1], "http-404"),
        (3, urls[3], "not-media"),
        (4, urls[4], "connection-error"),
        (6, urls[6], "missing-caption"),
        (7, urls[7], "missing-caption"),
    ]
    assert all(f["detail"] for f in failures)
    assert manifest.counts == {
        "rows_read": 8,
        "converted": 3,
        "failed": 5,
        "failed_by_reason": {"connection-error": 1, "http-404": 1, "missing-caption": 2, "not-media": 1},
    }
    assert http_server.hits["/img/6.png"] == 0 and http_server.hits["/img/4.png"] == 0
    assert http_server.hits["/img/0.png"] == 1
    assert not (tmp_path / "out" / WORK_DIR).exists()


def test_on_error_fail_names_the_row(tmp_path: Path) -> None:
    names = local_images(tmp_path, 4, bad={2: "img/missing.png"})
    src = write_parquet(tmp_path / "src.parquet", {"image": names, "caption": list("abcd")})
    with pytest.raises(SampleFailedError, match=r"source row 2 \(img/missing.png\) failed: undecodable-image") as info:
        convert(src, tmp_path / "out", on_error="fail", **FAST)
    assert info.value.row == 2 and info.value.error.reason == "undecodable-image"
    with pytest.raises(StoreIncompleteError, match="unfinished"):
        open_store(tmp_path / "out")


# --- captions and kept columns ----------------------------------------------------------------------------


def test_list_captions_keep_all_and_serve_the_first(tmp_path: Path) -> None:
    names = local_images(tmp_path, 4)
    captions = [["a long one", "short"], ["", "   ", "only real"], [], ["solo"]]
    src = write_parquet(tmp_path / "src.parquet", {"image": names, "caption": captions})
    manifest = convert(src, tmp_path / "out", **FAST)
    assert manifest.text == {"caption": "utf-8", "captions": "json"}
    store = open_store(tmp_path / "out")
    assert store.captions.take(range(3)) == ["a long one", "only real", "solo"]
    assert store.text("captions").take(range(3)) == [["a long one", "short"], ["only real"], ["solo"]]
    assert [(f["row"], f["reason"]) for f in store.failures()] == [(2, "missing-caption")]


def test_dict_captions_use_raw(tmp_path: Path) -> None:
    names = local_images(tmp_path, 3)
    captions = [{"raw": "from raw", "lang": "en"}, {"raw": None, "lang": "en"}, {"raw": "again", "lang": "de"}]
    src = write_parquet(tmp_path / "src.parquet", {"image": names, "caption": captions})
    convert(src, tmp_path / "out", **FAST)
    store = open_store(tmp_path / "out")
    assert store.captions.take(range(2)) == ["from raw", "again"]
    assert [(f["row"], f["reason"]) for f in store.failures()] == [(1, "missing-caption")]


def test_every_unicode_plane_survives(tmp_path: Path) -> None:
    planes = "".join(chr(plane * 0x10000 + 0x4E2D) for plane in range(17))  # one code point in each plane
    text = "é中😀" + planes + '\U0010ffff\u200d\ufeff\x00\n\t"\\'
    names = local_images(tmp_path, 2)
    src = write_parquet(tmp_path / "src.parquet", {"image": names, "caption": [text, text[::-1]], "note": [text, None]})
    convert(src, tmp_path / "out", keep_columns=("note",), **FAST)
    store = open_store(tmp_path / "out")
    assert store.captions.take([0, 1]) == [text, text[::-1]]
    assert store.text("note").take([0, 1]) == [text, None]


def test_keep_columns_and_limit(tmp_path: Path) -> None:
    names = local_images(tmp_path, 5)
    src = write_parquet(
        tmp_path / "src.parquet",
        {
            "image": names,
            "caption": list("abcde"),
            "ytid": [f"id{i}" for i in range(5)],
            "aspect_list": [["x", "y"], [], ["z"], ["w"], ["v"]],
            "score": [0.5, 1.0, None, 2.0, 3.0],
        },
    )
    manifest = convert(src, tmp_path / "out", keep_columns="ytid,aspect_list,score", limit=3, **FAST)
    assert manifest.counts["rows_read"] == 3
    assert manifest.options["keep_columns"] == ["ytid", "aspect_list", "score"] and manifest.options["limit"] == 3
    store = open_store(tmp_path / "out")
    assert len(store) == 3
    assert store.text("ytid").take(range(3)) == ["id0", "id1", "id2"]
    assert store.text("aspect_list").take(range(3)) == [["x", "y"], [], ["z"]]
    assert store.text("score").take(range(3)) == [0.5, 1.0, None]
    assert sorted(store.fields) == ["aspect_list", "caption", "image_size", "images", "score", "source_row", "ytid"]


@pytest.mark.parametrize("kept", [("caption",), ("captions",), ("ytid", "ytid")])
def test_kept_column_names_that_would_collide_are_refused(tmp_path: Path, kept: tuple[str, ...]) -> None:
    names = local_images(tmp_path, 1)
    src = write_parquet(tmp_path / "src.parquet", {"image": names, "caption": ["a"], "captions": ["b"], "ytid": ["c"]})
    with pytest.raises(OptionsError, match="kept column"):
        convert(src, tmp_path / "out", keep_columns=kept, **FAST)


def test_kept_column_name_unsafe_as_a_path_is_refused(tmp_path: Path) -> None:
    ds = datasets.Dataset.from_dict({"image": [image_bytes(SIZE, SIZE)], "caption": ["a"], "../up": ["b"]})
    with pytest.raises(OptionsError, match=r"'\.\./up'"):
        convert(ds, tmp_path / "out", keep_columns=("../up",), **FAST)
    assert not (tmp_path / "up").exists()


def test_missing_columns_are_named_with_the_available_ones(tmp_path: Path) -> None:
    src = write_parquet(tmp_path / "src.parquet", {"image_url": ["http://x/a.png"], "caption": ["c"]})
    with pytest.raises(
        ColumnNotFoundError,
        match=r"caption column 'text' is not in the source; "
        r"available columns: 'image_url', 'caption'",
    ):
        convert(src, tmp_path / "out", caption_column="text", **FAST)
    with pytest.raises(ColumnNotFoundError, match="kept column 'ytid'.*'image_url', 'caption'"):
        convert(src, tmp_path / "out", keep_columns=("ytid",), **FAST)
    with pytest.raises(ColumnNotFoundError, match="image column 'url'"):
        convert(src, tmp_path / "out", image_column="url", **FAST)
    with pytest.raises(ColumnNotFoundError, match="audio_template column 'ytid'"):
        convert(src, tmp_path / "out", audio_dir=str(tmp_path), audio_template="{ytid}.wav", **FAST)
    assert not (tmp_path / "out").exists()


def test_invalid_options_fail_before_a_store_is_started(tmp_path: Path) -> None:
    src = write_parquet(tmp_path / "src.parquet", {"image": ["a.png"], "caption": ["c"]})
    for bad in ({"image_size": 0}, {"sample_rate": 0}, {"timeout": 0}, {"on_error": "ignore"}, {"chunks": 3}):
        with pytest.raises(OptionsError):
            convert(src, tmp_path / "out", **{**FAST, **bad})
    assert not (tmp_path / "out").exists()


# --- MusicCaps-style audio --------------------------------------------------------------------------------

RATE = 8000
CLIP = {"sample_rate": RATE, "audio_seconds": 1.0, "chunk_mb": 0.02, "workers": 0, "progress": False}


def musiccaps_rows() -> dict[str, list[Any]]:
    return {
        "ytid": ["aaa", "bbb", "ccc", "ddd", "eee"],
        "start_s": [1.0, 0.5, 0.0, 2.0, 9.0],
        "end_s": [1.5, 2.5, 3.0, 3.0, 10.0],
        "caption": ["calm piano", "loud drums", "whole file", "missing file", "clip past the end"],
        "aspect_list": [["piano"], ["drums", "loud"], [], [], []],
    }


CLIPS = [(1.0, 1.5), (0.5, 2.5), (0.0, 3.0)]  # of the first three rows, the ones that convert


def check_clips(out: Path, read: list[tuple[Any, tuple[float, float]]]) -> None:
    """The store holds the clip windows of the first three rows; rows 3 and 4 failed."""
    store = open_store(out)
    assert store.media == "audio" and len(store) == 3
    audio = np.asarray(store.array("audio"))
    lengths = np.asarray(store.array("audio_length")).tolist()
    assert audio.dtype == np.float16 and audio.shape == (3, RATE)
    assert lengths == [RATE // 2, RATE, RATE]  # 0.5 s; 2 s cut to 1 s; 3 s cut to 1 s
    for row, (source, clip) in enumerate(read):
        np.testing.assert_array_equal(audio[row], decode_audio(source, AudioOptions(RATE, 1.0), clip)[0])
        # Same rate, no resampling: the window is exactly the file's frames from the clip start, as float16.
        frames, _ = sf.read(source if isinstance(source, str) else io.BytesIO(source), dtype="float32")
        start, length = round(clip[0] * RATE), lengths[row]
        np.testing.assert_array_equal(audio[row, :length], frames[start : start + length].astype(np.float16))
        assert not audio[row, length:].any()
    assert store.text("aspect_list").take(range(3)) == [["piano"], ["drums", "loud"], []]
    failures = store.failures()
    assert [(f["row"], f["reason"]) for f in failures] == [(3, "undecodable-audio"), (4, "clip-out-of-range")]
    assert failures[0]["key"].endswith("ddd.wav")


def test_musiccaps_audio_dir_template_and_clips(tmp_path: Path) -> None:
    audio_dir = tmp_path / "audio"
    for i, ytid in enumerate(["aaa", "bbb", "ccc", "eee"]):  # no ddd.wav
        write_audio(audio_dir / f"{ytid}.wav", RATE, 3.0, freq=220.0 * (i + 1))
    src = write_parquet(tmp_path / "musiccaps.parquet", musiccaps_rows())
    manifest = convert(
        src,
        tmp_path / "out",
        audio_dir=str(audio_dir),
        audio_template="{ytid}.wav",
        clip_start_column="start_s",
        clip_end_column="end_s",
        keep_columns=("aspect_list",),
        caption_column="caption",
        **CLIP,
    )
    assert manifest.options["media"] == "audio" and manifest.options["media_column"] is None
    check_clips(tmp_path / "out", [(str(audio_dir / f"{y}.wav"), c) for y, c in zip(["aaa", "bbb", "ccc"], CLIPS)])


@pytest.mark.parametrize("hf_features", [True, False], ids=["Audio-feature", "plain-struct"])
def test_musiccaps_embedded_audio_column(tmp_path: Path, hf_features: bool) -> None:
    rows = musiccaps_rows()
    blobs = [audio_bytes(RATE, 3.0, freq=220.0 * (i + 1)) for i in range(3)]
    blobs += [b"not audio at all", audio_bytes(RATE, 3.0)]  # ddd: undecodable; eee: clip past the end
    table = pa.table({**rows, "audio": audio_struct([(b, f"{y}.wav") for b, y in zip(blobs, rows["ytid"])])})
    if hf_features:
        ds = datasets.Dataset(table).cast_column("audio", datasets.Audio(decode=False))
        ds.to_parquet(str(tmp_path / "embedded.parquet"))
        src = str(tmp_path / "embedded.parquet")
        loaded = datasets.load_dataset("parquet", data_files=src, split="train")
        assert type(loaded.features["audio"]).__name__ == "Audio"
    else:
        src = write_parquet(tmp_path / "embedded.parquet", table)
    convert(
        src,
        tmp_path / "out",
        audio_column="audio",
        clip_start_column="start_s",
        clip_end_column="end_s",
        keep_columns=("aspect_list",),
        **CLIP,
    )
    check_clips(tmp_path / "out", [(blobs[i], clip) for i, clip in enumerate(CLIPS)])


# --- determinism and resumption -------------------------------------------------------------------------


def test_workers_do_not_change_the_store(tmp_path: Path) -> None:
    names = local_images(tmp_path, 13, bad={4: "img/nope.png", 9: "img/nope.png"})
    captions = [f"caption {i}" for i in range(13)]
    captions[6] = ""
    src = write_parquet(tmp_path / "src.parquet", {"image": names, "caption": captions})
    convert(src, tmp_path / "w0", **FAST)
    convert(src, tmp_path / "w2", **{**FAST, "workers": 2})
    assert_same_store(tmp_path / "w0", tmp_path / "w2")
    assert len(open_store(tmp_path / "w0")) == 10


def test_default_workers_are_the_cores_this_process_may_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tensorstore_ds.conversion import run

    started: list[int] = []

    class Spy(Pipeline):
        def __init__(self, decode: Any, workers: int, *args: Any, **kwargs: Any) -> None:
            started.append(workers)
            super().__init__(decode, workers, *args, **kwargs)

    monkeypatch.setattr(run, "Pipeline", Spy)
    monkeypatch.setattr(run, "usable_cores", lambda: 1)  # a container pinned to one core of a larger machine
    src = write_parquet(tmp_path / "src.parquet", {"image": local_images(tmp_path, 3), "caption": ["a", "b", "c"]})
    convert(src, tmp_path / "out", **{**FAST, "workers": None})
    assert started == [1]


def test_resume_after_a_failed_run_and_after_a_crash_in_finish(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    names = local_images(tmp_path, 12, bad={7: "img/missing.png"})  # 11 samples: a partial last chunk
    src = write_parquet(tmp_path / "src.parquet", {"image": names, "caption": [f"c{i}" for i in range(12)]})
    convert(src, tmp_path / "ref", **FAST)

    out = tmp_path / "out"
    with pytest.raises(SampleFailedError):
        convert(src, out, on_error="fail", **FAST)  # stops at row 7 after 3 committed chunks
    state = json.loads((out / WORK_DIR / "state.json").read_bytes())
    assert state["chunks"] == 3 and state["next_row"] == 6
    with pytest.raises(StoreIncompleteError, match="after 6 samples"):
        open_store(out)

    # A crash after the tail chunk was committed, while compacting.
    real = StoreWriter._compact

    def crash(self: StoreWriter) -> Any:
        raise KeyboardInterrupt("killed while compacting")

    monkeypatch.setattr(StoreWriter, "_compact", crash)
    with pytest.raises(KeyboardInterrupt):
        convert(src, out, **FAST)  # on_error does not decide the content: resumes
    monkeypatch.setattr(StoreWriter, "_compact", real)
    manifest = convert(src, out, **FAST)
    assert manifest.counts["converted"] == 11 and manifest.counts["failed_by_reason"] == {"undecodable-image": 1}
    assert_same_store(out, tmp_path / "ref")


def test_failures_after_the_last_full_chunk_leave_no_stray_chunk(tmp_path: Path) -> None:
    names = local_images(tmp_path, 4, bad={2: "img/a.png", 3: "img/b.png"})
    src = write_parquet(tmp_path / "src.parquet", {"image": names, "caption": list("abcd")})
    convert(src, tmp_path / "out", **FAST)
    chunks = sorted(
        p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out" / "images").rglob("*") if p.is_file()
    )
    assert chunks == ["images/c/0/0/0/0", "images/zarr.json"]
    assert len(open_store(tmp_path / "out").failures()) == 2


def test_all_rows_failing_or_none_read_gives_an_empty_store(tmp_path: Path) -> None:
    src = write_parquet(tmp_path / "src.parquet", {"image": ["a.png", "b.png", "c.png"], "caption": ["a", "b", "c"]})
    manifest = convert(src, tmp_path / "failed", **FAST)
    assert manifest.counts["failed"] == 3 and manifest.num_samples == 0
    store = open_store(tmp_path / "failed")
    assert len(store) == 0 and np.asarray(store.array("images")).shape == (0, SIZE, SIZE, 3)
    assert [f["row"] for f in store.failures()] == [0, 1, 2]
    assert not [p for p in (tmp_path / "failed" / "images").rglob("*") if p.name != "zarr.json" and p.is_file()]
    manifest = convert(src, tmp_path / "none", limit=0, **FAST)
    assert manifest.counts == {"rows_read": 0, "converted": 0, "failed": 0, "failed_by_reason": {}}
    assert len(open_store(tmp_path / "none")) == 0


def committed_chunks(state: Path) -> int:
    try:
        return int(json.loads(state.read_bytes())["chunks"])
    except (OSError, ValueError, KeyError):
        return 0


def run_cli_until_done(args: list[str], env: dict[str, str], state: Path, rng: random.Random) -> int:
    """Run the CLI, SIGKILLing it at random moments after it committed chunks; return the kills."""
    kills = 0
    for attempt in range(12):
        wait_for = committed_chunks(state) + rng.choice([1, 2, 3, 5, 8])
        proc = subprocess.Popen(
            [sys.executable, "-m", "tensorstore_ds", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        if attempt < 4:
            while proc.poll() is None:
                if committed_chunks(state) >= wait_for:
                    time.sleep(rng.uniform(0, 0.02))
                    break
                time.sleep(0.002)
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
        _, err = proc.communicate(timeout=120)
        if proc.returncode == 0:
            return kills
        assert proc.returncode == -signal.SIGKILL, err.decode()
    raise AssertionError("the conversion never finished")


def test_sigkilled_conversion_resumes_to_the_same_store(tmp_path: Path) -> None:
    n = 300
    bad = {i: f"img/missing-{i}.png" for i in range(0, n, 37)}
    names = local_images(tmp_path, n, size=8, bad=bad)
    captions = [f"sample {i}" if i % 50 != 13 else "" for i in range(n)]
    src = write_parquet(tmp_path / "src.parquet", {"image": names, "caption": captions})
    options = {"image_size": 8, "chunk_mb": 0.0015, "workers": 0, "progress": False}  # 8 rows a chunk
    reference = convert(src, tmp_path / "ref", **options)
    assert reference.arrays["images"].num_chunks > 30

    out = tmp_path / "out"
    args = ["convert", src, str(out), "--image-size", "8", "--chunk-mb", "0.0015", "--workers", "0", "--no-progress"]
    kills = run_cli_until_done(args, dict(os.environ), out / WORK_DIR / "state.json", random.Random(1234))
    assert kills >= 1
    assert_same_store(out, tmp_path / "ref")
    store = open_store(out)
    converted = np.asarray(store.array("source_row")).tolist()
    failed = [f["row"] for f in store.failures()]
    assert sorted(converted + failed) == list(range(n))  # each row exactly once
    assert sorted(failed) == sorted(set(bad) | {i for i in range(n) if i % 50 == 13})


# --- store lifecycle --------------------------------------------------------------------------------------


def test_rerun_rules_for_unfinished_and_finished_stores(tmp_path: Path) -> None:
    names = local_images(tmp_path, 5, bad={3: "img/x.png"})
    src = write_parquet(tmp_path / "src.parquet", {"image": names, "caption": list("abcde")})
    out = tmp_path / "out"
    with pytest.raises(SampleFailedError):
        convert(src, out, on_error="fail", **FAST)
    with pytest.raises(StoreIncompleteError):
        open_store(out)
    with pytest.raises(OptionsMismatchError, match=r"image_size=16.*image_size=8"):
        convert(src, out, **{**FAST, "image_size": 8})
    other = write_parquet(tmp_path / "other.parquet", {"image": names[:2], "caption": ["x", "y"]})
    with pytest.raises(OptionsMismatchError, match="source="):
        convert(other, out, **FAST)

    manifest = convert(src, out, **{**FAST, "image_size": 8, "overwrite": True})
    assert manifest.options["image_size"] == 8 and manifest.num_samples == 4
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = convert(src, out, **{**FAST, "image_size": 8, "workers": 1})  # workers: not a content option
    assert again.to_json() == manifest.to_json()
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before  # nothing rewritten
    assert not (out / WORK_DIR).exists()
    with pytest.raises(OptionsMismatchError, match="image_size"):
        convert(src, out, **FAST)
    assert len(open_store(out)) == 4


def test_overwrite_refuses_a_foreign_directory(tmp_path: Path) -> None:
    src = write_parquet(tmp_path / "src.parquet", {"image": local_images(tmp_path, 1), "caption": ["a"]})
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.txt").write_text("precious")
    for overwrite in (False, True):
        with pytest.raises(StoreError, match="thesis.txt"):
            convert(src, tmp_path / "mine", overwrite=overwrite, **FAST)
    assert (tmp_path / "mine" / "thesis.txt").read_text() == "precious"
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["thesis.txt"]  # no work directory left behind


def test_a_second_conversion_into_the_same_store_is_locked_out(tmp_path: Path) -> None:
    src = write_parquet(tmp_path / "src.parquet", {"image": local_images(tmp_path, 2), "caption": ["a", "b"]})
    plan = Plan((Column("images", (SIZE, SIZE, 3), "uint8", True),), {"caption": "utf-8"}, 2, {}, {})
    holder = StoreWriter.open(tmp_path / "out", plan)
    try:
        with pytest.raises(StoreLockedError, match=f"process {os.getpid()}"):
            convert(src, tmp_path / "out", **FAST)
    finally:
        holder.close()
    with pytest.raises(OptionsMismatchError):  # the holder's (empty) options are recorded
        convert(src, tmp_path / "out", **FAST)
    assert convert(src, tmp_path / "out", overwrite=True, **FAST).num_samples == 2


def test_stock_zarr_reads_the_store(tmp_path: Path) -> None:
    names = local_images(tmp_path, 5)
    captions = ["first", "zweite", "третий", "第四", "🎵 fifth"]
    src = write_parquet(tmp_path / "src.parquet", {"image": names, "caption": captions})
    convert(src, tmp_path / "out", **FAST)
    store = open_store(tmp_path / "out")
    group = zarr.open_group(str(tmp_path / "out"), mode="r")
    np.testing.assert_array_equal(group["images"][:], np.asarray(store.array("images")))
    np.testing.assert_array_equal(group["image_size"][:], np.asarray(store.array("image_size")))
    offsets = group["text/caption/offsets"][:]
    data = group["text/caption/bytes"]
    assert [bytes(data[offsets[i] : offsets[i + 1]]).decode() for i in range(5)] == captions
    assert group.attrs["tensorstore_ds"]["format_version"] == 1


def test_stock_zarr_reads_float16_audio(tmp_path: Path) -> None:
    blobs = [audio_bytes(RATE, 0.5, freq=300.0 * (i + 1)) for i in range(3)]
    ds = datasets.Dataset(pa.table({"audio": audio_struct([(b, None) for b in blobs]), "caption": ["a", "b", "c"]}))
    convert(ds, tmp_path / "out", sample_rate=RATE, audio_seconds=0.25, chunk_mb=0.005, workers=0, progress=False)
    group = zarr.open_group(str(tmp_path / "out"), mode="r")
    np.testing.assert_array_equal(group["audio"][:], np.asarray(open_store(tmp_path / "out").array("audio")))
    assert group["audio_length"][:].tolist() == [RATE // 4] * 3


# --- the pipeline ---------------------------------------------------------------------------------------


def broken_decode(payload: Any, *args: Any) -> dict[str, Any]:
    raise RuntimeError("decoder bug")


def test_pipeline_keeps_order_and_reports_decoder_bugs(http_server: TestServer) -> None:
    bodies = {i: image_bytes(SIZE, SIZE, seed=i) for i in range(12)}
    for i, body in bodies.items():
        # Later URLs answer first: results must still come back in task order.
        http_server.route(f"/{i}.png", Response(200, body, {"Content-Type": "image/png"}, delay=0.01 * (12 - i)))
    args = ("image", None, ImageOptions(SIZE), AudioOptions())
    tasks = [Task(i, str(i), "url", http_server.url_for(f"/{i}.png"), args, i) for i in range(12)]
    with Pipeline(decode_sample, 0, Fetcher(FetchOptions(retries=0)), 8) as pipe:
        results = list(pipe.map(tasks))
    assert [t.row for t, _ in results] == list(range(12))
    for task, outcome in results:
        np.testing.assert_array_equal(outcome["images"], decode_image(bodies[task.row], ImageOptions(SIZE))[0])

    # A decoder bug (not a SampleError) in a fetch thread must surface, not hang map().
    def run() -> None:
        with Pipeline(broken_decode, 0, Fetcher(FetchOptions(retries=0)), 4) as pipe:
            list(pipe.map(tasks[:3]))

    caught = raised_without_hanging(run, "Pipeline.map hung on a decoder error")
    assert len(caught) == 1 and isinstance(caught[0], RuntimeError) and "decoder bug" in str(caught[0])


def raised_without_hanging(work: Callable[[], None], hung: str) -> list[BaseException]:
    """Run ``work`` in a thread that must end within 60 s (else fail with ``hung``); what it raised."""
    caught: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as exc:
            caught.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), hung
    return caught


# --- the command line -------------------------------------------------------------------------------------


def test_cli_convert_info_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    names = local_images(tmp_path, 4, bad={1: "img/gone.png"})
    src = write_parquet(tmp_path / "src.parquet", {"image": names, "caption": list("abcd"), "ytid": list("wxyz")})
    out = tmp_path / "out"
    status = main(
        [
            "convert",
            src,
            str(out),
            "--image-size",
            str(SIZE),
            "--chunk-mb",
            "0.002",
            "--workers",
            "0",
            "--keep-columns",
            "ytid",
            "--no-progress",
        ]
    )
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert f"store {out}: 3 samples converted, 1 failed" in captured.out
    assert "failed: 1 x undecodable-image" in captured.out and "failures.jsonl" in captured.out
    assert open_store(out).text("ytid").take(range(3)) == ["w", "y", "z"]

    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "samples: 3" in text and "media: image" in text and "undecodable-image: 1" in text
    assert main(["info", "--json", str(out)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["samples"] == 3 and doc["arrays"]["images"] == f"uint8[3, {SIZE}, {SIZE}, 3]"
    assert doc["options"]["keep_columns"] == ["ytid"] and doc["failed_by_reason"] == {"undecodable-image": 1}

    assert main(["convert", str(tmp_path / "nope.parquet"), str(tmp_path / "o2"), "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "tensorstore-ds convert: error: data file" in captured.err
    assert "nope.parquet does not exist" in captured.err
    assert main(["info", str(tmp_path / "nowhere")]) == 2
    assert "no tensorstore_ds store" in capsys.readouterr().err
    assert main(["convert", src, str(out), "--image-size", "0", "--no-progress"]) == 2
    assert "ImageOptions.size" in capsys.readouterr().err
