"""Decode one image into a fixed-size ``(size, size, 3)`` uint8 RGB tensor.

Pipeline: ``Image.open`` -> size check -> EXIF orientation -> JPEG draft ->
mode conversion -> orientation transpose -> LANCZOS resize -> ``np.asarray``.

Mode rules
----------
Whatever Pillow opens, the output is RGB:

* ``RGB`` is kept as is.
* ``L``, ``1``, ``P`` without transparency, ``CMYK``, ``YCbCr``, ``LAB``,
  ``HSV`` (and any other mode Pillow converts) go through ``convert("RGB")``.
  ``L`` and ``1`` are resized as one channel and expanded to RGB afterwards.
* ``RGBA``, ``LA``, ``PA``, ``RGBa``, ``La``, ``P`` with transparency
  (``info["transparency"]`` or an RGBA palette), and ``L``/``RGB`` with a
  transparent colour key are alpha-composited onto a **white** background.
* 16-bit and 32-bit integer modes (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``,
  ``I``, e.g. 16-bit grayscale PNG or TIFF) are clipped to 0..65535 and scaled
  to 8 bit as ``round(value / 257)``, so 65535 -> 255 and 32896 -> 128 (Pillow's
  own conversion would clip, saturating everything above 255).
* ``F`` (float) is clipped to 0..255 and rounded; NaN becomes 0.
* Animated files (GIF, WebP, APNG) give their first frame.

EXIF orientation is applied, and the reported original size is the size after
orientation. JPEG files are decoded with DCT scaling (``Image.draft``) to the
smallest scale (1/2, 1/4 or 1/8) that still covers, in both dimensions, the
region the final resize reads at its resolution (rotations by EXIF orientation
5-8 are accounted for). The 1/8 scale, which keeps only each 8x8 block's mean,
is used only when the result is still twice that size. On photo-like content
this stays under one grey level of mean absolute difference from a full
decode (see ``tools/bench_decode.py``).

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
import math
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

RESIZE_MODES = ("squash", "center-crop", "pad")

ImageSource = Union[bytes, bytearray, memoryview, str, "os.PathLike[str]", np.ndarray]

_WHITE = (255, 255, 255)
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_DIRECT_MODES = frozenset({"RGB", "L"})
_WIDE_INT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
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
        output is small enough; much faster, visually identical.
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
        C-contiguous uint8 ``(size, size, 3)`` RGB array. It is read-only
        (it wraps Pillow's buffer without a copy); copy it to modify it.
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
        rgb = _oriented_rgb_or_l(im, orientation)
        out = _resize(rgb, options.size, options.resize)
        pixels = np.asarray(out if out.mode == "RGB" else out.convert("RGB"))
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


def _open(source: bytes | str | os.PathLike[str], options: ImageOptions) -> tuple[Image.Image, int, tuple[int, int]]:
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
        im.draft("RGB", _draft_request(width, height, orientation, options))
    return orientation


def _orientation(im: Image.Image) -> int:
    """EXIF orientation 1..8 (1 when absent or invalid)."""
    try:
        value = im.getexif().get(_EXIF_ORIENTATION, 1)
    except _LIBRARY_ERRORS:  # a broken EXIF block must not lose the image
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _draft_request(width: int, height: int, orientation: int, options: ImageOptions) -> tuple[int, int]:
    """Size to ask ``Image.draft`` for: the needed size, doubled when 1/8 would be used.

    Pillow picks the largest DCT scale (1/2, 1/4, 1/8) that keeps the decoded
    image at least as large as the request. The 1/8 scale keeps only each 8x8
    block's mean (a box filter), which is visibly blurrier than LANCZOS when the
    remaining reduction is small, so it is only used with a 2x margin.
    """
    need_w, need_h = _needed_size(width, height, orientation, options)
    if min(width // need_w, height // need_h) >= 8:
        return 2 * need_w, 2 * need_h
    return need_w, need_h


def _needed_size(width: int, height: int, orientation: int, options: ImageOptions) -> tuple[int, int]:
    """Smallest stored-image size that still covers what the final resize reads.

    Computed in displayed (oriented) coordinates and swapped back for
    orientations 5-8, which rotate by 90 degrees.
    """
    w, h = (height, width) if orientation >= 5 else (width, height)
    size = options.size
    if options.resize == "squash":
        nw, nh = size, size
    else:
        side = min(w, h) if options.resize == "center-crop" else max(w, h)
        scale = size / side
        nw, nh = max(1, math.ceil(w * scale)), max(1, math.ceil(h * scale))
    return (nh, nw) if orientation >= 5 else (nw, nh)


def _oriented_rgb_or_l(im: Image.Image, orientation: int) -> Image.Image:
    """Apply the mode rules (result ``RGB`` or ``L``) and the EXIF orientation."""
    im = _to_rgb_or_l(im)
    if orientation != 1:
        im = im.transpose(_TRANSPOSE[orientation])
    return im


def _to_rgb_or_l(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode in _WIDE_INT_MODES or mode == "F":
        return _wide_to_l(im)
    if _has_alpha(im):
        return _on_white(im)
    if mode in _DIRECT_MODES:
        return im
    if mode == "1":
        return im.convert("L")
    return im.convert("RGB")


def _has_alpha(im: Image.Image) -> bool:
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        return True
    return im.mode == "P" and im.palette is not None and im.palette.mode.endswith("A")


def _on_white(im: Image.Image) -> Image.Image:
    """Alpha-composite onto a white background."""
    if im.mode == "La":
        im = im.convert("LA")
    rgba = im if im.mode == "RGBA" else im.convert("RGBA")
    background = Image.new("RGB", rgba.size, _WHITE)
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background


def _wide_to_l(im: Image.Image) -> Image.Image:
    """16/32-bit integer or float pixels to 8-bit ``L`` (key transparency composited)."""
    values = np.asarray(im)
    if im.mode == "F":
        eight = np.nan_to_num(values, nan=0.0, posinf=255.0, neginf=0.0)
        eight = np.rint(np.clip(eight, 0.0, 255.0)).astype(np.uint8)
    else:
        eight = _scale_16_to_8(values)
    key = im.info.get("transparency")
    if isinstance(key, int) and im.mode != "F":
        alpha = np.where(values == key, 0, 255).astype(np.uint8)
        return _on_white(Image.fromarray(np.stack([eight, alpha], axis=-1), "LA"))
    return Image.fromarray(eight, "L")


def _scale_16_to_8(values: np.ndarray) -> np.ndarray:
    """``round(clip(v, 0, 65535) / 257)`` as uint8, in integer arithmetic."""
    wide = np.clip(values, 0, 65535).astype(np.uint32, copy=False)
    return ((wide + 128) // 257).astype(np.uint8)


def image_from_array(array: np.ndarray) -> Image.Image:
    """Turn a decoded pixel array into an ``L``, ``RGB`` or ``RGBA`` image.

    Parameters
    ----------
    array
        ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W, 4)`` of uint8,
        uint16 (scaled by ``round(v / 257)``) or float (read as 0..1, scaled by
        255, rounded and clipped). Four channels are RGBA; the caller's mode
        rules composite them on white.

    Returns
    -------
    Image.Image
        The image, sharing no memory with ``array``.

    Raises
    ------
    DecodeError
        ``bad-array`` for other dtypes or shapes, empty arrays, NaN or inf.
    """
    shape = array.shape
    if array.ndim == 3 and shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise DecodeError("bad-array", f"expected (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {shape}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise DecodeError("bad-array", f"the array has no pixels: shape {shape}")
    eight = _array_to_uint8(array)
    mode = "L" if eight.ndim == 2 else ("RGB" if eight.shape[2] == 3 else "RGBA")
    return Image.fromarray(np.ascontiguousarray(eight), mode)


def _array_to_uint8(array: np.ndarray) -> np.ndarray:
    kind = array.dtype
    if kind == np.uint8:
        return array
    if kind == np.uint16:
        return _scale_16_to_8(array)
    if np.issubdtype(kind, np.floating):
        if not np.isfinite(array).all():
            raise DecodeError("bad-array", "the float array holds NaN or inf")
        clipped = np.clip(array, 0.0, 1.0).astype(np.float32)  # before the cast: 1e300 would overflow
        return np.rint(clipped * np.float32(255.0)).astype(np.uint8)
    raise DecodeError("bad-array", f"unsupported dtype {kind}; use uint8, uint16 or float")


def _resize(im: Image.Image, size: int, rule: str) -> Image.Image:
    """Resize an ``L`` or ``RGB`` image to ``size x size`` by ``rule``."""
    lanczos = Image.Resampling.LANCZOS
    width, height = im.size
    if rule == "squash":
        return im.resize((size, size), lanczos)
    if rule == "center-crop":
        side = min(width, height)
        left, top = (width - side) / 2, (height - side) / 2
        return im.resize((size, size), lanczos, box=(left, top, left + side, top + side))
    scale = size / max(width, height)
    new_w = min(size, max(1, round(width * scale)))
    new_h = min(size, max(1, round(height * scale)))
    canvas = Image.new(im.mode, (size, size), 0)
    canvas.paste(im.resize((new_w, new_h), lanczos), ((size - new_w) // 2, (size - new_h) // 2))
    return canvas
