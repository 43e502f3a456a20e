"""Before decoding, convert checks that this installation reads the source's audio formats.

A libsndfile without MP3 (older than 1.1) is simulated by taking MP3 out of
soundfile's available formats; a machine without PyAV by making
``containers.available`` say so. Real MP3 files are made with soundfile.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

import tensorstore_ds.conversion.run
from tensorstore_ds import convert, open_store
from tensorstore_ds.cli import main
from tensorstore_ds.conversion.columns import MediaRef
from tensorstore_ds.conversion.decode import audio as audio_module
from tensorstore_ds.conversion.decode import containers, formats
from tensorstore_ds.conversion.decode.audio import AudioOptions, decode_audio
from tensorstore_ds.errors import AudioFormatError
from tests.media import sine

RATE = 16000
OPTS = {"sample_rate": RATE, "audio_seconds": 1.0, "workers": 0, "progress": False}


def mp3_bytes(seconds: float = 1.0) -> bytes:
    out = io.BytesIO()
    sf.write(out, sine(RATE, seconds, 440.0), RATE, format="MP3")
    return out.getvalue()


def table_of(tmp_path: Path, names: list[str], data: bytes) -> str:
    for name in names:
        (tmp_path / name).write_bytes(data)
    path = tmp_path / "table.jsonl"
    path.write_text("".join(json.dumps({"audio": n, "caption": n}) + "\n" for n in names))
    return str(path)


@pytest.fixture
def old_libsndfile(monkeypatch: pytest.MonkeyPatch) -> None:
    """soundfile as built on a libsndfile older than 1.1: no MP3."""
    formats_here = {k: v for k, v in sf.available_formats().items() if k != "MP3"}
    monkeypatch.setattr(sf, "available_formats", lambda: formats_here)


@pytest.fixture
def no_pyav(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(containers, "available", lambda: False)


@pytest.fixture
def decoded(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every payload handed to the decoder (workers=0 decodes in this process)."""
    calls: list[Any] = []
    real = tensorstore_ds.conversion.run.decode_sample

    def spy(payload: Any, *args: Any) -> Any:
        calls.append(payload)
        return real(payload, *args)

    monkeypatch.setattr(tensorstore_ds.conversion.run, "decode_sample", spy)
    return calls


@pytest.mark.usefixtures("old_libsndfile", "no_pyav")
def test_mp3_without_a_decoder_stops_before_the_first_row(tmp_path: Path, decoded: list[Any]) -> None:
    src = table_of(tmp_path, ["a.mp3", "b.mp3"], mp3_bytes())
    message = (
        r"the source's audio is MP3 \(first seen in a\.mp3\), which this libsndfile [\d.]+ cannot read "
        r"\(it needs libsndfile >= 1\.1\); pip install av \(PyAV decodes MP3.*\), or pip install --upgrade soundfile"
    )
    with pytest.raises(AudioFormatError, match=message) as info:
        convert(src, tmp_path / "out", audio_column="audio", **OPTS)
    assert (info.value.format, info.value.key) == ("MP3", "a.mp3")
    assert decoded == []


@pytest.mark.usefixtures("old_libsndfile")
def test_with_pyav_mp3_needs_no_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PyAV is the fix: soundfile refusing MP3 (as an old libsndfile does) leaves the rows to PyAV."""
    data = mp3_bytes()
    src = table_of(tmp_path, ["a.mp3", "b.mp3"], data)
    real = sf.SoundFile

    def old_soundfile(file: Any, *args: Any, **kwargs: Any) -> Any:
        handle = real(file, *args, **kwargs)
        if handle.format == "MP3":
            handle.close()
            raise sf.LibsndfileError(1, "Error opening: ")  # what libsndfile < 1.1 says: format not recognised
        return handle

    monkeypatch.setattr(audio_module.sf, "SoundFile", old_soundfile)
    manifest = convert(src, tmp_path / "out", audio_column="audio", **OPTS)
    assert manifest.counts["converted"] == 2 and manifest.counts["failed"] == 0
    monkeypatch.setattr(audio_module.sf, "SoundFile", real)
    by_soundfile, n = decode_audio(data, AudioOptions(RATE, 1.0))
    by_pyav = np.asarray(open_store(tmp_path / "out").array("audio")[0], np.float32)
    lengths = np.asarray(open_store(tmp_path / "out").array("audio_length")).tolist()
    assert abs(lengths[0] - n) <= 0.1 * RATE  # decoders differ in how much encoder padding they keep
    errors = [
        float(np.max(np.abs(by_pyav[2000:14000] - by_soundfile[2000 + lag : 14000 + lag])))
        for lag in range(-1200, 1200)
    ]
    assert min(errors) < 0.02


@pytest.mark.usefixtures("no_pyav")
@pytest.mark.parametrize(("name", "shown"), [("clip.m4a", "M4A/AAC"), ("clip.webm", "WebM")])
def test_containers_without_pyav_stop_with_the_fix(tmp_path: Path, name: str, shown: str, decoded: list[Any]) -> None:
    src = table_of(tmp_path, [name], b"\x00\x00\x00\x18ftypM4A " + bytes(64))
    with pytest.raises(
        AudioFormatError,
        match=rf"is {shown} \(first seen in {name}\), which soundfile never reads and PyAV is not installed; pip install av",
    ):
        convert(src, tmp_path / "out", audio_column="audio", **OPTS)
    assert decoded == []


@pytest.mark.usefixtures("old_libsndfile", "no_pyav")
def test_formats_this_libsndfile_reads_pass(tmp_path: Path) -> None:
    buf = io.BytesIO()
    sf.write(buf, sine(RATE, 1.0), RATE, format="FLAC")
    manifest = convert(
        table_of(tmp_path, ["a.flac", "b.flac"], buf.getvalue()), tmp_path / "out", audio_column="audio", **OPTS
    )
    assert manifest.counts["converted"] == 2


@pytest.mark.usefixtures("old_libsndfile", "no_pyav")
@pytest.mark.parametrize(
    ("ref", "fmt"),
    [
        (MediaRef("bytes", mp3_bytes(), "audio (bytes)"), "MP3"),  # ID3 tag or frame header
        (MediaRef("bytes", b"\xff\xfb\x90\x00" + bytes(60), "audio (bytes)"), "MP3"),
        (MediaRef("bytes", b"not audio", "x.mp3"), "MP3"),  # unknown bytes: the name they came with
        (MediaRef("url", "https://example.org/a/b.MP3?sig=1", "b.mp3"), "MP3"),
        (MediaRef("bytes", b"\x00\x00\x00\x18ftypM4A ", "audio (bytes)"), "M4A/MP4"),
        (MediaRef("bytes", b"\x1a\x45\xdf\xa3" + bytes(8), "audio (bytes)"), "WebM/Matroska"),
    ],
)
def test_format_told_by_bytes_or_name(ref: MediaRef, fmt: str) -> None:
    with pytest.raises(AudioFormatError) as info:
        formats.check_audio_formats([{}], lambda _row: ref)
    assert info.value.format == fmt


@pytest.mark.usefixtures("old_libsndfile", "no_pyav")
def test_unknown_and_array_rows_are_left_to_the_decoder() -> None:
    refs = [
        MediaRef("array", {"array": np.zeros(8), "sampling_rate": RATE}, "a"),
        MediaRef("bytes", b"RIFF....WAVE", "b"),
        MediaRef("path", "/x/c.unknown", "c"),
        MediaRef("bytes", b"\xff\xf1adts", "d"),  # ADTS AAC has layer bits 00: not MP3
    ]
    formats.check_audio_formats(refs, lambda ref: ref)


def test_with_pyav_nothing_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(containers, "available", lambda: True)

    def rows() -> Any:
        raise AssertionError("rows were read")
        yield

    formats.check_audio_formats(rows(), lambda row: row)


@pytest.mark.usefixtures("old_libsndfile", "no_pyav")
def test_cli_exit_status_and_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = table_of(tmp_path, ["a.mp3"], mp3_bytes())
    status = main(["convert", src, str(tmp_path / "out"), "--audio-column", "audio", "--workers", "0", "--quiet"])
    assert status == 1
    assert "error: the source's audio is MP3 (first seen in a.mp3)" in capsys.readouterr().err


def test_error_keeps_its_facts_across_processes() -> None:
    import pickle

    error = AudioFormatError("MP3", "a.mp3", "this libsndfile 1.0.31 cannot read", "pip install av")
    copy = pickle.loads(pickle.dumps(error))
    assert isinstance(copy, RuntimeError) and str(copy) == str(error)
    assert (copy.format, copy.key, copy.why, copy.fix) == (
        "MP3",
        "a.mp3",
        "this libsndfile 1.0.31 cannot read",
        "pip install av",
    )
