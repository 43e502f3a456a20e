"""Before decoding: can this installation read the audio formats the source holds?

Every audio row is decoded by soundfile (libsndfile) first and by PyAV
(:mod:`.containers`) for what libsndfile cannot open. Which formats libsndfile
reads depends on its version: MP3 needs libsndfile >= 1.1, and M4A/AAC or
WebM it never reads. Without PyAV, a source of such files would fail row by
row as ``undecodable-audio``; :func:`check_audio_formats` looks at the first
rows instead, before any is decoded, and stops with an
:class:`~tensorstore_ds.errors.AudioFormatError` naming the format and the
fix. With PyAV installed every such format is read, and nothing is checked.

A row's format is told by its file suffix (a path, URL, or the ``path`` of a
Hugging Face ``Audio`` value) or, for bare bytes, by their first bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from itertools import islice
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import soundfile as sf

from ...errors import AudioFormatError, SampleError
from . import containers

PEEK_ROWS = 16  # rows looked at; a source mixes formats rarely, and each row read here is read again later

# libsndfile's name for the format of each suffix it may read
SNDFILE_SUFFIXES = {
    ".wav": "WAV",
    ".flac": "FLAC",
    ".ogg": "OGG",
    ".oga": "OGG",
    ".opus": "OGG",
    ".mp3": "MP3",
    ".aif": "AIFF",
    ".aiff": "AIFF",
}
# suffixes only PyAV reads, and what to call them
CONTAINER_SUFFIXES = {
    ".m4a": "M4A/AAC",
    ".mp4": "MP4",
    ".aac": "AAC",
    ".webm": "WebM",
    ".mka": "Matroska audio",
    ".mkv": "Matroska",
    ".wma": "WMA",
    ".3gp": "3GP",
}
_MIN_LIBSNDFILE = {"MP3": "1.1", "OGG": "1.0.29"}  # versions that added them (OGG: with Opus)
INSTALL_AV = "pip install av (PyAV decodes MP3, M4A/AAC, WebM/Opus and the other formats FFmpeg reads)"


def check_audio_formats(rows: Iterable[Any], media_of: Callable[[Any], Any]) -> None:
    """Stop when a format among the first rows can be read neither by this libsndfile nor by PyAV.

    Parameters
    ----------
    rows
        The source's rows (read lazily; only the first :data:`PEEK_ROWS`, and
        none when PyAV is installed).
    media_of
        A row's media reference: an object with ``kind``, ``value`` and ``key``
        (:class:`~tensorstore_ds.conversion.columns.MediaRef`). A row whose
        reference cannot be made is skipped; it fails on its own later.

    Raises
    ------
    AudioFormatError
        Naming the format, the row it was seen in, and the fix.
    """
    if containers.available():
        return
    readable = set(sf.available_formats())
    for values in islice(rows, PEEK_ROWS):
        try:
            ref = media_of(values)
        except SampleError:
            continue
        fmt, name = _format_of(ref)
        if fmt is None:
            continue
        if fmt == "PyAV":
            raise AudioFormatError(name, ref.key, "soundfile never reads and PyAV is not installed", INSTALL_AV)
        if fmt not in readable:
            needed = _MIN_LIBSNDFILE.get(fmt)
            version = f" (it needs libsndfile >= {needed})" if needed else ""
            raise AudioFormatError(
                fmt,
                ref.key,
                f"this libsndfile {sf.__libsndfile_version__} cannot read{version}",
                f"{INSTALL_AV}, or pip install --upgrade soundfile (its wheels bundle a recent libsndfile)",
            )


def _format_of(ref: Any) -> tuple[str | None, str]:
    """``(libsndfile format or "PyAV" or None, a name for people)`` of one media reference."""
    value = ref.value
    if ref.kind == "array":
        return None, ""
    if isinstance(value, (bytes, bytearray, memoryview)):
        found = _magic(bytes(value[:12]))
        if found is not None:
            return found
        name = ref.key  # the file name the bytes came with, if any
    else:
        name = str(value)
    suffix = PurePosixPath(urlsplit(name).path if "://" in name else name).suffix.lower()
    if suffix in SNDFILE_SUFFIXES:
        return SNDFILE_SUFFIXES[suffix], SNDFILE_SUFFIXES[suffix]
    if suffix in CONTAINER_SUFFIXES:
        return "PyAV", CONTAINER_SUFFIXES[suffix]
    return None, ""


def _magic(head: bytes) -> tuple[str, str] | None:
    """The format of a file that starts with ``head``, for the formats told apart here."""
    for prefix, fmt in ((b"ID3", "MP3"), (b"fLaC", "FLAC"), (b"OggS", "OGG"), (b"RIFF", "WAV")):
        if head.startswith(prefix):
            return fmt, fmt
    if head[4:8] == b"ftyp":
        return "PyAV", "M4A/MP4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "PyAV", "WebM/Matroska"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0 and (head[1] >> 1) & 3:
        return "MP3", "MP3"  # an MPEG audio frame header (layer bits 00 would be ADTS AAC)
    return None
