"""LANCZOS resizing in exact fixed point: compiled, or as banded matrix products.

Why
---
Pillow's LANCZOS resize is not vectorised; after a JPEG draft decode it takes
about half of a photo's decoding time. The same separable filter is computed
here in one of two ways, which give the same bytes:

- ``_resample``, a small C extension built when the package is installed (an
  optional build: where no compiler is found, the install goes on without it).
  Each pass loops over whole input rows, which the compiler vectorises (AVX2
  where the CPU has it); about 2.5 times as fast as the matrix products.
- Banded matrix products, one for each block of ``BLOCK`` output pixels over
  the input window that block reads, on the BLAS that numpy already has:
  about twice as fast as Pillow for a draft-decoded photo.

Exact on every machine
----------------------
The weights are fixed point (``WEIGHT_BITS`` fractional bits) and the pixels
integers, so every product and every partial sum is an integer below 2**24
(255 times the weights' absolute sum, at most about 1.3, times 2**14), which
float32 holds exactly whatever the order of summation, and int32 holds
exactly too. Both ways round each pass the same way, so the result is the same
bit for bit on every CPU and BLAS, with or without the extension, as a store's
determinism needs.

The filter
----------
Pillow's: LANCZOS with a = 3, its support widened by the reduction factor,
the same pixel centres and the same normalisation. It filters rows first and
rounds to integers between the passes, where Pillow filters columns first: the
results differ by rounding, on average by 0.2 grey levels.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np


def _load_compiled() -> Callable[..., None] | None:
    """The extension's ``resample``, or None where the install had no C compiler."""
    try:
        from ._resample import resample
    except ImportError:  # the matrix products give the same bytes
        return None
    return resample


_resample = _load_compiled()

WEIGHT_BITS = 14
BLOCK = 16
Band = tuple[int, int, int, int, np.ndarray]  # input rows lo:hi, output b:e, weights (e - b, hi - lo)
Weights = tuple[np.ndarray, np.ndarray, np.ndarray]  # int32: first input pixel, count, weights (out, taps)


def lanczos_resize(
    pixels: np.ndarray, size: tuple[int, int], box: tuple[float, float, float, float] | None = None
) -> np.ndarray:
    """Resize ``(H, W, C)`` uint8 pixels to ``size`` (width, height) with LANCZOS.

    Parameters
    ----------
    pixels
        The image, C-contiguous uint8 of shape ``(H, W, C)``.
    size
        Output ``(width, height)``.
    box
        The region of the input to resize, ``(left, top, right, bottom)`` in
        pixels (floats allowed), as in Pillow's ``Image.resize``; the whole
        image by default.

    Returns
    -------
    numpy.ndarray
        C-contiguous uint8 of shape ``(height, width, C)``.
    """
    height, width = pixels.shape[:2]
    left, top, right, bottom = box if box is not None else (0.0, 0.0, float(width), float(height))
    args = (size, float(left), float(top), float(right), float(bottom))
    if _resample is not None:
        return _compiled(np.ascontiguousarray(pixels), *args)
    return _matrix_products(pixels, *args)


def compiled() -> bool:
    """Whether the compiled passes (the ``_resample`` extension) are in use."""
    return _resample is not None


def _compiled(
    pixels: np.ndarray, size: tuple[int, int], left: float, top: float, right: float, bottom: float
) -> np.ndarray:
    """Both passes in C (``_resample.resample``): the same sums, in int32."""
    height, width, channels = pixels.shape
    vfirst, vcount, vweights = _weights(height, size[1], top, bottom)
    hfirst, hcount, hweights = _weights(width, size[0], left, right)
    x0, x1 = int(hfirst.min()), int((hfirst + hcount).max())
    out = np.empty((size[1], size[0], channels), np.uint8)
    assert _resample is not None
    _resample(
        pixels, height, width, channels, vfirst, vcount, vweights, vweights.shape[1],
        hfirst, hcount, hweights, hweights.shape[1], x0, x1, out,
    )  # fmt: skip
    return out


def _matrix_products(
    pixels: np.ndarray, size: tuple[int, int], left: float, top: float, right: float, bottom: float
) -> np.ndarray:
    """Both passes as banded float32 matrix products on numpy's BLAS."""
    height, width, channels = pixels.shape
    out_w, out_h = size
    verticals, horizontals = _bands(height, out_h, top, bottom), _bands(width, out_w, left, right)
    y0, y1 = _reach(verticals)
    x0, x1 = _reach(horizontals)  # only the pixels the filters read (a crop's box) are converted and filtered
    cols = x1 - x0
    with _one_blas_thread():  # small products: BLAS threads would only contend with the decode processes
        rows = pixels[y0:y1, x0:x1].reshape(y1 - y0, cols * channels).astype(np.float32)  # interleaved: (H, W * C)
        down = np.empty((out_h, cols * channels), np.float32)
        for lo, hi, b, e, weights in verticals:
            np.matmul(weights, rows[lo - y0 : hi - y0], out=down[b:e])
        planes = _rounded(down).reshape(out_h, cols, channels).transpose(0, 2, 1).reshape(out_h * channels, cols)
        across = np.empty((out_h, out_w, channels), np.float32)  # interleaved again, block by block
        for lo, hi, b, e, weights in horizontals:
            block = planes[:, lo - x0 : hi - x0] @ weights.T
            across[:, b:e] = block.reshape(out_h, channels, e - b).transpose(0, 2, 1)
    return _rounded(across).astype(np.uint8)


def _reach(bands: tuple[Band, ...]) -> tuple[int, int]:
    """The input pixels that any band reads: ``lo:hi``."""
    return min(band[0] for band in bands), max(band[1] for band in bands)


def _rounded(sums: np.ndarray) -> np.ndarray:
    """Fixed-point sums to integer pixel values 0..255 (still float32), in place."""
    sums += 2 ** (WEIGHT_BITS - 1)
    sums *= 2.0**-WEIGHT_BITS
    np.floor(sums, out=sums)
    return np.clip(sums, 0, 255, out=sums)


_LIMIT_LOCK = threading.Lock()
_LIMIT: dict[str, Any] = {"users": 0, "limiter": None}


@contextlib.contextmanager
def _one_blas_thread() -> Iterator[None]:
    """BLAS limited to one thread while any thread of this process is in here (about 10 microseconds).

    Counted, so that threads resizing at once restore the pools' own setting
    only when the last of them leaves.
    """
    with _LIMIT_LOCK:
        if _LIMIT["users"] == 0:
            _LIMIT["limiter"] = _blas().limit(limits=1, user_api="blas")
        _LIMIT["users"] += 1
    try:
        yield
    finally:
        with _LIMIT_LOCK:
            _LIMIT["users"] -= 1
            if _LIMIT["users"] == 0:
                _LIMIT["limiter"].restore_original_limits()
                _LIMIT["limiter"] = None


@functools.cache
def _blas() -> Any:
    """This process's BLAS thread pools, found once."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


@functools.lru_cache(maxsize=512)
def _weights(in_size: int, out_size: int, start: float, stop: float) -> Weights:
    """Fixed-point LANCZOS weights of each output pixel: its first input pixel, how many it reads, the weights."""
    scale = (stop - start) / out_size
    filter_scale = max(scale, 1.0)
    support = 3.0 * filter_scale
    taps = 2 * math.ceil(support) + 1
    centres = start + (np.arange(out_size) + 0.5) * scale
    first = np.maximum((centres - support + 0.5).astype(np.int64), 0)
    count = np.minimum((centres + support + 0.5).astype(np.int64), in_size) - first
    k = np.arange(taps)
    x = (k[None, :] + first[:, None] - centres[:, None] + 0.5) / filter_scale
    weights = np.where((k[None, :] < count[:, None]) & (np.abs(x) < 3.0), np.sinc(x) * np.sinc(x / 3.0), 0.0)
    weights /= weights.sum(axis=1, keepdims=True)
    table = first.astype(np.int32), count.astype(np.int32), np.rint(weights * 2**WEIGHT_BITS).astype(np.int32)
    for array in table:
        array.flags.writeable = False  # cached and shared by threads
    return table


@functools.lru_cache(maxsize=512)
def _bands(in_size: int, out_size: int, start: float, stop: float) -> tuple[Band, ...]:
    """The weights of :func:`_weights` as float32 blocks of ``BLOCK`` output pixels over the input they read."""
    first, count, fixed = _weights(in_size, out_size, start, stop)
    k = np.arange(fixed.shape[1])
    bands = []
    for b in range(0, out_size, BLOCK):
        e = min(b + BLOCK, out_size)
        lo, hi = int(first[b]), int((first[b:e] + count[b:e]).max())
        band = np.zeros((e - b, hi - lo), np.float32)
        cols = first[b:e, None] - lo + k[None, :]
        keep = k[None, :] < count[b:e, None]
        band[np.nonzero(keep)[0], cols[keep]] = fixed[b:e][keep]
        bands.append((lo, hi, b, e, band))
    return tuple(bands)
