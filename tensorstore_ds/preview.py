"""Preview sheets: one PNG that shows what a conversion made, at a glance.

A sheet has a header (the store's location, sample count, preprocessing
options, failures by reason with example keys) and one tile per shown sample:
for image stores the stored 224x224 pixels, unchanged, above the sample's
index, original size and the start of its caption; for audio stores one row
per clip with its waveform and log-mel spectrogram (the zero padding after the
true length hatched and marked in red), its lengths and its caption.

How it works, and what it promises:

- **Layout as data.** :func:`preview` returns a :class:`PreviewLayout` naming
  the box of every tile, label and the header in sheet pixels, so a program (or
  a test) can find the stored pixels and the text it looks for.
- **Reads only what it shows.** Sample arrays are gathered with ``take`` and
  captions are read from the few chunk files that hold them, so a store at a
  URL downloads the chunks of the shown samples, never the whole store.
- **Deterministic.** The samples are the first N, ``seed``'s random N (shown
  in index order) or the given ``indices``; drawing uses no clock and no
  system font (Pillow's built-in one), so equal inputs give equal bytes.
- **Untrusted text.** Captions and keys are drawn as text in the PNG and
  HTML-escaped in the page (:mod:`tensorstore_ds.preview_html`).

Heavy modules (numpy, Pillow) are imported when a preview is made, not when
this module is imported (the command line imports it to build its parser).
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import functools
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import OptionsError, StoreFormatError, StoreNotFoundError, TensorStoreDSError

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    from . import Store

    Font = ImageFont.FreeTypeFont | ImageFont.ImageFont

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
class _Samples:
    """What the sheet shows: indices, media rows, sizes or lengths, captions."""

    indices: list[int]
    rows: np.ndarray  # (n, S, S, 3) uint8 images or (n, T) float16 clips
    extents: np.ndarray  # (n, 2) original (h, w), or (n,) true clip lengths
    captions: list[str]
    rate: int  # audio sample rate (0 for images)


def preview(
    store: str | os.PathLike[str] | Store,
    path: str | os.PathLike[str] | None = None,
    *,
    samples: int | None = None,
    seed: int | None = None,
    indices: Sequence[int] | None = None,
    html: str | os.PathLike[str] | None = None,
) -> PreviewLayout:
    """Draw a preview sheet of a store into a PNG file and/or a static HTML page.

    Parameters
    ----------
    store
        A store directory, a store URL, or an opened :class:`~tensorstore_ds.Store`.
    path
        The PNG file to write.
    samples
        How many samples to show (default: 36 images, 12 clips); the first ones
        unless ``seed`` is given.
    seed
        Show a random pick of ``samples`` samples, the same for the same seed.
    indices
        Show exactly these samples, in this order (instead of ``samples``/``seed``).
    html
        A directory to write ``index.html`` into, with each image (and for audio
        a 16 kHz WAV per clip) as a file beside it.

    Returns
    -------
    PreviewLayout
        Where every tile, label and the header are on the sheet.

    Raises
    ------
    OptionsError
        No output, ``samples`` below 1, ``seed`` with ``indices``, an index out
        of range, or a store without samples.
    StoreNotFoundError, StoreFormatError
        As :func:`~tensorstore_ds.open_store` raises them.
    """
    if path is None and html is None:
        raise OptionsError("preview has nothing to write: give path (a PNG file), html (a directory), or both")
    opened = _open(store)
    try:
        chosen, how = _choose(opened, samples, seed, indices)
        data = _read(opened, chosen)
        header = _header_lines(opened, how)
        draw = _draw_images if opened.media == "image" else _draw_audio
        sheet, layout = draw(data, header, opened.location)
    finally:
        if opened is not store:
            opened.close()
    png = None
    if path is not None:
        png = Path(path)
        png.parent.mkdir(parents=True, exist_ok=True)
        sheet.save(png, format="PNG", compress_level=1)
    page = None
    if html is not None:
        from .preview_html import write_page

        page = write_page(Path(html), sheet, layout, data.rows if layout.media == "audio" else None, data.rate)
    return dataclasses.replace(layout, png=png, html=page)


def _open(store: str | os.PathLike[str] | Store) -> Store:
    from . import Store, open_store

    return store if isinstance(store, Store) else open_store(store)


def _choose(
    store: Store, samples: int | None, seed: int | None, indices: Sequence[int] | None
) -> tuple[list[int], str]:
    """The indices to show, and how they were chosen (for the header)."""
    n = len(store)
    if n == 0:
        counts = store.manifest.counts
        raise OptionsError(
            f"store {store.location} has no samples to preview: {counts.get('rows_read', 0)} rows "
            f"read, {counts.get('failed', 0)} failed ({_reasons(counts)}); see its failures.jsonl"
        )
    if indices is not None:
        if seed is not None or samples is not None:
            raise OptionsError("give indices, or samples and seed, not both")
        chosen = [int(i) for i in indices]
        bad = [i for i in chosen if not 0 <= i < n]
        if not chosen or bad:
            raise OptionsError(
                f"index {bad[0] if bad else '(none)'} is out of range: store {store.location} "
                f"has {n} samples, indices 0..{n - 1}"
            )
        return chosen, f"{len(chosen)} chosen samples"
    count = DEFAULT_SAMPLES[store.media] if samples is None else int(samples)
    if count < 1:
        raise OptionsError(f"samples={samples}: show at least 1 sample")
    count = min(count, n)
    if seed is None:
        return list(range(count)), f"the first {count}"
    import numpy as np

    picked = np.random.default_rng(seed).choice(n, size=count, replace=False)
    return sorted(int(i) for i in picked), f"{count} at random (seed {seed})"


def _read(store: Store, chosen: list[int]) -> _Samples:
    """The shown samples' rows, sizes or lengths and captions (only their chunks are read)."""
    import numpy as np

    where = np.asarray(chosen, dtype=np.int64)
    audio = store.media == "audio"
    rows = store.array("audio" if audio else "images").take(where)
    extent = "audio_length" if audio else "image_size"
    extents = (
        store.array(extent).take(where)
        if extent in store.array_names
        else np.full((len(chosen), 2) if not audio else len(chosen), -1)
    )
    has_caption = "caption" in store.manifest.text
    captions = [_text_value(store, "caption", i) if has_caption else "" for i in chosen]
    rate = _sample_rate(store) if audio else 0
    return _Samples(chosen, rows, extents, captions, rate)


def _sample_rate(store: Store) -> int:
    rate = store.manifest.options.get("sample_rate")
    if type(rate) is not int or rate < 1:
        raise StoreFormatError(f"{store.location}/manifest.json", f"options.sample_rate {rate!r} is not a rate in Hz")
    return rate


def _text_value(store: Store, name: str, i: int) -> str:
    """Value ``i`` of a UTF-8 text column, read from the chunk files that hold it (not the whole column)."""
    start, stop = (int(v) for v in _rows(store, f"text/{name}/offsets", i, i + 2))
    total = store.manifest.arrays[f"text/{name}/bytes"].shape[0]
    if not 0 <= start <= stop <= total:
        raise StoreFormatError(
            f"{store.location}/text/{name}/offsets",
            f"value {i} spans bytes {start}..{stop}, outside the column's {total} bytes",
        )
    raw = _rows(store, f"text/{name}/bytes", start, stop).tobytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StoreFormatError(
            f"{store.location}/text/{name}",
            f"value {i} is not valid UTF-8 ({exc}); run tensorstore_ds.verify on the store",
        ) from None


def _rows(store: Store, name: str, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of a 1-D store array, read from the chunk files that hold them."""
    import numpy as np

    spec = store.manifest.arrays[name]
    dtype = np.dtype(spec.dtype).newbyteorder("<")
    parts = [np.empty(0, dtype)]
    for k in range(start // spec.chunk_rows, -(-stop // spec.chunk_rows)):
        lo, hi = max(start, k * spec.chunk_rows), min(stop, (k + 1) * spec.chunk_rows)
        with store.files.open(spec.chunk_key(k)) as f:
            f.seek((lo - k * spec.chunk_rows) * dtype.itemsize)
            raw = f.read((hi - lo) * dtype.itemsize)
        if len(raw) != (hi - lo) * dtype.itemsize:
            raise StoreFormatError(store.files.where(spec.chunk_key(k)), "chunk file is shorter than the format says")
        parts.append(np.frombuffer(raw, dtype))
    return np.concatenate(parts)


def _header_lines(store: Store, how: str) -> list[str]:
    """Title, counts, options, source and failures by reason with example keys."""
    m, media = store.manifest, store.media
    rows = store.array("audio" if media == "audio" else "images")
    kind = "x".join(map(str, rows.shape[1:])) + f" {rows.dtype}"
    lines = [
        f"tensorstore_ds preview of {store.location}",
        f"{len(store):,} {media} samples ({kind}); {_number(m.counts.get('rows_read'))} rows read, "
        f"{_number(m.counts.get('failed', 0))} failed; showing {how}",
    ]
    hidden = {name for other, names in MEDIA_OPTIONS.items() if other != media for name in names}
    shown = {k: v for k, v in m.options.items() if k not in hidden and v not in (None, [], "", {})}
    lines.append("options: " + ", ".join(f"{k}={v}" for k, v in shown.items()))
    lines.append(f"source: {m.source.get('kind', '?')} {m.source.get('spec', '')}".rstrip())
    examples: dict[str, list[str]] = {}
    if m.counts.get("failed"):
        for record in store.failures():
            keys = examples.setdefault(str(record.get("reason")), [])
            if len(keys) < EXAMPLES:
                keys.append(_shorten(str(record.get("key", record.get("row"))), 64))
    for reason, n in _by_reason(m.counts, examples):
        lines.append(f"failed: {n:,} x {reason} (e.g. {', '.join(examples.get(reason, [])) or '-'})")
    return lines


def _number(value: Any) -> str:
    """A count from the manifest, for people (``?`` if it is not a count)."""
    return f"{value:,}" if type(value) is int else "?"


def _by_reason(counts: dict[str, Any], examples: dict[str, list[str]]) -> list[tuple[str, int]]:
    found = counts.get("failed_by_reason") or {r: len(k) for r, k in examples.items()}
    return sorted(((str(r), int(n)) for r, n in found.items()), key=lambda rn: (-rn[1], rn[0]))


def _reasons(counts: dict[str, Any]) -> str:
    return ", ".join(f"{n} x {r}" for r, n in _by_reason(counts, {})) or "no failures recorded"


def _shorten(text: str, limit: int) -> str:
    """``text`` cut in the middle to at most ``limit`` characters (URLs keep host and file name)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit // 2 - 2] + "..." + text[-(limit - limit // 2 - 1) :]


# --- drawing ---------------------------------------------------------------


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


def _draw_images(data: _Samples, header_lines: list[str], location: str) -> tuple[Image.Image, PreviewLayout]:
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


def _draw_audio(data: _Samples, header_lines: list[str], location: str) -> tuple[Image.Image, PreviewLayout]:
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
        sheet.paste(Image.fromarray(_waveform(clip, true, data.rate)), (wave.x, wave.y))
        sheet.paste(Image.fromarray(_spectrogram(clip, true, data.rate)), (spec.x, spec.y))
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


def _waveform(clip: np.ndarray, true: int, rate: int) -> np.ndarray:
    """The clip's min/max envelope on a fixed -1..1 scale, one second per faint grid line."""
    import numpy as np

    samples = clip.astype(np.float32)
    starts = np.linspace(0, len(samples), WAVE_WIDTH + 1).astype(np.int64)[:-1].clip(0, max(len(samples) - 1, 0))
    low, high = np.minimum.reduceat(samples, starts), np.maximum.reduceat(samples, starts)
    scale = (WAVE_HEIGHT - 1) / 2
    top = np.round(scale * (1 - high.clip(-1, 1))).astype(np.int64)
    bottom = np.round(scale * (1 - low.clip(-1, 1))).astype(np.int64)
    y = np.arange(WAVE_HEIGHT)[:, None]
    image = np.full((WAVE_HEIGHT, WAVE_WIDTH, 3), PAPER, np.uint8)
    image[:, (np.arange(0, len(samples), rate) * WAVE_WIDTH // max(len(samples), 1))[1:]] = (225, 225, 225)
    image[int(scale)] = (200, 200, 200)
    image[(y >= top) & (y <= bottom)] = (31, 78, 121)
    return _mark_padding(image, true * WAVE_WIDTH // max(len(samples), 1))


def _spectrogram(clip: np.ndarray, true: int, rate: int) -> np.ndarray:
    """Log-mel power (80 dB range below the clip's peak) in a dark-to-light colour map, low bands at the bottom."""
    import numpy as np

    n_fft = 1 << max(8, int(np.ceil(np.log2(rate * 0.064))))  # 64 ms windows: 1024 at 16 kHz
    hop = max(1, -(-len(clip) // WAVE_WIDTH))
    lead = max(n_fft // 2 - hop // 2, 0)  # frame k is centred on waveform column k
    padded = np.zeros(lead + hop * WAVE_WIDTH + n_fft, np.float32)
    padded[lead : lead + len(clip)] = clip
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop][:WAVE_WIDTH]
    power = np.abs(np.fft.rfft(frames * np.hanning(n_fft).astype(np.float32), axis=1)) ** 2
    db = 10 * np.log10(power @ _mel_filters(rate, n_fft, SPEC_HEIGHT).T + 1e-10)
    floor = max(float(db.max()) - 80, -100)  # 80 dB below the peak; silence (-100 dB) stays dark
    level = ((db - floor) / 80).clip(0, 1).T[::-1]  # (bands, columns), low frequencies last
    return _mark_padding(_colour(level), true * WAVE_WIDTH // max(len(clip), 1))


@functools.lru_cache(maxsize=4)
def _mel_filters(rate: int, n_fft: int, bands: int) -> np.ndarray:
    """Triangular filters on the HTK mel scale from 0 Hz to the Nyquist frequency, ``(bands, n_fft // 2 + 1)``."""
    import numpy as np

    mel = np.linspace(0, 2595 * np.log10(1 + rate / 2 / 700), bands + 2)
    edges = 700 * (10 ** (mel / 2595) - 1)
    freqs = np.linspace(0, rate / 2, n_fft // 2 + 1)
    rising = (freqs[None, :] - edges[:-2, None]) / (edges[1:-1] - edges[:-2])[:, None]
    falling = (edges[2:, None] - freqs[None, :]) / (edges[2:] - edges[1:-1])[:, None]
    return np.maximum(0, np.minimum(rising, falling)).astype(np.float32)


_COLOURS = ((0, 0, 4), (40, 17, 89), (114, 31, 129), (183, 55, 121), (241, 96, 93), (254, 175, 119), (252, 253, 191))


def _colour(level: np.ndarray) -> np.ndarray:
    """Levels in 0..1 as RGB through a perceptually ordered (magma-like) map."""
    import numpy as np

    anchors = np.linspace(0, 1, len(_COLOURS))
    table = np.asarray(_COLOURS, np.float32)
    return np.stack([np.interp(level, anchors, table[:, c]) for c in range(3)], axis=-1).round().astype(np.uint8)


def _mark_padding(image: np.ndarray, start: int) -> np.ndarray:
    """Hatch the columns from ``start`` on (the zero padding) and draw a red line where it begins."""
    import numpy as np

    if start >= image.shape[1]:
        return image
    region = image[:, start:]
    y, x = np.mgrid[0 : region.shape[0], 0 : region.shape[1]]
    region[:] = (region * 0.45 + 140).astype(np.uint8)
    region[(x + y) % 8 == 0] = (120, 120, 120)
    image[:, max(start - 1, 0) : start + 1] = RED
    return image


# --- command line ----------------------------------------------------------


def add_preview_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``tensorstore-ds preview``; sets ``run`` to :func:`run_preview`, as every subcommand does."""
    parser.add_argument("store", help="store directory or URL (only the shown samples' chunks are downloaded)")
    parser.add_argument("-o", "--output", metavar="PNG", help="the preview sheet to write, e.g. sheet.png")
    parser.add_argument("--html", metavar="DIR", help="write DIR/index.html, with each image (and a WAV per clip)")
    parser.add_argument("--samples", type=int, default=None, help="how many samples (default: 36 images, 12 clips)")
    parser.add_argument("--seed", type=int, default=None, help="show a random pick, the same for the same seed")
    parser.add_argument("--indices", type=_index_list, default=None, help="show these samples, e.g. 0,17,256")
    parser.set_defaults(run=run_preview)
    return parser


def _index_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of sample indices") from None


def run_preview(args: argparse.Namespace) -> int:
    """Make the preview the parsed arguments ask for; print what was written."""
    layout = preview(
        args.store, args.output, samples=args.samples, seed=args.seed, indices=args.indices, html=args.html
    )
    written = [str(p) for p in (layout.png, layout.html) if p is not None]
    print(f"preview of {len(layout.tiles)} samples of {layout.store}: {', '.join(written)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tensorstore_ds.preview``: the command on its own, with the exit status of ``tensorstore-ds``."""
    parser = argparse.ArgumentParser(prog="tensorstore-ds preview", description=__doc__.split("\n")[0])
    args = add_preview_args(parser).parse_args(argv)
    try:
        return run_preview(args)
    except TensorStoreDSError as exc:
        print(f"tensorstore-ds preview: error: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, (OptionsError, StoreNotFoundError)) else 1


if __name__ == "__main__":
    sys.exit(main())
