"""Decode one recording into a fixed-length float16 mono tensor.

Pipeline: open with soundfile (else PyAV) -> seek to the clip window -> read
only the frames the output needs (plus a small margin) as float32 -> reject
NaN/inf -> downmix to mono by averaging channels -> resample -> cut to
``num_samples`` or zero-pad at the end -> float16.

Sources
-------
Encoded bytes or a path: WAV, FLAC, OGG/Vorbis/Opus, MP3 and every other format
libsndfile reads go through soundfile; what soundfile cannot open (M4A/AAC,
WebM/Opus, MP4, MKA, WMA... and MP3 on a libsndfile older than 1.1) goes
through PyAV when it is installed (:mod:`.containers`, which also says how clip
windows seek there and how truncated files fail). Or a mapping:
``{"array": ..., "sampling_rate": int}``
(the array is ``(frames,)`` or ``(frames, channels)`` with at most 64
channels, so channels-first arrays are rejected; floats are taken as they are,
integers are scaled to -1..1), or a Hugging Face ``Audio`` dict
``{"bytes": b, "path": p}`` where ``bytes`` may be ``None`` (then ``path`` is
read).

Clips
-----
``clip=(start_s, end_s)`` cuts that window (either end may be ``None``). A
window that is negative, not finite, empty (``end <= start``) or starts at or
past the end of the recording raises ``clip-out-of-range``; an end past the
end of the recording takes what exists. MP3 seeking in libsndfile needs the
decoder to warm up, so MP3 clips are read from up to 16 MPEG frames earlier
and the warm-up samples are dropped.

Failures
--------
Every failure raises :class:`~tensorstore_ds.errors.DecodeError` with reason
``empty-file`` (zero bytes), ``undecodable-audio`` (not audio, unreadable,
missing path or not a regular file, unusable array, a sampling rate above
1,048,576 Hz), ``empty-audio`` (no samples),
``clip-out-of-range``, ``non-finite-audio`` (NaN or inf in the decoded signal,
checked before resampling) or ``audio-out-of-range`` (after resampling, a
value beyond float16's finite range, ``|x| > 65504``; a float64 array value
beyond float32's range is refused before it is narrowed). A truncated file may
decode partially without an error when libsndfile accepts it: the samples
that exist are returned and ``true_length`` says how many there are.
"""

from __future__ import annotations

import io
import math
import numbers
import os
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Union, cast

import numpy as np
import soundfile as sf
import soxr

from ...errors import DecodeError, OptionsError
from . import containers

RESAMPLERS = ("soxr", "resampy")
AV_HINT = "PyAV reads M4A/AAC, WebM/Opus, MP4 and the other formats FFmpeg reads: pip install av"

AudioSource = Union[bytes, bytearray, memoryview, str, "os.PathLike[str]", Mapping[str, Any]]
Clip = tuple[float | None, float | None]

_FLOAT16_MAX = 65504.0
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_MP3_PREROLL = 16 * 1152  # frames decoded and dropped before an MP3 seek target
_READ_MARGIN_SECONDS = 0.05  # extra input read past the output so the resampler tail is exact
_MIN_RESAMPLE_INPUT = 64  # shorter inputs are zero-padded before resampling
_MAX_ARRAY_CHANNELS = 64
# Above FLAC's 655,350 Hz and every real recording rate; resampling cost grows with the
# rate ratio, so a header claiming 2**31 Hz would otherwise take many seconds per clip.
_MAX_SAMPLE_RATE = 2**20
_LIBRARY_ERRORS = (
    RuntimeError,  # soundfile.LibsndfileError
    OSError,
    ValueError,
    TypeError,
    EOFError,
    MemoryError,
    struct.error,
    OverflowError,
    IndexError,
)


@dataclass(frozen=True)
class AudioOptions:
    """How recordings become tensors.

    Parameters
    ----------
    sample_rate
        Output sampling rate in Hz.
    seconds
        Output duration; longer audio is cut, shorter is zero-padded.
    resampler
        ``"soxr"`` (quality ``VHQ``) or ``"resampy"`` (its default filter).
    """

    sample_rate: int = 16000
    seconds: float = 10.0
    resampler: str = "soxr"

    def __post_init__(self) -> None:
        rate = self.sample_rate
        if not isinstance(rate, numbers.Integral) or isinstance(rate, bool) or rate < 1:
            raise OptionsError(f"AudioOptions.sample_rate must be an integer >= 1, got {rate!r}")
        if not isinstance(self.seconds, numbers.Real) or not (math.isfinite(self.seconds) and self.seconds > 0):
            raise OptionsError(f"AudioOptions.seconds must be a finite number > 0, got {self.seconds!r}")
        object.__setattr__(self, "sample_rate", int(rate))  # numpy numbers -> int, float
        object.__setattr__(self, "seconds", float(self.seconds))
        if self.num_samples < 1:
            raise OptionsError(f"AudioOptions gives no samples: {rate} Hz x {self.seconds} s rounds to 0")
        if self.resampler not in RESAMPLERS:
            raise OptionsError(f"AudioOptions.resampler must be one of {', '.join(RESAMPLERS)}, got {self.resampler!r}")

    @property
    def num_samples(self) -> int:
        """Output length in samples."""
        return round(self.sample_rate * self.seconds)


def decode_audio(source: AudioSource, options: AudioOptions, clip: Clip | None = None) -> tuple[np.ndarray, int]:
    """Decode, downmix, resample and cut or pad one recording.

    Parameters
    ----------
    source
        Encoded bytes, a path, or a mapping (see the module docstring).
    options
        Output rate, duration and resampler.
    clip
        ``(start_s, end_s)`` window of the recording to keep, or ``None`` for
        all of it.

    Returns
    -------
    samples
        C-contiguous float16 array of ``options.num_samples`` samples.
    true_length
        How many of them are real audio; the rest is zero padding.

    Raises
    ------
    DecodeError
        On any failure; ``reason`` tells which (see the module docstring).
    """
    frames, rate = _load(source, options, clip)
    if not np.isfinite(frames).all():
        raise DecodeError("non-finite-audio", "the decoded signal holds NaN or inf")
    mono = frames[:, 0] if frames.shape[1] == 1 else frames.mean(axis=1, dtype=np.float32)
    try:
        resampled = resample(mono, rate, options.sample_rate, options.resampler)
    except _LIBRARY_ERRORS as exc:
        raise DecodeError("undecodable-audio", f"resampling failed: {exc}") from exc
    kept = resampled[: options.num_samples]
    peak = float(np.max(np.abs(kept))) if kept.size else 0.0
    if peak > _FLOAT16_MAX:
        raise DecodeError(
            "audio-out-of-range",
            f"peak amplitude {peak:g} exceeds float16's largest value {_FLOAT16_MAX:g}",
        )
    samples = np.zeros(options.num_samples, np.float16)
    samples[: kept.size] = kept
    return samples, int(kept.size)


def resample(x: np.ndarray, sr_in: int, sr_out: int, method: str) -> np.ndarray:
    """Resample a mono signal; the one place that picks the resampler.

    Parameters
    ----------
    x
        1-D signal (converted to float32).
    sr_in, sr_out
        Input and output rates in Hz.
    method
        ``"soxr"`` (quality ``VHQ``) or ``"resampy"`` (default filter).

    Returns
    -------
    np.ndarray
        float32 signal of ``max(1, round(len(x) * sr_out / sr_in))`` samples
        (none for an empty input). Inputs shorter than the resampler's window
        are zero-padded first, so even a few samples resample.
    """
    if method not in RESAMPLERS:
        raise OptionsError(f"resampler must be one of {', '.join(RESAMPLERS)}, got {method!r}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if sr_in == sr_out or x.size == 0:
        return x
    n_out = max(1, round(x.size * sr_out / sr_in))
    min_len = max(_MIN_RESAMPLE_INPUT, 2 * math.ceil(sr_in / sr_out))
    padded = x if x.size >= min_len else np.pad(x, (0, min_len - x.size))
    if method == "soxr":
        y = soxr.resample(padded, sr_in, sr_out, quality="VHQ")
    else:
        import resampy  # imports numba: slow, so only when asked for

        y = resampy.resample(padded, sr_in, sr_out)
    y = np.asarray(y, dtype=np.float32)
    return y[:n_out] if y.size >= n_out else np.pad(y, (0, n_out - y.size))


def _load(source: AudioSource, options: AudioOptions, clip: Clip | None) -> tuple[np.ndarray, int]:
    """Read the needed part of the clip window as float32 ``(frames, channels)``."""
    if isinstance(source, Mapping):
        if source.get("array") is not None:
            return _from_array(source["array"], source.get("sampling_rate"), options, clip)
        payload = source.get("bytes")
        source = cast(AudioSource, payload if payload is not None else source.get("path"))  # None: refused below
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise DecodeError("empty-file", "the audio file has zero bytes")
        encoded: bytes | bytearray | memoryview | str = source
    elif isinstance(source, (str, os.PathLike)):
        encoded = os.fspath(source)
        if os.path.exists(encoded) and not os.path.isfile(encoded):  # a FIFO or a device would block or never end
            raise DecodeError("undecodable-audio", f"{encoded} is not a regular file")
        if os.path.isfile(encoded) and os.path.getsize(encoded) == 0:
            raise DecodeError("empty-file", f"{encoded} has zero bytes")
    else:
        raise DecodeError("undecodable-audio", f"cannot decode audio from {type(source).__name__}")
    try:
        return _read_file(encoded, options, clip)
    except DecodeError:
        raise
    except _LIBRARY_ERRORS as exc:
        raise DecodeError("undecodable-audio", _describe(exc)) from exc


def _describe(exc: BaseException) -> str:
    """A library error as text; libsndfile names in-memory files by a repr that changes from run to run."""
    detail = re.sub(r"<_io\.BytesIO object at 0x[0-9a-f]+>", "the audio bytes", str(exc))
    return f"{type(exc).__name__}: {detail}"


def _check_rate(rate: int) -> None:
    if not 1 <= rate <= _MAX_SAMPLE_RATE:
        raise DecodeError("undecodable-audio", f"sampling rate {rate} Hz is outside 1..{_MAX_SAMPLE_RATE} Hz")


def _read_file(
    encoded: bytes | bytearray | memoryview | str, options: AudioOptions, clip: Clip | None
) -> tuple[np.ndarray, int]:
    """Read the needed frames of the clip window from an encoded file: soundfile, else PyAV."""
    try:
        f = sf.SoundFile(io.BytesIO(encoded) if not isinstance(encoded, str) else encoded)
    except _LIBRARY_ERRORS as exc:
        return _read_container(encoded, options, clip, exc)
    with f:
        rate, total = f.samplerate, f.frames
        _check_rate(rate)
        if total <= 0:
            raise DecodeError("empty-audio", "the recording has no samples")
        start, stop = _window(total, rate, clip)
        stop = min(stop, start + _input_needed(options, rate))
        preroll = min(start, _MP3_PREROLL) if f.format == "MP3" else 0
        if start - preroll:
            f.seek(start - preroll)
        frames = f.read(stop - start + preroll, dtype="float32", always_2d=True)[preroll:]
    if frames.shape[0] == 0:
        if start > 0:
            raise DecodeError("clip-out-of-range", f"no samples at or after frame {start}")
        raise DecodeError("empty-audio", "the recording has no samples")
    return frames, rate


def _read_container(
    encoded: bytes | bytearray | memoryview | str, options: AudioOptions, clip: Clip | None, sf_error: BaseException
) -> tuple[np.ndarray, int]:
    """Read the clip window through PyAV, for what soundfile cannot open (see :mod:`.containers`)."""
    if not containers.available():
        raise DecodeError("undecodable-audio", f"soundfile cannot read it ({_describe(sf_error)}); {AV_HINT}")
    begin_s, end_s = _clip_seconds(clip)
    try:
        audio = containers.ContainerAudio(encoded)
    except DecodeError as exc:
        raise DecodeError(exc.reason, f"soundfile cannot read it ({_describe(sf_error)}); {exc.detail}") from exc
    with audio:
        _check_rate(audio.rate)
        if not 1 <= audio.channels <= _MAX_ARRAY_CHANNELS:
            raise DecodeError("undecodable-audio", f"{audio.channels} channels is outside 1..{_MAX_ARRAY_CHANNELS}")
        frames = audio.read(begin_s, end_s, _input_needed(options, audio.rate))
    return _as_float32(frames), audio.rate


def _from_array(array: Any, rate: Any, options: AudioOptions, clip: Clip | None) -> tuple[np.ndarray, int]:
    """Validate and slice an in-memory ``{"array", "sampling_rate"}`` source."""
    try:
        values = np.asarray(array)
        rate_ok = rate is not None and float(rate) == int(rate) and int(rate) >= 1
    except _LIBRARY_ERRORS as exc:
        raise DecodeError("undecodable-audio", f"unusable array source: {exc}") from exc
    if not rate_ok:
        raise DecodeError("undecodable-audio", f"sampling_rate must be a positive integer, got {rate!r}")
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2 or not 1 <= values.shape[1] <= _MAX_ARRAY_CHANNELS:
        raise DecodeError(
            "undecodable-audio",
            f"expected an array of shape (frames,) or (frames, channels), got {values.shape}",
        )
    if values.shape[0] == 0:
        raise DecodeError("empty-audio", "the array has no samples")
    rate = int(rate)
    _check_rate(rate)
    start, stop = _window(values.shape[0], rate, clip)
    stop = min(stop, start + _input_needed(options, rate))
    return _as_float32(values[start:stop]), rate


def _as_float32(values: np.ndarray) -> np.ndarray:
    """Floats as they are; signed integers / -min; unsigned centred and scaled."""
    kind = values.dtype
    if np.issubdtype(kind, np.floating):
        if kind.itemsize > 4 and values.size:  # finite float64 beyond float32 would turn into inf
            peak = float(np.max(np.abs(values)))
            if math.isfinite(peak) and peak > _FLOAT32_MAX:
                raise DecodeError(
                    "audio-out-of-range",
                    f"peak amplitude {peak:g} exceeds float16's largest value {_FLOAT16_MAX:g}",
                )
        return values.astype(np.float32, copy=False)
    if np.issubdtype(kind, np.signedinteger):
        return values.astype(np.float32) / np.float32(-np.iinfo(kind).min)
    if np.issubdtype(kind, np.unsignedinteger):
        middle = np.float32(np.iinfo(kind).max // 2 + 1)
        return (values.astype(np.float32) - middle) / middle
    raise DecodeError("undecodable-audio", f"unsupported sample dtype {kind}")


def _window(total: int, rate: int, clip: Clip | None) -> tuple[int, int]:
    """Frame range ``[start, stop)`` of the clip window within ``total`` frames."""
    if clip is None:
        return 0, total
    begin, end_s = _clip_seconds(clip)
    length_s = total / rate
    start = round(begin * rate)
    stop = total if end_s is None else min(total, round(end_s * rate))
    if start >= total or stop <= start:
        raise DecodeError(
            "clip-out-of-range",
            f"clip {clip!r} selects no samples of a {length_s:.3f} s recording",
        )
    return start, stop


def _clip_seconds(clip: Clip | None) -> tuple[float, float | None]:
    """The clip window as ``(begin_s, end_s or None)``, checked to be finite, non-negative and not empty."""
    if clip is None:
        return 0.0, None
    try:
        start_s, end_s = (None if value is None else float(value) for value in clip)
    except (TypeError, ValueError) as exc:
        raise DecodeError("clip-out-of-range", f"clip {clip!r} is not two numbers: {exc}") from exc
    if not all(value is None or math.isfinite(value) for value in (start_s, end_s)):
        raise DecodeError("clip-out-of-range", f"clip {clip!r} is not finite")
    begin = 0.0 if start_s is None else start_s
    if begin < 0 or (end_s is not None and end_s <= begin):
        raise DecodeError("clip-out-of-range", f"clip {clip!r} is negative or empty")
    return begin, end_s


def _input_needed(options: AudioOptions, rate: int) -> int:
    """Input frames that cover the output plus the resampler's look-ahead."""
    core = math.ceil(options.num_samples * rate / options.sample_rate)
    return core + math.ceil(_READ_MARGIN_SECONDS * rate) + 1
