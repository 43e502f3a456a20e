"""What a preview sheet is made of: its measures, and where everything is on it.

:class:`PreviewLayout` names the box of every tile, label and the header in
sheet pixels, so a program (or a test) can find the stored pixels and the text
it looks for.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

DEFAULT_SAMPLES = {"image": 36, "audio": 12}
COLUMNS = 6  # tiles per row of an image sheet
MIN_CELL = 176  # narrowest tile, for stores of small images
CAPTION_LINES = 4  # caption lines under an image, after its index and size
PAD, GAP = 16, 12  # sheet margin, space between tiles
TEXT_SIZE, TITLE_SIZE = 13, 18
WAVE_WIDTH, WAVE_HEIGHT, SPEC_HEIGHT, CLIP_LABEL_WIDTH = 640, 80, 80, 380
EXAMPLES = 3  # failure keys shown per reason
MEDIA_OPTIONS = {
    "image": ("image_size", "resize", "max_pixels", "jpeg_draft"),
    "audio": ("sample_rate", "audio_seconds", "resampler"),
}
INK, GREY, RED, PAPER, HEADER_BG = (20, 20, 20), (105, 105, 105), (214, 39, 40), (255, 255, 255), (240, 242, 245)


@dataclasses.dataclass(frozen=True)
class Box:
    """A rectangle of the sheet, in pixels."""

    x: int
    y: int
    width: int
    height: int

    @property
    def bounds(self) -> tuple[int, int, int, int]:
        """``(left, top, right, bottom)``, as Pillow's ``crop`` takes it."""
        return (self.x, self.y, self.x + self.width, self.y + self.height)


@dataclasses.dataclass(frozen=True)
class Tile:
    """One shown sample.

    Parameters
    ----------
    index
        The sample's index in the store.
    media
        The stored image (pixel for pixel), or the clip's waveform.
    spectrogram
        The clip's log-mel spectrogram (audio stores only).
    label
        The box holding ``lines``.
    lines
        The text drawn in ``label``: index and size or length, then the caption's start.
    caption
        The sample's whole caption.
    """

    index: int
    media: Box
    spectrogram: Box | None
    label: Box
    lines: tuple[str, ...]
    caption: str


@dataclasses.dataclass(frozen=True)
class PreviewLayout:
    """What :func:`preview` drew, and where.

    Parameters
    ----------
    store
        The store's path or URL.
    media
        ``"image"`` or ``"audio"``.
    size
        The sheet's ``(width, height)``.
    header
        The header's box; it holds ``header_lines``, wrapped to its width.
    header_lines
        Title, counts, options and one line per failure reason.
    tiles
        One per shown sample, in the order shown.
    png, html
        The files written: the sheet, and the page's ``index.html``.
    """

    store: str
    media: str
    size: tuple[int, int]
    header: Box
    header_lines: tuple[str, ...]
    tiles: tuple[Tile, ...]
    png: Path | None
    html: Path | None


@dataclasses.dataclass(frozen=True)
class Samples:
    """What the sheet shows: indices, media rows, sizes or lengths, captions."""

    indices: list[int]
    rows: np.ndarray  # (n, S, S, 3) uint8 images or (n, T) float16 clips
    extents: np.ndarray  # (n, 2) original (h, w), or (n,) true clip lengths
    captions: list[str]
    rate: int  # audio sample rate (0 for images)
