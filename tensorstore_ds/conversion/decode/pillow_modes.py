"""Pillow's image modes to ``RGB`` or ``L``, and decoded arrays to images.

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
* Animated files (GIF, WebP, APNG) give their first frame (the caller's
  ``Image.open`` does that).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ...errors import DecodeError

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


def oriented_rgb_or_l(im: Image.Image, orientation: int) -> Image.Image:
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
        eight = scale_16_to_8(values)
    key = im.info.get("transparency")
    if isinstance(key, int) and im.mode != "F":
        alpha = np.where(values == key, 0, 255).astype(np.uint8)
        return _on_white(Image.fromarray(np.stack([eight, alpha], axis=-1), "LA"))
    return Image.fromarray(eight, "L")


def scale_16_to_8(values: np.ndarray) -> np.ndarray:
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
        return scale_16_to_8(array)
    if np.issubdtype(kind, np.floating):
        if not np.isfinite(array).all():
            raise DecodeError("bad-array", "the float array holds NaN or inf")
        clipped = np.clip(array, 0.0, 1.0).astype(np.float32)  # before the cast: 1e300 would overflow
        return np.rint(clipped * np.float32(255.0)).astype(np.uint8)
    raise DecodeError("bad-array", f"unsupported dtype {kind}; use uint8, uint16 or float")
