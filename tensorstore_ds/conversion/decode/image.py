"""Decode one image into a fixed-size ``(size, size, 3)`` uint8 RGB tensor.

Pipeline: ``Image.open`` -> size check -> EXIF orientation -> JPEG draft ->
mode conversion -> orientation transpose -> LANCZOS resize -> ``np.asarray``.

Mode rules and resizing
-----------------------
Whatever Pillow opens becomes RGB by the rules of
:mod:`~tensorstore_ds.conversion.decode.pillow_modes` (alpha composited on
white, 16-bit scaled, first frame of animations). EXIF orientation is applied,
and the reported original size is the size after orientation. JPEG files are
decoded with DCT scaling (``Image.draft``) and resized by LANCZOS under the
rules of :mod:`~tensorstore_ds.conversion.decode.resize`, which explains the
draft scale margin and its cost.

Failures
--------
Every failure raises :class:`~tensorstore_ds.errors.DecodeError` with reason
``empty-file`` (zero bytes), ``decompression-bomb`` (more than ``max_pixels``
pixels, checked before the pixels are decoded, or Pillow's own
``Image.MAX_IMAGE_PIXELS`` guard), ``undecodable-image`` (anything Pillow or
the file system raises, including a missing path or one that is not a regular
file, such as a FIFO) or ``bad-array`` (an array
source of an unsupported dtype or shape, or with NaN/inf). Truncated files may
decode partially when Pillow accepts them; they never raise anything other
than :class:`DecodeError`.

Corrupt data
------------
PNG files are checked against their chunk CRCs before decoding (Pillow checks
only the chunks before the pixel data), so a PNG with flipped bits in its
pixel data fails with ``undecodable-image`` instead of decoding to wrong
pixels; a chunk cut short by truncation is left to Pillow. Formats without
checksums (JPEG, GIF, WebP, BMP, ...) can decode corrupt data to wrong pixels
without any error: nothing in the file tells. EPS files are never opened (Pillow
would run Ghostscript on them), so they fail with ``undecodable-image``.
"""

from __future__ import annotations

import functools
import io
import numbers
import os
import re
import stat
import struct
import zlib
from dataclasses import dataclass
from typing import Union

import numpy as np
from PIL import Image

from ...errors import DecodeError, OptionsError
from .pillow_modes import image_from_array, oriented_rgb_or_l
from .resize import draft_request, resize

RESIZE_MODES = ("squash", "center-crop", "pad")

ImageSource = Union[bytes, bytearray, memoryview, str, "os.PathLike[str]", np.ndarray]

_EXIF_ORIENTATION = 0x0112
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_CRC_BLOCK = 2**20
_REFUSED_FORMATS = frozenset({"EPS"})  # Pillow hands EPS files to Ghostscript, a PostScript interpreter
# Everything Pillow, its plugins and numpy are known to raise on bad input.
_LIBRARY_ERRORS = (
    OSError,
    SyntaxError,
    struct.error,
    ValueError,
    EOFError,
    MemoryError,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
    OverflowError,
    RuntimeError,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)


@dataclass(frozen=True)
class ImageOptions:
    """How images become tensors.

    Parameters
    ----------
    size
        Output side: every image becomes ``(size, size, 3)`` uint8.
    resize
        ``"squash"`` stretches the whole image to ``size x size`` (the legacy
        behaviour); ``"center-crop"`` scales the short side to ``size`` and
        keeps the centre; ``"pad"`` scales the long side to ``size`` and
        centres the image on black.
    max_pixels
        Images with more pixels are rejected as ``decompression-bomb`` before
        their pixels are decoded.
    draft
        Let JPEG decoding scale by 1/2, 1/4 or 1/8 (DCT scaling) when the
        output is small enough, with the margin of
        :mod:`~tensorstore_ds.conversion.decode.resize`: much faster, within
        one grey level of a full decode on average.
    """

    size: int = 224
    resize: str = "squash"
    max_pixels: int = 89_478_485
    draft: bool = True

    def __post_init__(self) -> None:
        if not _is_integer(self.size) or self.size < 1:
            raise OptionsError(f"ImageOptions.size must be an integer >= 1, got {self.size!r}")
        if self.resize not in RESIZE_MODES:
            raise OptionsError(f"ImageOptions.resize must be one of {', '.join(RESIZE_MODES)}, got {self.resize!r}")
        if not _is_integer(self.max_pixels) or self.max_pixels < 1:
            raise OptionsError(f"ImageOptions.max_pixels must be an integer >= 1, got {self.max_pixels!r}")
        object.__setattr__(self, "size", int(self.size))  # numpy integers -> int
        object.__setattr__(self, "max_pixels", int(self.max_pixels))
        object.__setattr__(self, "draft", bool(self.draft))


def _is_integer(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def decode_image(source: ImageSource, options: ImageOptions) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode and resize one image.

    Parameters
    ----------
    source
        Encoded bytes, a path, or a decoded pixel array (see
        :func:`image_from_array` for the accepted arrays).
    options
        Output size and resize rule.

    Returns
    -------
    pixels
        C-contiguous uint8 ``(size, size, 3)`` RGB array. It may be read-only
        (when it wraps Pillow's buffer without a copy); copy it to modify it.
    orig_size
        ``(height, width)`` of the source after EXIF orientation.

    Raises
    ------
    DecodeError
        On any failure; ``reason`` tells which (see the module docstring).
    """
    if isinstance(source, np.ndarray):
        im, orientation = image_from_array(source), 1
        orig_size = (im.height, im.width)
    else:
        im, orientation, orig_size = _open(source, options)
    try:
        pixels = resize(oriented_rgb_or_l(im, orientation), options.size, options.resize)
    except _LIBRARY_ERRORS as exc:
        raise _undecodable(exc) from exc
    finally:
        im.close()  # multi-frame files keep their file open until closed
    return pixels, orig_size


def _undecodable(exc: BaseException) -> DecodeError:
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return DecodeError("decompression-bomb", str(exc))
    # Pillow names in-memory files by their repr, whose address changes from run to run.
    detail = re.sub(r"<_io\.BytesIO object at 0x[0-9a-f]+>", "the image bytes", str(exc))
    return DecodeError("undecodable-image", f"{type(exc).__name__}: {detail}")


def _open(
    source: bytes | bytearray | memoryview | str | os.PathLike[str], options: ImageOptions
) -> tuple[Image.Image, int, tuple[int, int]]:
    """Open and load: the image, its EXIF orientation and its oriented (height, width)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise DecodeError("empty-file", "the image has zero bytes")
        fp: io.BytesIO | str = io.BytesIO(source)
    elif isinstance(source, (str, os.PathLike)):
        fp = os.fspath(source)
        try:
            st = os.stat(fp)
        except OSError as exc:
            raise _undecodable(exc) from exc
        if not stat.S_ISREG(st.st_mode):  # a FIFO or a device would block or never end
            raise DecodeError("undecodable-image", f"{fp} is not a regular file")
        if st.st_size == 0:
            raise DecodeError("empty-file", f"{fp} has zero bytes")
    else:
        raise DecodeError("undecodable-image", f"cannot decode an image from {type(source).__name__}")
    try:
        _check_png_crcs(fp)
        im = Image.open(fp, formats=_formats())
    except DecodeError:
        raise
    except _LIBRARY_ERRORS as exc:
        raise _undecodable(exc) from exc
    width, height = im.size
    try:
        orientation = _prepare(im, options)
        im.load()
    except BaseException as exc:
        im.close()
        if isinstance(exc, _LIBRARY_ERRORS) and not isinstance(exc, DecodeError):
            raise _undecodable(exc) from exc
        raise
    return im, orientation, ((width, height) if orientation >= 5 else (height, width))


@functools.cache
def _formats() -> tuple[str, ...]:
    """Every format Pillow opens, in its own order, except the refused ones."""
    Image.init()
    return tuple(f for f in Image.ID if f not in _REFUSED_FORMATS)


def _check_png_crcs(fp: io.BytesIO | str) -> None:
    """Raise ``undecodable-image`` when a complete chunk of a PNG fails its CRC.

    Anything that is not a PNG, and a chunk cut short, is left to Pillow. A
    BytesIO is rewound afterwards.
    """
    f = open(fp, "rb") if isinstance(fp, str) else fp  # noqa: SIM115 (closed below only if opened here)
    try:
        if f.read(8) != _PNG_SIGNATURE:
            return
        offset = 8
        while len(header := f.read(8)) == 8:
            length, kind = struct.unpack(">I4s", header)
            crc, remaining = zlib.crc32(kind), length
            while remaining and (block := f.read(min(remaining, _CRC_BLOCK))):
                crc = zlib.crc32(block, crc)
                remaining -= len(block)
            stored = f.read(4)
            if remaining or len(stored) < 4:
                return
            if crc != int.from_bytes(stored, "big"):
                raise DecodeError(
                    "undecodable-image",
                    f"PNG chunk {kind.decode('latin-1')!r} at byte {offset} fails its CRC check: the file is corrupt",
                )
            if kind == b"IEND":
                return
            offset += 12 + length
    finally:
        if f is fp:
            f.seek(0)
        else:
            f.close()


def _prepare(im: Image.Image, options: ImageOptions) -> int:
    """Reject oversized images, set up the JPEG draft, return the EXIF orientation."""
    width, height = im.size
    if width * height > options.max_pixels:
        raise DecodeError(
            "decompression-bomb",
            f"image is {width}x{height} = {width * height} pixels, more than max_pixels={options.max_pixels}",
        )
    orientation = _orientation(im)
    if options.draft and im.format in ("JPEG", "MPO"):
        im.draft("RGB", draft_request(width, height, orientation, options.size, options.resize))
    return orientation


def _orientation(im: Image.Image) -> int:
    """EXIF orientation 1..8 (1 when absent or invalid)."""
    try:
        value = im.getexif().get(_EXIF_ORIENTATION, 1)
    except _LIBRARY_ERRORS:  # a broken EXIF block must not lose the image
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1
