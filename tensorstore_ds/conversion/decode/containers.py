"""Audio in the containers FFmpeg reads (M4A/AAC, WebM/Opus, MP4, MKA, WMA, ...), decoded through PyAV.

:mod:`~tensorstore_ds.conversion.decode.audio` tries soundfile first and comes
here only for what libsndfile cannot open. PyAV's wheels bundle FFmpeg's
libraries, so no system FFmpeg is needed.

Protocol
--------
:class:`ContainerAudio` opens the first audio stream of a file (a path, opened
here as a Python file, or in-memory bytes) and says its ``rate`` and
``channels`` before anything is decoded, so that the caller can refuse an
absurd header first. :meth:`ContainerAudio.read` then returns the window
``[begin_s, end_s)`` as an array ``(frames, channels)`` in the decoder's own
sample type (float32 for AAC and Opus; the caller scales integers), at most
``max_frames`` long:

1. **Seek.** For a window that starts after 0 s, the container is asked to
   seek to a key frame at least ``_SEEK_PREROLL_SECONDS`` before the start
   (AAC and Opus decoders need that much history to produce exact samples).
   A container that cannot seek, whose timestamps are missing, or whose seek
   lands past the start, is decoded from its beginning instead.
2. **Place.** Time 0 is where a decode from the start begins: the first
   frame's timestamp, or 0 when that is negative (then the samples before 0
   are an encoder's priming, which older FFmpeg versions hand out and newer
   ones drop). The first frame after a seek is placed by its timestamp (to
   within the container's resolution: 1 ms for Matroska/WebM), every later
   frame right after the one before it, so coarse timestamps never open gaps
   or overlaps; samples before the window are dropped.
3. **Stop** once the window (or ``max_frames``) is filled, or at the end of
   the stream: an end past the end of the recording takes what exists.

Safety
------
Only the demuxers in :data:`DEMUXERS` are allowed (FFmpeg's
``format_whitelist``): they read the one file they are given. Playlists and
reference formats (HLS, DASH, concat, SDP, image sequences, IMF) would open
other files or network addresses named inside a sample, so they are refused.
Paths are opened here as files, so FFmpeg never interprets a path as a URL.

Failures
--------
:class:`~tensorstore_ds.errors.DecodeError` with reason ``undecodable-audio``
for a container PyAV cannot open, one with no audio stream, a decoding error
anywhere in the window, a rate or channel count that changes mid-stream, and
a truncated MP4 or Matroska/WebM file (their headers state the duration: a
stream that ends more than ``_TRUNCATION_SLACK_SECONDS`` before it is
refused rather than returned short). ``empty-audio`` when the stream holds no
samples and ``clip-out-of-range`` when none lie in the window.
"""

from __future__ import annotations

import io
import itertools
import os
from collections.abc import Iterator
from fractions import Fraction
from types import TracebackType
from typing import Any, BinaryIO

import numpy as np

from ...errors import DecodeError

# Demuxers that read only the bytes they are given (FFmpeg's names; "mov" is MP4/M4A/3GP,
# "matroska" is MKA/MKV/WebM, "asf" is WMA).
DEMUXERS = (
    "mov",
    "matroska",
    "ogg",
    "mp3",
    "aac",
    "flac",
    "wav",
    "w64",
    "aiff",
    "caf",
    "asf",
    "avi",
    "flv",
    "amr",
    "ac3",
    "eac3",
    "dts",
    "truehd",
    "ape",
    "wv",
    "tta",
    "au",
    "mpc",
    "mpc8",
    "mpegts",
    "mpeg",
    "xwma",
)
_SEEK_PREROLL_SECONDS = 0.2
_TRUNCATION_SLACK_SECONDS = 0.25
_EXACT_DURATION = ("mov", "matroska")  # containers whose header states the true duration


def available() -> bool:
    """Whether PyAV can be imported (it is optional at run time)."""
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


class ContainerAudio:
    """The first audio stream of a container, opened through PyAV.

    Parameters
    ----------
    source
        A path or in-memory bytes of a whole file.

    Raises
    ------
    DecodeError
        ``undecodable-audio`` when PyAV cannot open it or it has no audio.
    """

    def __init__(self, source: str | os.PathLike[str] | bytes | bytearray | memoryview) -> None:
        import av

        self._av = av
        self._source = source
        self._container: Any = None
        self._file: BinaryIO | None = None
        self._position: int | None = None  # where decoding got to, for error messages
        container = self._open()
        stream = container.streams.audio[0]
        self.rate = int(stream.codec_context.sample_rate or stream.rate or 0)
        self.channels = int(stream.codec_context.channels or 0)
        self.format = str(container.format.name).split(",")[0]

    def _open(self) -> Any:
        """(Re)open the container at its start; returns it."""
        self.close()
        if isinstance(self._source, (bytes, bytearray, memoryview)):
            self._file = io.BytesIO(self._source)
        else:
            self._file = open(self._source, "rb")  # noqa: SIM115 - closed by close()
        try:
            self._container = self._av.open(self._file, "r", options={"format_whitelist": ",".join(DEMUXERS)})
        except (self._av.error.FFmpegError, OSError, ValueError, MemoryError) as exc:
            self.close()
            raise DecodeError("undecodable-audio", f"PyAV cannot open it: {_message(exc)}") from exc
        if not self._container.streams.audio:
            self.close()
            raise DecodeError("undecodable-audio", "the container holds no audio stream")
        self._container.streams.audio[0].codec_context.thread_count = 1  # decode workers are the parallelism
        return self._container

    def close(self) -> None:
        """Close the container and the file under it."""
        if self._container is not None:
            self._container.close()
            self._container = None
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> ContainerAudio:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def read(self, begin_s: float, end_s: float | None, max_frames: int) -> np.ndarray:
        """Decode the window ``[begin_s, end_s)``, at most ``max_frames`` frames (see the module docstring)."""
        start = round(begin_s * self.rate)
        stop = start + max_frames if end_s is None else min(round(end_s * self.rate), start + max_frames)
        errors = (self._av.error.FFmpegError, OSError, ValueError, MemoryError)
        try:
            frames = self._decode(start, stop, seek=True) if begin_s > 0 else None
            if frames is None:  # no seek wanted, or the container could not place it
                if begin_s > 0:
                    self._open()
                frames = self._decode(start, stop, seek=False)
        except errors as exc:
            at = f" at {self._position / self.rate:.3f} s" if self._position is not None else ""
            raise DecodeError("undecodable-audio", f"PyAV failed while decoding{at}: {_message(exc)}") from exc
        assert frames is not None
        chunks, end = frames
        if not chunks:
            if start > 0 and end > 0:
                raise DecodeError(
                    "clip-out-of-range", f"no samples at or after {begin_s:g} s ({end / self.rate:.3f} s long)"
                )
            raise DecodeError("empty-audio", "the recording has no samples")
        self._check_complete(end, stop)
        return np.concatenate(chunks)

    def _decode(self, start: int, stop: int, seek: bool) -> tuple[list[np.ndarray], int] | None:
        """Frames ``[start, stop)`` and where the stream ended; ``None`` if a seek could not be placed."""
        container, stream = self._container, self._container.streams.audio[0]
        frames = container.decode(stream)
        first = next(frames, None)
        if first is None:
            return [], 0
        origin = max(_time(first) or Fraction(0), Fraction(0))  # where a decode from the start begins
        if seek:
            first, frames = self._seek(start, stream)
            if first is None or _time(first) is None:
                return None  # nothing there, or no timestamp to place it by: decode from the start
        at = _time(first)
        position = round(((at if at is not None else origin) - origin) * self.rate)  # < 0: priming, dropped
        if seek and position > start:
            return None  # the seek landed past the window's start
        chunks: list[np.ndarray] = []
        for frame in itertools.chain([first], frames):
            if frame.sample_rate != self.rate or _channels(frame) != self.channels:
                raise DecodeError(
                    "undecodable-audio",
                    f"the stream changes from {self.rate} Hz x {self.channels} channels to "
                    f"{frame.sample_rate} Hz x {_channels(frame)} mid-stream",
                )
            self._position = position
            samples = _frame_array(frame)
            lo, hi = max(start - position, 0), min(stop - position, len(samples))
            if hi > lo:
                chunks.append(samples[lo:hi])
            position += len(samples)  # frames follow each other: coarse timestamps open no gaps
            if position >= stop:
                break
        return chunks, position

    def _seek(self, start: int, stream: Any) -> tuple[Any, Iterator[Any]]:
        """Seek to a key frame ``_SEEK_PREROLL_SECONDS`` before ``start``: its first frame and the rest."""
        target = max(0.0, start / self.rate - _SEEK_PREROLL_SECONDS)
        try:
            if stream.time_base:
                self._container.seek(int(target / stream.time_base), stream=stream, backward=True)
            else:
                self._container.seek(int(target * self._av.time_base), backward=True)
        except self._av.error.FFmpegError:
            return None, iter(())
        frames = self._container.decode(stream)
        return next(frames, None), frames

    def _check_complete(self, end: int, stop: int) -> None:
        """Refuse an MP4 or Matroska stream that ends well before its header says (a truncated file)."""
        if self.format not in _EXACT_DURATION or end >= stop:
            return
        stream = self._container.streams.audio[0]
        if stream.duration is not None and stream.time_base:
            declared = float(stream.duration * stream.time_base)
        elif self._container.duration is not None:
            declared = self._container.duration / self._av.time_base
        else:
            return
        expected = min(declared, stop / self.rate)
        if end / self.rate < expected - _TRUNCATION_SLACK_SECONDS:
            raise DecodeError(
                "undecodable-audio",
                f"truncated: the audio ends at {end / self.rate:.3f} s, the {self.format} header says {declared:.3f} s",
            )


def _time(frame: Any) -> Fraction | None:
    """A frame's presentation time in seconds, if it has one."""
    if frame.pts is None or not frame.time_base:
        return None
    return Fraction(frame.pts) * Fraction(frame.time_base)


def _channels(frame: Any) -> int:
    return int(frame.layout.nb_channels)


def _frame_array(frame: Any) -> np.ndarray:
    """A frame's samples as ``(frames, channels)`` in its own sample type."""
    values = frame.to_ndarray()
    if frame.format.is_planar:
        return np.ascontiguousarray(values.T)
    return values.reshape(-1, _channels(frame))


def _message(exc: BaseException) -> str:
    """PyAV's message without the ``'<none>'`` file name it gives in-memory files."""
    return str(exc).replace(": '<none>'", "")
