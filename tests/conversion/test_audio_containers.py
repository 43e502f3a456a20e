"""Audio in the containers users download (M4A/AAC, WebM/Opus, MP4, MKA), decoded through PyAV.

Every file is made here with PyAV itself. Lossy codecs never give back the
exact samples, so the decoded audio is compared with the source signal at the
best lag within 1 ms, and a clip window with the same window cut from the
whole recording decoded once.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from tensorstore_ds import convert, open_store
from tensorstore_ds.conversion.decode import audio as audio_module
from tensorstore_ds.conversion.decode import containers
from tensorstore_ds.conversion.decode.audio import AudioOptions, decode_audio, resample
from tensorstore_ds.conversion.decode.containers import ContainerAudio
from tensorstore_ds.errors import DecodeError

RATE = 16000
OPTIONS = AudioOptions(RATE, 10.0)
SECONDS = 6.0
# name: (muxer, codec, codec rate, suffix)
KINDS = {
    "m4a-aac": ("ipod", "aac", 44100, ".m4a"),
    "mp4-aac": ("mp4", "aac", 48000, ".mp4"),
    "webm-opus": ("webm", "libopus", 48000, ".webm"),
    "mka-aac": ("matroska", "aac", 44100, ".mka"),
}
LAG = RATE // 1000  # 1 ms: Matroska/WebM timestamps are in milliseconds


def source_signal(rate: int, seconds: float = SECONDS) -> np.ndarray:
    """Stereo ``(2, frames)``: a tone per channel, a chirp to make every window distinct."""
    t = np.arange(round(rate * seconds)) / rate
    chirp = 0.2 * np.sin(2 * np.pi * (200 * t + 40 * t**2))
    return np.stack([0.2 * np.sin(2 * np.pi * 440 * t) + chirp, 0.2 * np.sin(2 * np.pi * 330 * t) + chirp])


def encode(kind: str, seconds: float = SECONDS, options: dict[str, str] | None = None) -> bytes:
    """A recording of :func:`source_signal` in the container and codec of ``kind``."""
    muxer, codec, rate, _ = KINDS[kind]
    out = io.BytesIO()
    with av.open(out, "w", format=muxer, options=options or {}) as container:
        stream = container.add_stream(codec, rate=rate, layout="stereo")
        frame = av.AudioFrame.from_ndarray(source_signal(rate, seconds).astype(np.float32), "fltp", "stereo")
        frame.sample_rate, frame.pts = rate, 0  # with timestamps the MP4 muxer records the AAC priming to skip
        resampler = av.AudioResampler(format=stream.codec_context.format.name, layout="stereo", rate=rate)
        for part in [*resampler.resample(frame), *resampler.resample(None)]:
            for packet in stream.encode(part):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()


def faststart_m4a(tmp_path: Path) -> bytes:
    """An M4A whose index (``moov``) comes first, as players stream them; needs a real file to write."""
    path = tmp_path / "faststart.m4a"
    path.write_bytes(b"")
    muxer, codec, rate, _ = KINDS["m4a-aac"]
    with av.open(str(path), "w", format=muxer, options={"movflags": "faststart"}) as container:
        stream = container.add_stream(codec, rate=rate, layout="stereo")
        frame = av.AudioFrame.from_ndarray(source_signal(rate).astype(np.float32), "fltp", "stereo")
        frame.sample_rate, frame.pts = rate, 0
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return path.read_bytes()


def best_match(decoded: np.ndarray, reference: np.ndarray, margin: int = 4 * LAG) -> tuple[int, float]:
    """The lag (within +-1 ms) and largest difference at which ``decoded`` best matches ``reference``.

    ``margin`` samples at either end are left out: a codec's or resampler's start-up.
    """
    core = decoded[margin : min(len(decoded), len(reference)) - margin].astype(np.float32)
    errors = {}
    for lag in range(-LAG, LAG + 1):
        ref = reference[margin + lag : margin + lag + len(core)]
        if len(ref) == len(core):
            errors[lag] = float(np.max(np.abs(core - ref)))
    lag = min(errors, key=errors.__getitem__)
    return lag, errors[lag]


@pytest.fixture(scope="module")
def files() -> dict[str, bytes]:
    return {kind: encode(kind) for kind in KINDS}


@pytest.mark.parametrize("kind", KINDS)
def test_soundfile_cannot_but_pyav_decodes(files: dict[str, bytes], kind: str) -> None:
    import soundfile as sf

    with pytest.raises(sf.LibsndfileError):
        sf.info(io.BytesIO(files[kind]))
    samples, length = decode_audio(files[kind], OPTIONS)
    assert samples.dtype == np.float16 and samples.shape == (OPTIONS.num_samples,)
    assert abs(length - SECONDS * RATE) <= 0.05 * RATE  # codecs pad the end to whole frames
    assert not samples[length:].any()
    rate = KINDS[kind][2]
    reference = resample(source_signal(rate).mean(axis=0), rate, RATE, "soxr")
    lag, error = best_match(samples[:length], reference, margin=RATE // 20)
    assert error < 0.1, (lag, error)
    # MP4 counts in samples; Matroska in milliseconds, which FFmpeg 7.0 uses to place the AAC priming it hands out
    assert lag == 0 or KINDS[kind][0] in ("webm", "matroska"), lag


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("clip", [(1.0, 2.5), (2.37, None), (0.25, 1.11), (5.5, 9.0), (None, 1.0)])
def test_clip_windows_seek(files: dict[str, bytes], kind: str, clip: tuple[Any, Any], monkeypatch: Any) -> None:
    whole, length = decode_audio(files[kind], OPTIONS)
    seeks: list[bool] = []
    decode = ContainerAudio._decode

    def spy(self: ContainerAudio, start: int, stop: int, seek: bool) -> Any:
        result = decode(self, start, stop, seek)
        if seek:
            seeks.append(result is not None)
        return result

    monkeypatch.setattr(ContainerAudio, "_decode", spy)
    part, part_length = decode_audio(files[kind], OPTIONS, clip)
    begin = clip[0] or 0.0
    assert seeks == ([True] if begin > 0 else [])  # the window was reached by seeking, not by decoding from 0
    end = length / RATE if clip[1] is None else min(clip[1], length / RATE)
    assert abs(part_length - round((end - begin) * RATE)) <= 2 * LAG
    lag, error = best_match(part[:part_length], whole[round(begin * RATE) :].astype(np.float32))
    if KINDS[kind][0] in ("webm", "matroska"):  # placed to the millisecond: a fraction of a sample off at 16 kHz
        assert error < 0.06, (lag, error)
    else:  # MP4 timestamps count samples: the window is exact
        assert lag == 0 and error < 0.02, (lag, error)


def test_a_container_that_cannot_place_the_seek_is_decoded_from_the_start(
    files: dict[str, bytes], monkeypatch: Any
) -> None:
    seeking, _ = decode_audio(files["m4a-aac"], OPTIONS, (2.0, 3.0))
    decode = ContainerAudio._decode
    monkeypatch.setattr(
        ContainerAudio, "_decode", lambda self, start, stop, seek: None if seek else decode(self, start, stop, seek)
    )
    linear, _ = decode_audio(files["m4a-aac"], OPTIONS, (2.0, 3.0))
    lag, error = best_match(seeking[:RATE], linear[:RATE].astype(np.float32))
    assert lag == 0 and error < 0.02


@pytest.mark.parametrize("kind", KINDS)
def test_clip_past_the_end(files: dict[str, bytes], kind: str) -> None:
    with pytest.raises(DecodeError, match=r"clip-out-of-range: no samples at or after 7 s \(6\.\d+ s long\)"):
        decode_audio(files[kind], OPTIONS, (7.0, 8.0))


def test_truncated_m4a_is_a_clear_failure(files: dict[str, bytes]) -> None:
    """yt-dlp and ffmpeg write the index last: a cut file has none."""
    data = files["m4a-aac"]
    with pytest.raises(DecodeError, match=r"undecodable-audio: soundfile cannot read it \(.*\); PyAV cannot open it"):
        decode_audio(data[: len(data) // 2], OPTIONS)


def test_truncated_streamable_m4a_is_a_clear_failure(tmp_path: Path) -> None:
    """With the index first, the cut file opens, and the decoded audio ends before its header says."""
    data = faststart_m4a(tmp_path)
    assert decode_audio(data, OPTIONS)[1] >= SECONDS * RATE
    with pytest.raises(
        DecodeError, match=r"undecodable-audio: (truncated: the audio ends|PyAV failed while decoding) at \d\.\d+ s"
    ):
        decode_audio(data[: len(data) // 2], OPTIONS)
    assert decode_audio(data[: len(data) // 2], OPTIONS, (0.5, 1.5))[1] == RATE  # a window before the cut is whole


def test_truncated_webm_is_a_clear_failure(files: dict[str, bytes]) -> None:
    data = files["webm-opus"]
    with pytest.raises(DecodeError, match=r"undecodable-audio: truncated: .* the matroska header says 6\.0\d+ s"):
        decode_audio(data[: len(data) // 2], OPTIONS)


def test_a_playlist_naming_another_file_is_refused(tmp_path: Path, files: dict[str, bytes]) -> None:
    """HLS, concat and the like would read files or URLs named inside a sample: only self-contained demuxers run."""
    target = tmp_path / "secret.m4a"
    target.write_bytes(files["m4a-aac"])
    playlists = [
        f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:6.0,\nfile://{target}\n#EXT-X-ENDLIST\n",
        f"ffconcat version 1.0\nfile '{target}'\n",
    ]
    for i, text in enumerate(playlists):
        path = tmp_path / f"list{i}.m3u8"
        path.write_text(text)
        with pytest.raises(DecodeError, match="undecodable-audio: soundfile cannot read it"):
            decode_audio(str(path), OPTIONS)
        with pytest.raises(DecodeError, match="undecodable-audio"):
            decode_audio(text.encode(), OPTIONS)


def test_without_pyav_the_error_names_the_fix(files: dict[str, bytes], monkeypatch: Any) -> None:
    monkeypatch.setattr(containers, "available", lambda: False)
    with pytest.raises(
        DecodeError, match=r"soundfile cannot read it \(.*Format not recognised.*\); PyAV reads M4A/AAC"
    ):
        decode_audio(files["m4a-aac"], OPTIONS)
    assert "pip install av" in audio_module.AV_HINT


def test_integer_sample_formats_are_scaled(tmp_path: Path) -> None:
    """ALAC in M4A decodes to int16/int32 samples: scaled to -1..1 like soundfile's."""
    out = io.BytesIO()
    with av.open(out, "w", format="ipod") as container:
        stream = container.add_stream("alac", rate=RATE, layout="mono")
        tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(RATE) / RATE) * 32767).astype(np.int16)[None, :]
        frame = av.AudioFrame.from_ndarray(tone, "s16p", "mono")
        frame.sample_rate = RATE
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    samples, length = decode_audio(out.getvalue(), AudioOptions(RATE, 1.0))
    assert length == RATE
    np.testing.assert_allclose(samples.astype(np.float32), tone[0] / 32768, atol=1e-3)


def test_musiccaps_table_of_m4a_and_webm_clips(tmp_path: Path, files: dict[str, bytes]) -> None:
    """The yt-dlp download of a MusicCaps-style table: .m4a and .webm clips with windows, one file cut short."""
    audio_dir = tmp_path / "clips"
    audio_dir.mkdir()
    names = {"aaa": "m4a-aac", "bbb": "webm-opus", "ccc": "mp4-aac"}
    for ytid, kind in names.items():
        (audio_dir / f"{ytid}{KINDS[kind][3]}").write_bytes(files[kind])
    cut = files["m4a-aac"]
    (audio_dir / "ddd.m4a").write_bytes(cut[: len(cut) // 3])
    rows = [
        {"file": "aaa.m4a", "start_s": 1.0, "end_s": 3.0, "caption": "tones a"},
        {"file": "bbb.webm", "start_s": 2.5, "end_s": 4.5, "caption": "tones b"},
        {"file": "ccc.mp4", "start_s": 0.0, "end_s": 2.0, "caption": "tones c"},
        {"file": "ddd.m4a", "start_s": 0.0, "end_s": 2.0, "caption": "cut short"},
    ]
    table = tmp_path / "musiccaps.jsonl"
    table.write_text("".join(json.dumps(row) + "\n" for row in rows))
    manifest = convert(
        str(table),
        tmp_path / "out",
        audio_dir=str(audio_dir),
        audio_template="{file}",
        clip_start_column="start_s",
        clip_end_column="end_s",
        sample_rate=RATE,
        audio_seconds=2.0,
        workers=0,
        progress=False,
    )
    assert manifest.counts["converted"] == 3 and manifest.counts["failed"] == 1
    store = open_store(tmp_path / "out")
    assert store.captions.take(range(3)) == ["tones a", "tones b", "tones c"]
    assert np.asarray(store.array("audio_length")).tolist() == [2 * RATE] * 3
    audio = np.asarray(store.array("audio"))
    for row, (ytid, clip) in enumerate([("aaa", (1.0, 3.0)), ("bbb", (2.5, 4.5)), ("ccc", (0.0, 2.0))]):
        expected, _ = decode_audio(files[names[ytid]], AudioOptions(RATE, 2.0), clip)
        np.testing.assert_array_equal(audio[row], expected)
    [failure] = store.failures()
    assert failure["row"] == 3 and failure["reason"] == "undecodable-audio" and failure["key"].endswith("ddd.m4a")
