"""Fit a decoded image to ``size x size``: the JPEG draft scale, then one LANCZOS resize.

Where the time goes
-------------------
Pillow's LANCZOS resize costs about six multiply-adds per channel for every
pixel it reads, so on a photo it costs more than decoding the JPEG. Decoding
with DCT scaling (``Image.draft``: 1/2, 1/4 or 1/8) shrinks what the resize
reads almost for free; what it cannot shrink is the entropy (Huffman)
decoding, which is the same at every scale.

The draft scale rule
--------------------
A scaled IDCT is a blurrier low-pass filter than LANCZOS. When the LANCZOS
step after it is a small reduction (the decoded image barely larger than the
output), the result is visibly softer than a full decode resized by LANCZOS:
on detailed photos, a mean difference of 2 to 5 grey levels. So the draft
keeps a margin: the largest DCT scale whose decoded image is still
``DRAFT_MARGIN`` (1.25) times the size the final resize reads, in both
dimensions (the displayed orientation is accounted for); the 1/8 scale, which
keeps only each 8x8 block's mean, needs ``EIGHTH_MARGIN`` (2). The LANCZOS
step then reduces by 1.25x to 2.5x. On photo-like JPEGs of mixed sizes this
stays within one grey level of the full decode on average (0.76, 0.68 with
Pillow's own resize;
``tools/bench_convert.py`` prints the mean and the worst image). Without the
margin the mean is 1.1 levels and the worst image 5; a margin of 1.5 halves
the mean again for a fifth more time per image.

The LANCZOS step
----------------
After a draft (and for any reduction under ``2 * REDUCING_GAP``) it runs as
exact fixed-point sums (:mod:`~tensorstore_ds.conversion.decode.lanczos`):
the same filter as Pillow's, the same bytes on every machine, in compiled C
passes (about 2.5 times as fast as Pillow's own resize on a draft-decoded
photo) or, in an install without a C compiler, as banded matrix products
(about 1.3 times as fast as Pillow). Larger reductions go to Pillow. When the
compiled passes are missing and PIL is pillow-simd, pillow-simd does the
whole resize (about as fast as the compiled passes, with other rounding).

Images the draft cannot shrink
------------------------------
Other formats (PNG, WebP, ...) are decoded at full size. Their resize first
averages whole pixel blocks (Pillow's ``reducing_gap``: ``Image.reduce`` by
an integer factor), keeping a LANCZOS reduction of at least ``REDUCING_GAP``
(3) after it, which Pillow documents as almost indistinguishable from a
LANCZOS resize of the full image, at a fraction of its cost on large images.
"""

from __future__ import annotations

import functools
import importlib.metadata
import math
from pathlib import Path

import numpy as np
from PIL import Image

from .lanczos import compiled, lanczos_resize

DRAFT_MARGIN = 1.25
EIGHTH_MARGIN = 2.0
REDUCING_GAP = 3.0


def draft_request(width: int, height: int, orientation: int, size: int, rule: str) -> tuple[int, int]:
    """Size to ask ``Image.draft`` for: what the resize reads, times ``DRAFT_MARGIN``.

    Pillow picks the largest DCT scale (1/2, 1/4, 1/8) whose decoded image is
    at least the requested size in both dimensions.

    Parameters
    ----------
    width, height
        The stored image's size.
    orientation
        Its EXIF orientation (5-8 rotate by 90 degrees).
    size, rule
        The output side and resize rule (see :func:`resize`).
    """
    need_w, need_h = needed_size(width, height, orientation, size, rule)
    margin = DRAFT_MARGIN
    if min(width // math.ceil(need_w * margin), height // math.ceil(need_h * margin)) >= 8:
        margin = EIGHTH_MARGIN  # 1/8 keeps only each 8x8 block's mean: a box filter, blurrier still
    return math.ceil(need_w * margin), math.ceil(need_h * margin)


def needed_size(width: int, height: int, orientation: int, size: int, rule: str) -> tuple[int, int]:
    """Smallest stored-image size that still covers what the final resize reads.

    Computed in displayed (oriented) coordinates and swapped back for
    orientations 5-8, which rotate by 90 degrees.
    """
    w, h = (height, width) if orientation >= 5 else (width, height)
    if rule == "squash":
        nw, nh = size, size
    else:
        side = min(w, h) if rule == "center-crop" else max(w, h)
        scale = size / side
        nw, nh = max(1, math.ceil(w * scale)), max(1, math.ceil(h * scale))
    return (nh, nw) if orientation >= 5 else (nw, nh)


def resize(im: Image.Image, size: int, rule: str) -> np.ndarray:
    """Resize an ``L`` or ``RGB`` image to ``size x size`` RGB pixels.

    Parameters
    ----------
    im
        The oriented image.
    size
        Output side.
    rule
        ``"squash"`` stretches the whole image; ``"center-crop"`` scales the
        short side to ``size`` and keeps the centre; ``"pad"`` scales the long
        side to ``size`` and centres the image on black.

    Returns
    -------
    numpy.ndarray
        C-contiguous uint8 ``(size, size, 3)``; an ``L`` image's one channel
        repeated. It may be read-only.
    """
    width, height = im.size
    if rule == "squash":
        return _rgb(_lanczos(im, (size, size)))
    if rule == "center-crop":
        side = min(width, height)
        left, top = (width - side) / 2, (height - side) / 2
        return _rgb(_lanczos(im, (size, size), (left, top, left + side, top + side)))
    scale = size / max(width, height)
    new_w = min(size, max(1, round(width * scale)))
    new_h = min(size, max(1, round(height * scale)))
    canvas = np.zeros((size, size, 3), np.uint8)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    canvas[top : top + new_h, left : left + new_w] = _lanczos(im, (new_w, new_h))
    return canvas


def _rgb(pixels: np.ndarray) -> np.ndarray:
    return pixels if pixels.shape[2] == 3 else np.ascontiguousarray(np.broadcast_to(pixels, (*pixels.shape[:2], 3)))


def _lanczos(
    im: Image.Image, size: tuple[int, int], box: tuple[float, float, float, float] | None = None
) -> np.ndarray:
    """``(height, width, channels)`` pixels: LANCZOS in fixed point (:mod:`.lanczos`), or by Pillow.

    Pillow resizes what it first averages by blocks (``reducing_gap``),
    returns an image already the size asked for as it is, and does all of it
    when it is pillow-simd and the compiled passes are not built (pillow-simd
    is then faster than the matrix products).
    """
    left, top, right, bottom = box if box is not None else (0.0, 0.0, float(im.width), float(im.height))
    reduces = (right - left) / size[0] >= 2 * REDUCING_GAP or (bottom - top) / size[1] >= 2 * REDUCING_GAP
    if reduces or (box is None and im.size == size) or (pillow_simd() and not compiled()):
        out = np.asarray(im.resize(size, Image.Resampling.LANCZOS, box=box, reducing_gap=REDUCING_GAP))
        return out.reshape(size[1], size[0], -1)
    return lanczos_resize(np.asarray(im).reshape(im.height, im.width, -1), size, box)


@functools.cache
def pillow_simd() -> bool:
    """Whether PIL is pillow-simd (a drop-in build of Pillow with a vectorised resize)."""
    import PIL

    try:
        simd = importlib.metadata.distribution("pillow-simd")
    except importlib.metadata.PackageNotFoundError:
        return False
    return Path(str(simd.locate_file("PIL"))).resolve() == Path(PIL.__file__).parent.resolve()
