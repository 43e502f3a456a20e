"""WebDataset tar shards as a source: local, globbed, brace patterns and http(s), streamed.

Shards are written the way img2dataset writes them (``{shard:05d}.tar`` holding
``key.jpg``, ``key.txt`` and ``key.json`` per sample, beside a ``.parquet`` and a
``_stats.json``), and cut short in every way a download can be cut.
"""

from __future__ import annotations

import gzip
import io
import json
import sys
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tensorstore_ds.cli import main
from tensorstore_ds.conversion.api import convert
from tensorstore_ds.conversion.decode.audio import AudioOptions, decode_audio
from tensorstore_ds.conversion.decode.image import ImageOptions, decode_image
from tensorstore_ds.conversion.sources import open_source
from tensorstore_ds.conversion.webdataset import expand_braces
from tensorstore_ds.errors import SourceError
from tensorstore_ds.store.store import open_store
from tests.httpserver import Response, TestServer
from tests.media import audio_bytes, image_bytes, write_table

SIZE = 16
FAST = {"image_size": SIZE, "chunk_mb": 0.002, "workers": 0, "progress": False}
AUDIO = {"sample_rate": 8000, "audio_seconds": 0.25, "chunk_mb": 0.01, "workers": 0, "progress": False}
PER_SHARD = 3


def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime, info.uname, info.gname = len(data), 0o444, 1_700_000_000, "bigdata", "bigdata"
    tar.addfile(info, io.BytesIO(data))


def img2dataset_shard(shard: int, n: int = PER_SHARD, skip: tuple[int, ...] = ()) -> tuple[bytes, list[dict[str, Any]]]:
    """One shard as img2dataset's webdataset writer makes it; returns the tar and each written sample.

    Keys are the shard id followed by the index in the shard (``000010002``); a failed download
    (``skip``) has no files in the tar. Members come in sorted order, as webdataset's TarWriter writes them.
    """
    buf = io.BytesIO()
    samples = []
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i in range(n):
            if i in skip:
                continue
            key = f"{shard:05d}{i:04d}"
            jpg = image_bytes(SIZE, SIZE + i, seed=10 * shard + i, fmt="JPEG")
            caption = f"photo {shard}-{i}"
            meta = {
                "url": f"https://example.com/{shard}/{i}.jpg", "caption": caption, "key": key, "status": "success",
                "error_message": None, "width": SIZE + i, "height": SIZE, "original_width": 640,
                "original_height": 480, "exif": None, "sha256": f"{shard:02d}{i:062d}",
            }  # fmt: skip
            add(tar, f"{key}.jpg", jpg)
            add(tar, f"{key}.json", json.dumps(meta, indent=4).encode())
            add(tar, f"{key}.txt", caption.encode())
            samples.append({"jpg": jpg, **meta})
    return buf.getvalue(), samples


def write_img2dataset(folder: Path, shards: int = 2) -> list[dict[str, Any]]:
    """``folder/{00000..}.tar`` with img2dataset's ``.parquet`` and ``_stats.json`` beside them."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for shard in range(shards):
        data, samples = img2dataset_shard(shard, skip=(1,) if shard == 1 else ())
        (folder / f"{shard:05d}.tar").write_bytes(data)
        write_table(folder / f"{shard:05d}.parquet", {"key": [s["key"] for s in samples], "url": [s["url"] for s in samples]})  # fmt: skip
        (folder / f"{shard:05d}_stats.json").write_text(json.dumps({"count": PER_SHARD, "successes": len(samples)}))
        written += samples
    return written


def check_images(out: Path, samples: list[dict[str, Any]]) -> Any:
    store = open_store(out)
    assert len(store) == len(samples)
    want = np.stack([decode_image(s["jpg"], ImageOptions(SIZE))[0] for s in samples])
    np.testing.assert_array_equal(np.asarray(store.array("images")), want)
    assert store.captions.take(range(len(samples))) == [s["caption"] for s in samples]
    return store


# --- img2dataset output ------------------------------------------------------------------------------


def test_img2dataset_directory_converts_with_captions_and_kept_columns(tmp_path: Path) -> None:
    samples = write_img2dataset(tmp_path / "shards")
    src = open_source(tmp_path / "shards")
    assert src.kind == "webdataset" and src.num_rows is None
    assert src.columns[:2] == ["__key__", "__url__"] and {"jpg", "json", "txt", "image", "caption", "url", "key"} <= set(src.columns)  # fmt: skip
    manifest = convert(tmp_path / "shards", tmp_path / "out", keep_columns=("url", "key", "width"), **FAST)
    assert manifest.options["media_column"] == "image" and manifest.source["kind"] == "webdataset"
    store = check_images(tmp_path / "out", samples)
    assert store.failures() == []
    assert store.text("url").take(range(len(samples))) == [s["url"] for s in samples]
    assert store.text("key").take(range(len(samples))) == [s["key"] for s in samples]
    assert store.text("width").take(range(len(samples))) == [s["width"] for s in samples]


def test_img2dataset_from_the_command_line(tmp_path: Path) -> None:
    samples = write_img2dataset(tmp_path / "shards")
    argv = [
        "convert",
        str(tmp_path / "shards" / "{00000..00001}.tar"),
        str(tmp_path / "out"),
        "--image-column",
        "image",
    ]
    flags = ["--caption-column", "txt", "--keep-columns", "url,sha256", "--image-size", str(SIZE), "--workers", "0"]
    assert main([*argv, *flags, "--chunk-mb", "0.002", "--quiet"]) == 0
    store = check_images(tmp_path / "out", samples)
    assert store.text("sha256").take([0]) == [samples[0]["sha256"]]


@pytest.mark.parametrize("form", ["file", "glob", "braces", "list", "directory", "gzip"])
def test_every_way_of_naming_shards(tmp_path: Path, form: str) -> None:
    samples = write_img2dataset(tmp_path / "shards")
    d = tmp_path / "shards"
    if form == "gzip":
        for shard in sorted(d.glob("*.tar")):
            (d / f"{shard.stem}.tar.gz").write_bytes(gzip.compress(shard.read_bytes()))
            shard.unlink()
    spec: Any = {
        "file": str(d / "00001.tar"),
        "glob": str(d / "*.tar"),
        "braces": str(d / "{00000..00001}.tar"),
        "list": [d / "00000.tar", d / "00001.tar"],
        "directory": d,
        "gzip": str(d / "0000{0,1}.tar.gz"),
    }[form]
    want = samples[PER_SHARD:] if form == "file" else samples
    convert(spec, tmp_path / "out", **FAST)
    check_images(tmp_path / "out", want)


def test_brace_patterns() -> None:
    assert expand_braces("s/{00000..00002}.tar") == ["s/00000.tar", "s/00001.tar", "s/00002.tar"]
    assert expand_braces("{8..10}.tar") == ["8.tar", "9.tar", "10.tar"]
    assert expand_braces("{a,b}-{0..1}.tar") == ["a-0.tar", "a-1.tar", "b-0.tar", "b-1.tar"]
    with pytest.raises(SourceError, match=r"brace range \{5..1\} .* is not an ascending range"):
        expand_braces("{5..1}.tar")


def test_caption_from_txt_or_a_json_field_and_bad_json(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        add(tar, "a/x.png", image_bytes(SIZE, SIZE, seed=1))
        add(tar, "a/x.txt", b"from the txt")
        add(tar, "a/y.png", image_bytes(SIZE, SIZE, seed=2))
        add(tar, "a/y.txt", b"second")
        add(tar, "a/y.json", b"{not json")
        add(tar, "a/z.png", image_bytes(SIZE, SIZE, seed=3))
        add(tar, "a/z.txt", b"third")
    (tmp_path / "s.tar").write_bytes(buf.getvalue())
    src = open_source(str(tmp_path / "s.tar"))
    assert src.columns == ["__key__", "__url__", "png", "txt", "image", "caption"]
    assert [row["__key__"] for _, row in src.rows(0, None)] == ["a/x", "a/y", "a/z"]
    convert(str(tmp_path / "s.tar"), tmp_path / "out", **FAST)
    store = open_store(tmp_path / "out")
    assert store.captions.take(range(2)) == ["from the txt", "third"]
    [failure] = store.failures()
    assert failure["row"] == 1 and failure["reason"] == "bad-json"
    assert f"shard {tmp_path / 's.tar'} sample 'a/y': a/y.json is not JSON" in failure["detail"]


def test_audio_shards(tmp_path: Path) -> None:
    buf = io.BytesIO()
    blobs = []
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i, fmt in enumerate(["FLAC", "WAV", "OGG"]):
            blob = audio_bytes(8000, 0.2, freq=300.0 + 100 * i, fmt=fmt, subtype="VORBIS" if fmt == "OGG" else None)
            add(tar, f"{i:03d}.{fmt.lower()}", blob)
            add(tar, f"{i:03d}.json", json.dumps({"caption": f"tone {i}", "ytid": f"id{i}"}).encode())
            blobs.append(blob)
    (tmp_path / "audio.tar").write_bytes(buf.getvalue())
    manifest = convert(str(tmp_path / "audio.tar"), tmp_path / "out", keep_columns=("ytid",), **AUDIO)
    assert manifest.options["media"] == "audio" and manifest.options["media_column"] == "audio"
    store = open_store(tmp_path / "out")
    assert store.failures() == []
    want = np.stack([decode_audio(b, AudioOptions(8000, 0.25))[0] for b in blobs])
    np.testing.assert_array_equal(np.asarray(store.array("audio")), want)
    assert store.captions.take(range(3)) == ["tone 0", "tone 1", "tone 2"]
    assert store.text("ytid").take(range(3)) == ["id0", "id1", "id2"]


def test_audio_containers_users_download(tmp_path: Path) -> None:
    """yt-dlp's .m4a (AAC) and .webm (Opus) in shards: decoded by the PyAV fallback, read as bytes."""
    pytest.importorskip("av")
    from tests.conversion.test_audio_containers import encode

    blobs = {"m4a": encode("m4a-aac", seconds=0.5), "webm": encode("webm-opus", seconds=0.5)}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for ext, blob in blobs.items():
            add(tar, f"clip-{ext}.{ext}", blob)
            add(tar, f"clip-{ext}.txt", f"a {ext} clip".encode())
    (tmp_path / "yt.tar").write_bytes(buf.getvalue())
    convert(str(tmp_path / "yt.tar"), tmp_path / "out", audio_column="audio", **AUDIO)
    store = open_store(tmp_path / "out")
    assert store.failures() == [] and store.captions.take(range(2)) == ["a m4a clip", "a webm clip"]
    want = np.stack([decode_audio(b, AudioOptions(8000, 0.25))[0] for b in blobs.values()])
    np.testing.assert_array_equal(np.asarray(store.array("audio")), want)


# --- shards cut short ---------------------------------------------------------------------------------


def member_offsets(data: bytes) -> list[tuple[str, int, int]]:
    """(name, header offset, data offset) of every member."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [(m.name, m.offset, m.offset_data) for m in tar.getmembers()]


@pytest.mark.parametrize("where", ["in-data", "in-header", "at-a-member", "no-end-block"])
def test_truncated_shard_keeps_the_rows_before_the_cut(tmp_path: Path, where: str) -> None:
    """A cut anywhere, even one ``tarfile`` takes for the end of the archive, is a failure naming the shard."""
    samples = write_img2dataset(tmp_path / "shards")  # 3 samples in 00000.tar, 2 in 00001.tar
    first = tmp_path / "shards" / "00000.tar"
    data = first.read_bytes()
    members = member_offsets(data)
    _, header, body = members[4]  # the 2nd sample's .json
    last_end = members[-1][2] + 512  # the last member's data, padded: where the end-of-archive block starts
    cut = {"in-data": body + 10, "in-header": header + 100, "at-a-member": header, "no-end-block": last_end}
    first.write_bytes(data[: cut[where]])
    convert(tmp_path / "shards", tmp_path / "out", **FAST)
    whole = 2 if where == "no-end-block" else 1  # the sample being read at the cut is dropped
    store = check_images(tmp_path / "out", [*samples[:whole], *samples[PER_SHARD:]])
    [failure] = store.failures()
    assert failure["reason"] == "truncated-shard" and failure["row"] == whole and failure["key"] == str(first)
    assert failure["detail"].startswith(f"shard {first} breaks off after {whole} samples (")
    assert failure["detail"].endswith(f"sample '00000000{whole}', being read there, is dropped")
    assert np.asarray(store.array("source_row")).tolist() == [*range(whole), whole + 1, whole + 2]


def test_truncated_gzip_shard(tmp_path: Path) -> None:
    data, _ = img2dataset_shard(0)
    (tmp_path / "0.tar.gz").write_bytes(gzip.compress(data)[:-200])
    convert(str(tmp_path / "0.tar.gz"), tmp_path / "out", **FAST)
    store = open_store(tmp_path / "out")
    [failure] = store.failures()
    assert failure["reason"] == "truncated-shard" and f"shard {tmp_path / '0.tar.gz'} breaks off" in failure["detail"]
    assert len(store) == failure["row"] >= 1


def test_missing_and_unreadable_shards(tmp_path: Path) -> None:
    write_img2dataset(tmp_path / "shards")
    with pytest.raises(SourceError, match=r"shard .*00002.tar does not exist; check the path or pattern"):
        open_source(str(tmp_path / "shards" / "{00000..00002}.tar"))
    with pytest.raises(SourceError, match=r"no WebDataset shards match .*\*.tgz"):
        open_source(str(tmp_path / "shards" / "*.tgz"))
    (tmp_path / "junk.tar").write_bytes(b"this is not a tar archive" * 40)
    with pytest.raises(SourceError, match=r"no readable samples in the WebDataset shards .*junk.tar: shard .* is not a tar archive"):  # fmt: skip
        open_source(str(tmp_path / "junk.tar"))


# --- http(s): streamed, never downloaded whole ---------------------------------------------------------


def test_http_shards_with_a_brace_pattern(tmp_path: Path, http_server: TestServer) -> None:
    samples = write_img2dataset(tmp_path / "shards")
    http_server.serve_dir(tmp_path / "shards", "/data/")
    url = http_server.url_for("/data/{00000..00001}.tar")
    convert(url, tmp_path / "out", keep_columns=("url",), **FAST)
    store = check_images(tmp_path / "out", samples)
    assert store.text("url").take([0]) == [samples[0]["url"]]
    gets = [r for r in http_server.requests if r.path.endswith(".tar")]
    assert {r.method for r in gets} == {"GET"} and not any("range" in r.headers for r in gets)  # one streamed GET
    assert not list((tmp_path / "hf-cache").rglob("*.tar"))  # nothing copied to disk


def test_http_shard_is_read_as_it_arrives(tmp_path: Path, http_server: TestServer) -> None:
    """The server sends the first samples, then holds the rest back: those rows arrive anyway."""
    data, samples = img2dataset_shard(0, n=6)
    members = member_offsets(data)
    hold_at = members[9][1] + 512  # the 4th sample's first header has come: three samples are whole
    http_server.route("/s.tar", Response(body=data, stall_after=hold_at, stall=600))
    src = open_source(http_server.url_for("/s.tar"))  # reads the first sample only
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.extend(r.get("__key__", "?") for _, r in src.rows(0, 3)), daemon=True)
    reader.start()
    reader.join(timeout=60)
    assert not reader.is_alive(), "the first rows must not wait for the whole shard"
    assert got == [s["key"] for s in samples[:3]]


def test_http_shard_cut_and_missing(tmp_path: Path, http_server: TestServer) -> None:
    data0, samples0 = img2dataset_shard(0)
    data2, samples2 = img2dataset_shard(2)
    cut = member_offsets(data0)[4][2] + 10
    http_server.route("/0.tar", Response(body=data0, drop_after=cut))
    http_server.route("/2.tar", data2)  # 1.tar: 404
    urls = [http_server.url_for(f"/{i}.tar") for i in range(3)]
    convert(urls, tmp_path / "out", **FAST)
    store = check_images(tmp_path / "out", [samples0[0], *samples2])
    failures = store.failures()
    assert [(f["row"], f["reason"]) for f in failures] == [(1, "truncated-shard"), (2, "unreadable-shard")]
    assert failures[0]["detail"].startswith(f"shard {urls[0]} breaks off after 1 samples")
    assert failures[1]["detail"].startswith(f"shard {urls[1]} cannot be opened: OSError: HTTP 404")


def test_fsspec_urls(tmp_path: Path) -> None:
    """Any fsspec protocol (here its in-memory file system), globbed and read as a stream."""
    import fsspec

    memory = fsspec.filesystem("memory")
    written = []
    for shard in range(2):
        data, samples = img2dataset_shard(shard)
        memory.pipe(f"/wds-test/{shard:05d}.tar", data)
        written += samples
    try:
        convert("memory://wds-test/*.tar", tmp_path / "out", **FAST)
        check_images(tmp_path / "out", written)
    finally:
        memory.rm("/wds-test", recursive=True)


def test_resume_reads_the_same_rows(tmp_path: Path) -> None:
    write_img2dataset(tmp_path / "shards")
    src = open_source(tmp_path / "shards")
    every = [(i, row["__key__"]) for i, row in src.rows(0, None)]
    assert [k for _, k in every] == ["000000000", "000000001", "000000002", "000010000", "000010002"]
    assert [(i, r["__key__"]) for i, r in src.rows(2, 4)] == every[2:4]
    part = src.slice(1, 4)
    assert [(i, r["__key__"]) for i, r in part.rows(1, None)] == [(1, "000000002"), (2, "000010000")]
    assert src.fingerprint == open_source(tmp_path / "shards").fingerprint
    time.sleep(0.01)
    (tmp_path / "shards" / "00001.tar").write_bytes(img2dataset_shard(1)[0])
    assert src.fingerprint != open_source(tmp_path / "shards").fingerprint
    assert "torchcodec" not in sys.modules
