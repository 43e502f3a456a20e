"""Drawing a preview sheet with Pillow: the header, image tiles and audio rows, with wrapped text.

Text uses Pillow's built-in font, so no system font is needed and equal inputs
give equal bytes.
"""

from __future__ import annotations

import bisect
import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .layout import (
    CAPTION_LINES,
    CLIP_LABEL_WIDTH,
    COLUMNS,
    GAP,
    GREY,
    HEADER_BG,
    INK,
    MIN_CELL,
    PAD,
    PAPER,
    RED,
    SPEC_HEIGHT,
    TEXT_SIZE,
    TITLE_SIZE,
    WAVE_HEIGHT,
    WAVE_WIDTH,
    Box,
    PreviewLayout,
    Samples,
    Tile,
)
from .signal import spectrogram, waveform

if TYPE_CHECKING:
    from PIL import Image, ImageDraw, ImageFont

    Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


@functools.lru_cache(maxsize=4)
def _font(size: int) -> Font:
    """Pillow's built-in font at ``size`` (Pillow >= 10.1 with FreeType), else its fixed bitmap font."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow 10.0 has no size; without FreeType there is no scaling
        return ImageFont.load_default()


def _line_height(font: Font) -> int:
    return int(font.getbbox("Agjy|")[3]) + 4


def _wrap(text: str, font: Font, width: int, max_lines: int) -> list[str]:
    """``text`` broken into lines of at most ``width`` pixels; a cut-off end is marked ``...``."""
    from PIL import ImageFont

    text = _plain(text[: max_lines * width // 2])  # more than fits: every glyph is at least 2 pixels wide
    if not isinstance(font, ImageFont.FreeTypeFont):  # the bitmap font draws Latin-1 only
        text = text.encode("latin-1", "replace").decode("latin-1")
    lines: list[str] = []
    line = ""
    for word in text.split():
        trial = f"{line} {word}" if line else word
        if font.getlength(trial) <= width:
            line = trial
            continue
        if line:
            lines.append(line)
        while font.getlength(word) > width and len(lines) <= max_lines:
            cut = _fit(word, font, width)
            lines.append(word[:cut])
            word = word[cut:]
        line = word
        if len(lines) > max_lines:
            break
    if line:
        lines.append(line)
    if len(lines) > max_lines:
        last = lines[max_lines - 1]
        while last and font.getlength(last + "...") > width:
            last = last[:-1]
        lines = [*lines[: max_lines - 1], last.rstrip() + "..."]
    return lines


def _fit(word: str, font: Font, width: int) -> int:
    """How many leading characters of ``word`` fit in ``width`` pixels (at least one)."""
    fits = bisect.bisect_right(range(1, len(word) + 1), float(width), key=lambda k: float(font.getlength(word[:k])))
    return max(1, fits)


_DASHES = str.maketrans(dict.fromkeys("\u2010\u2011\u2012\u2013\u2014\u2015\u2212", "-"))


def _plain(text: str) -> str:
    """Accents and dashes spelled with the few glyphs of the built-in font (the page keeps the real text)."""
    import unicodedata

    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c)).translate(_DASHES)


Style = tuple[tuple[int, int, int], int]  # colour, font size


def _draw_lines(draw: ImageDraw.ImageDraw, box: Box, lines: Sequence[str], styles: Sequence[Style]) -> None:
    """Lines from the top of ``box``, line ``k`` in ``styles[k]`` (the last style goes on)."""
    y = box.y
    for k, line in enumerate(lines):
        colour, size = styles[min(k, len(styles) - 1)]
        draw.text((box.x, y), line, fill=colour, font=_font(size))
        y += _line_height(_font(size))


def _header(width: int, lines: list[str]) -> tuple[list[str], list[Style], int]:
    """The header's lines wrapped to ``width``, their styles, and its height: title, counts, details, failures."""
    wrapped: list[str] = []
    styles: list[Style] = []
    for k, line in enumerate(lines):
        style = (RED if line.startswith("failed:") else INK if k < 2 else GREY, TITLE_SIZE if k == 0 else TEXT_SIZE)
        parts = _wrap(line, _font(style[1]), width, 4)
        wrapped += parts
        styles += [style] * len(parts)
    return wrapped, styles, sum(_line_height(_font(size)) for _, size in styles)


def _canvas(width: int, body: int, lines: list[str]) -> tuple[Image.Image, ImageDraw.ImageDraw, Box, int]:
    """A white sheet with the header drawn; returns the header's box and where the tiles start."""
    from PIL import Image, ImageDraw

    wrapped, styles, height = _header(width - 2 * PAD, lines)
    top = PAD + height + PAD
    sheet = Image.new("RGB", (width, top + PAD + body), PAPER)
    draw = ImageDraw.Draw(sheet)
    draw.rectangle((0, 0, width - 1, top - PAD // 2), fill=HEADER_BG)
    header = Box(PAD, PAD, width - 2 * PAD, height)
    _draw_lines(draw, header, wrapped, styles)
    return sheet, draw, header, top + PAD // 2


def draw_images(data: Samples, header_lines: list[str], location: str) -> tuple[Image.Image, PreviewLayout]:
    """A contact sheet: each stored image unchanged, its index, original size and caption below it."""
    from PIL import Image

    side = data.rows.shape[1]
    cell = max(side, MIN_CELL)  # small stored images keep their size; their labels keep a readable width
    font = _font(TEXT_SIZE)
    labels = [
        (
            f"#{index}  " + (f"{w}x{h} original" if w >= 0 else "original size unknown"),
            *_wrap(text, font, cell, CAPTION_LINES),
        )
        for index, (h, w), text in zip(data.indices, data.extents, data.captions)
    ]
    label_h = max(map(len, labels)) * _line_height(font)  # as tall as the longest label needs
    columns = min(COLUMNS, len(data.indices))
    step_y = side + 4 + label_h + GAP
    width = max(2 * PAD + columns * cell + (columns - 1) * GAP, 720)
    sheet, draw, header, top = _canvas(width, -(-len(data.indices) // columns) * step_y - GAP, header_lines)
    tiles = []
    for k, (index, pixels, lines, caption) in enumerate(zip(data.indices, data.rows, labels, data.captions)):
        x, y = PAD + (k % columns) * (cell + GAP), top + (k // columns) * step_y
        image, label = Box(x, y, side, side), Box(x, y + side + 4, cell, label_h)
        sheet.paste(Image.fromarray(pixels), (x, y))
        _draw_lines(draw, label, lines, [(INK, TEXT_SIZE), (GREY, TEXT_SIZE)])
        tiles.append(Tile(index, image, None, label, lines, caption))
    return sheet, PreviewLayout(location, "image", sheet.size, header, tuple(header_lines), tuple(tiles), None, None)


def draw_audio(data: Samples, header_lines: list[str], location: str) -> tuple[Image.Image, PreviewLayout]:
    """One row per clip: waveform over log-mel spectrogram (padding hatched), lengths and caption beside."""
    from PIL import Image

    font = _font(TEXT_SIZE)
    row_h = WAVE_HEIGHT + 4 + SPEC_HEIGHT
    width = 2 * PAD + WAVE_WIDTH + GAP + CLIP_LABEL_WIDTH
    sheet, draw, header, top = _canvas(width, len(data.indices) * (row_h + GAP) - GAP, header_lines)
    padded = data.rows.shape[1]
    tiles = []
    for k, (index, clip, length, caption) in enumerate(zip(data.indices, data.rows, data.extents, data.captions)):
        y = top + k * (row_h + GAP)
        wave, spec = Box(PAD, y, WAVE_WIDTH, WAVE_HEIGHT), Box(PAD, y + WAVE_HEIGHT + 4, WAVE_WIDTH, SPEC_HEIGHT)
        label = Box(PAD + WAVE_WIDTH + GAP, y, CLIP_LABEL_WIDTH, row_h)
        true = int(min(max(int(length), 0), padded)) if length >= 0 else padded
        sheet.paste(Image.fromarray(waveform(clip, true, data.rate)), (wave.x, wave.y))
        sheet.paste(Image.fromarray(spectrogram(clip, true, data.rate)), (spec.x, spec.y))
        lines = (
            f"#{index}  {true / data.rate:.2f} s of {padded / data.rate:.2f} s",
            f"padding {(padded - true) / data.rate:.2f} s (hatched, after the red line)"
            if true < padded
            else "no padding",
            *_wrap(caption, font, CLIP_LABEL_WIDTH, row_h // _line_height(font) - 2),
        )
        _draw_lines(
            draw, label, lines, [(INK, TEXT_SIZE), (RED if true < padded else GREY, TEXT_SIZE), (GREY, TEXT_SIZE)]
        )
        tiles.append(Tile(index, wave, spec, label, lines, caption))
    return sheet, PreviewLayout(location, "audio", sheet.size, header, tuple(header_lines), tuple(tiles), None, None)


# --- audio images ----------------------------------------------------------
