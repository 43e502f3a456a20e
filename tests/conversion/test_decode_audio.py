"""Tests of tensorstore_ds.conversion.decode.audio: formats, rates, downmix, clips, failures."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from tensorstore_ds.conversion.decode.audio import RESAMPLERS, AudioOptions, decode_audio, resample
from tensorstore_ds.errors import DecodeError

ONE_SECOND = AudioOptions(sample_rate=16000, seconds=1.0)


def sine(freq: float, rate: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def encode(signal: np.ndarray, rate: int, fmt: str = "WAV", subtype: str | None = None) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, signal, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def peak_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[np.argmax(spectrum)])


def check_output(samples: np.ndarray, options: AudioOptions) -> None:
    assert samples.dtype == np.float16
    assert samples.shape == (options.num_samples,)
    assert samples.flags.c_contiguous


# --- options ------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sample_rate": 0},
        {"sample_rate": 16000.5},
        {"seconds": 0},
        {"seconds": -1.0},
        {"seconds": float("nan")},
        {"seconds": float("inf")},
        {"sample_rate": 1, "seconds": 0.1},
        {"resampler": "librosa"},
    ],
)
def test_options_reject_bad_values(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        AudioOptions(**kwargs)


def test_num_samples() -> None:
    assert AudioOptions().num_samples == 160_000
    assert AudioOptions(sample_rate=22050, seconds=0.5).num_samples == 11025
    numpy_made = AudioOptions(np.int64(8000), np.float32(0.25))
    assert type(numpy_made.sample_rate) is int and type(numpy_made.seconds) is float
    assert numpy_made == AudioOptions(8000, 0.25)


# --- formats and rates ------------------------------------------------------------

FORMATS = [
    ("WAV", "PCM_16", 0.01),
    ("WAV", "FLOAT", 0.01),
    ("FLAC", "PCM_16", 0.01),
    ("OGG", "VORBIS", 0.1),
    ("MP3", "MPEG_LAYER_III", 0.1),
]


@pytest.mark.parametrize("fmt, subtype, tolerance", FORMATS, ids=[f"{f}-{s}" for f, s, _ in FORMATS])
def test_formats(tmp_path: Path, fmt: str, subtype: str, tolerance: float) -> None:
    if fmt not in sf.available_formats():
        pytest.skip(f"libsndfile without {fmt}")
    data = encode(sine(440, 44100, 1.5), 44100, fmt, subtype)
    path = tmp_path / f"tone.{fmt.lower()}"
    path.write_bytes(data)
    for source in (data, path, str(path)):
        samples, length = decode_audio(source, ONE_SECOND)
        check_output(samples, ONE_SECOND)
        assert length == 16000
        assert abs(peak_hz(samples, 16000) - 440) <= 1
        middle = samples[4000:12000].astype(np.float32)
        assert abs(np.sqrt(np.mean(middle**2)) - 0.5 / np.sqrt(2)) < tolerance


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 44100, 48000, 96000])
def test_sample_rates_keep_frequency(rate: int) -> None:
    samples, length = decode_audio(encode(sine(1000, rate, 1.0), rate, "FLAC"), ONE_SECOND)
    assert length == 16000
    assert abs(peak_hz(samples, 16000) - 1000) <= 1
    rms = np.sqrt(np.mean(samples[1000:15000].astype(np.float32) ** 2))
    assert abs(rms - 0.5 / np.sqrt(2)) < 0.01


@pytest.mark.parametrize("channels", range(1, 9))
def test_downmix_averages_channels(channels: int) -> None:
    levels = np.linspace(-0.8, 0.6, channels, dtype=np.float32)
    signal = np.tile(levels, (16000, 1)) * np.hanning(16000)[:, None].astype(np.float32)
    samples, length = decode_audio(encode(signal, 16000, "WAV", "FLOAT"), ONE_SECOND)
    expected = signal.mean(axis=1)
    assert length == 16000
    assert np.abs(samples.astype(np.float32) - expected).max() < 1e-3


def test_resamplers_agree() -> None:
    data = encode(sine(440, 44100, 1.0, 0.4) + sine(3000, 44100, 1.0, 0.2), 44100)
    soxr_out, soxr_len = decode_audio(data, AudioOptions(seconds=1.0, resampler="soxr"))
    resampy_out, resampy_len = decode_audio(data, AudioOptions(seconds=1.0, resampler="resampy"))
    assert soxr_len == resampy_len == 16000
    correlation = np.corrcoef(soxr_out[100:-100], resampy_out[100:-100])[0, 1]
    assert correlation > 0.99


# --- cut, pad, true length ------------------------------------------------------------


@pytest.mark.parametrize(
    "rate, seconds, expected",
    [(16000, 1.0, 16000), (16000, 3.0, 32000), (44100, 3.0, 32000), (8000, 0.5, 8000)],
)
def test_cut_and_pad(rate: int, seconds: float, expected: int) -> None:
    options = AudioOptions(seconds=seconds)
    samples, length = decode_audio(encode(sine(500, rate, 2.0), rate), options)
    check_output(samples, options)
    assert length == expected
    assert np.all(samples[length:] == 0)
    assert np.abs(samples[length // 2 : length // 2 + 200]).max() > 0.4


def test_long_file_reads_only_what_it_needs(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[int] = []
    real_read = sf.SoundFile.read

    def spy(self: sf.SoundFile, frames: int = -1, **kwargs: Any) -> Any:
        asked.append(frames)
        return real_read(self, frames, **kwargs)

    monkeypatch.setattr(sf.SoundFile, "read", spy)
    data = encode(sine(300, 16000, 60.0), 16000, "FLAC")
    _samples, length = decode_audio(data, ONE_SECOND, clip=(30.0, None))
    assert length == 16000
    assert 16000 <= asked[0] < 20000


# --- clips -------------------------------------------------------------------------------


def ramp(rate: int, seconds: float) -> np.ndarray:
    """Amplitude encodes time: sample n holds n / (rate * 10)."""
    return (np.arange(round(rate * seconds)) / (rate * 10)).astype(np.float32)


@pytest.mark.parametrize(
    "clip, first_s, length",
    [
        ((1.0, 2.0), 1.0, 16000),
        ((1.0, 1.25), 1.0, 4000),
        ((None, 0.5), 0.0, 8000),
        ((3.5, None), 3.5, 8000),
        ((3.5, 99.0), 3.5, 8000),
        ((0.0, None), 0.0, 16000),
    ],
)
def test_clip_window_without_resampling(clip: tuple[Any, Any], first_s: float, length: int) -> None:
    data = encode(ramp(16000, 4.0), 16000, "WAV", "FLOAT")
    samples, got = decode_audio(data, ONE_SECOND, clip=clip)
    assert got == length
    expected = ramp(16000, 4.0)[round(first_s * 16000) :][:length]
    assert np.allclose(samples[:got].astype(np.float32), expected, atol=2e-4)
    assert np.all(samples[got:] == 0)


def test_clip_window_with_resampling() -> None:
    data = encode(ramp(48000, 4.0), 48000, "FLAC", "PCM_24")
    samples, length = decode_audio(data, ONE_SECOND, clip=(2.0, 3.0))
    assert length == 16000
    times = 2.0 + np.arange(16000) / 16000
    assert np.allclose(samples[200:-200].astype(np.float32), times[200:-200] / 10, atol=1e-3)


@pytest.mark.parametrize("fmt", ["FLAC", "OGG", "MP3"])
def test_clip_seek_matches_full_decode(fmt: str) -> None:
    # A tonal signal: MP3 then leans on its bit reservoir, which a bare libsndfile
    # seek cannot decode (the first frames after the seek come out wrong).
    t = np.arange(64000) / 16000
    signal = 0.5 * np.sin(2 * np.pi * 440 * t) * (1 + 0.5 * np.sin(2 * np.pi * 0.7 * t)) / 1.5
    data = encode(signal.astype(np.float32), 16000, fmt)
    full, _ = sf.read(io.BytesIO(data), dtype="float32")
    samples, length = decode_audio(data, ONE_SECOND, clip=(2.0, None))
    assert length == 16000
    assert np.abs(samples.astype(np.float32) - full[32000:48000]).max() < 2e-3


@pytest.mark.parametrize(
    "clip",
    [
        (-1.0, 1.0),
        (4.0, None),
        (5.0, 6.0),
        (2.0, 2.0),
        (2.0, 1.0),
        (None, -1.0),
        (float("nan"), 1.0),
        (1.0, float("inf")),
        ("soon", 1.0),
        (1.0, 2.0, 3.0),
    ],
)
def test_clip_out_of_range(clip: tuple[Any, Any]) -> None:
    data = encode(ramp(16000, 4.0), 16000)
    with pytest.raises(DecodeError, match="clip-out-of-range"):
        decode_audio(data, ONE_SECOND, clip=clip)


@pytest.mark.parametrize("resampler", RESAMPLERS)
@pytest.mark.parametrize("rate", [8000, 48000, 96000])
def test_three_sample_clip_resamples(resampler: str, rate: int) -> None:
    data = encode(np.full(rate, 0.5, np.float32), rate, "WAV", "FLOAT")
    options = AudioOptions(seconds=1.0, resampler=resampler)
    samples, length = decode_audio(data, options, clip=(0.5, 0.5 + 3 / rate))
    check_output(samples, options)
    assert length == max(1, round(3 * 16000 / rate))
    assert np.isfinite(samples).all() and np.abs(samples[:length]).max() > 0.1


# --- resample() ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", RESAMPLERS)
@pytest.mark.parametrize(
    "size, sr_in, sr_out",
    [(1, 48000, 16000), (3, 96000, 8000), (5, 8000, 16000), (44100, 44100, 16000), (1001, 22050, 16000)],
)
def test_resample_lengths(method: str, size: int, sr_in: int, sr_out: int) -> None:
    out = resample(np.ones(size, np.float32), sr_in, sr_out, method)
    assert out.dtype == np.float32
    assert len(out) == max(1, round(size * sr_out / sr_in))


def test_resample_same_rate_and_bad_method() -> None:
    x = np.arange(10, dtype=np.float32)
    assert np.array_equal(resample(x, 16000, 16000, "soxr"), x)
    assert len(resample(np.zeros(0, np.float32), 44100, 16000, "soxr")) == 0
    with pytest.raises(ValueError):
        resample(x, 44100, 16000, "scipy")


# --- mapping sources ---------------------------------------------------------------------------


def test_array_source() -> None:
    tone = sine(700, 22050, 1.0)
    samples, length = decode_audio({"array": tone, "sampling_rate": 22050}, ONE_SECOND)
    assert length == 16000 and abs(peak_hz(samples, 16000) - 700) <= 1
    stereo = np.stack([tone, -tone * 0], axis=1)
    halved, _ = decode_audio({"array": stereo, "sampling_rate": np.int64(22050)}, ONE_SECOND)
    assert np.allclose(halved.astype(np.float32), samples.astype(np.float32) / 2, atol=2e-3)


def test_integer_array_is_scaled() -> None:
    ints = np.array([16384, -16384, 32767, -32768] * 4000, np.int16)
    samples, length = decode_audio({"array": ints, "sampling_rate": 16000}, ONE_SECOND)
    assert length == 16000
    assert samples[:4].tolist() == [0.5, -0.5, pytest.approx(1.0, abs=1e-3), -1.0]


def test_hf_audio_dict(tmp_path: Path) -> None:
    data = encode(sine(440, 16000, 1.0), 16000, "FLAC")
    path = tmp_path / "a.flac"
    path.write_bytes(data)
    from_bytes, _ = decode_audio({"bytes": data, "path": "ignored.flac"}, ONE_SECOND)
    from_path, _ = decode_audio({"bytes": None, "path": str(path)}, ONE_SECOND)
    assert np.array_equal(from_bytes, from_path)


@pytest.mark.parametrize(
    "source",
    [
        {"bytes": None, "path": None},
        {},
        {"array": np.zeros((2, 16000), np.float32), "sampling_rate": 16000},
        {"array": np.zeros((4, 4, 4), np.float32), "sampling_rate": 16000},
        {"array": np.zeros(100, np.float32), "sampling_rate": 0},
        {"array": np.zeros(100, np.float32)},
        {"array": np.zeros(100, bool), "sampling_rate": 16000},
        12345,
    ],
)
def test_bad_sources(source: Any) -> None:
    with pytest.raises(DecodeError, match="undecodable-audio"):
        decode_audio(source, ONE_SECOND)


def test_empty_array_source() -> None:
    with pytest.raises(DecodeError, match="empty-audio"):
        decode_audio({"array": np.zeros(0, np.float32), "sampling_rate": 16000}, ONE_SECOND)


# --- failures ------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_audio(bad: float) -> None:
    signal = sine(440, 16000, 1.0)
    signal[1234] = bad
    with pytest.raises(DecodeError, match="non-finite-audio"):
        decode_audio(encode(signal, 16000, "WAV", "FLOAT"), ONE_SECOND)
    with pytest.raises(DecodeError, match="non-finite-audio"):
        decode_audio(encode(np.stack([signal] * 2, 1), 44100, "WAV", "FLOAT"), ONE_SECOND)


def test_audio_out_of_float16_range() -> None:
    signal = sine(440, 16000, 1.0)
    signal[500] = 1e5
    with pytest.raises(DecodeError, match="audio-out-of-range"):
        decode_audio(encode(signal, 16000, "WAV", "FLOAT"), ONE_SECOND)


def test_empty_audio_and_empty_file(tmp_path: Path) -> None:
    with pytest.raises(DecodeError, match="empty-audio"):
        decode_audio(encode(np.zeros(0, np.float32), 16000), ONE_SECOND)
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    for source in (b"", empty):
        with pytest.raises(DecodeError, match="empty-file"):
            decode_audio(source, ONE_SECOND)


def test_text_named_wav_is_undecodable(tmp_path: Path) -> None:
    text = b"<!DOCTYPE html><html><body>Not Found</body></html>\n" * 20
    path = tmp_path / "clip.wav"
    path.write_bytes(text)
    for source in (text, path, tmp_path / "missing.wav"):
        with pytest.raises(DecodeError, match="undecodable-audio"):
            decode_audio(source, ONE_SECOND)


@pytest.mark.parametrize("fmt", ["WAV", "FLAC", "OGG", "MP3"])
@pytest.mark.parametrize("fraction", [0.02, 0.3, 0.7])
def test_truncated_files_never_crash(fmt: str, fraction: float) -> None:
    data = encode(sine(440, 22050, 2.0), 22050, fmt)
    try:
        samples, length = decode_audio(data[: int(len(data) * fraction)], ONE_SECOND)
    except DecodeError as exc:
        assert exc.reason in ("undecodable-audio", "empty-audio")
    else:
        check_output(samples, ONE_SECOND)
        assert 0 < length <= 16000
