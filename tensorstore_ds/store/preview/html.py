"""The preview as a small static page: ``DIR/index.html`` and the files it shows.

Every shown image is cut from the sheet into ``DIR/preview/`` (for an image
store the stored pixels, unchanged), every clip is written as a 16-bit PCM WAV
at the store's sample rate beside it and played by an ``<audio>`` element. The
page links only to those files, loads nothing from elsewhere (its Content
Security Policy forbids it), and HTML-escapes every caption, key and path:
they come from the source dataset and are untrusted.
"""

from __future__ import annotations

import html
import wave
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

    from .layout import Box, PreviewLayout, Tile

FILES = "preview"  # the page's files, in a folder of their own beside index.html
STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 16px; color: #141414; background: #fff; }
header { background: #f0f2f5; padding: 8px 16px; margin-bottom: 16px; }
header h1 { font-size: 18px; margin: 4px 0; word-break: break-all; }
header p { margin: 2px 0; color: #444; }
header p.failed { color: #b02020; }
main.image { display: grid; grid-template-columns: repeat(auto-fill, 224px); gap: 16px 12px; }
main.image figure { margin: 0; width: 224px; }
main.audio figure { display: flex; gap: 12px; margin: 0 0 16px; }
figcaption .index { font-weight: bold; }
audio { display: block; margin: 4px 0; }
figcaption .caption { color: #444; overflow-wrap: anywhere; }
"""
POLICY = "default-src 'none'; img-src 'self'; media-src 'self'; style-src 'unsafe-inline'"


def write_page(directory: Path, sheet: Image.Image, layout: PreviewLayout, clips: np.ndarray | None, rate: int) -> Path:
    """Write ``directory/index.html`` and its files; return the page's path.

    Parameters
    ----------
    directory
        Where the page goes (created if missing; other files in it are left alone).
    sheet
        The drawn preview sheet; each tile's picture is cut from it.
    layout
        Where each tile is on ``sheet``, with its text.
    clips
        For an audio store, the shown clips in tile order (written as WAV).
    rate
        The clips' sample rate, Hz.
    """
    files = directory / FILES
    files.mkdir(parents=True, exist_ok=True)
    figures = []
    for k, tile in enumerate(layout.tiles):
        name = f"{k:03d}-{tile.index}"
        box = tile.media.bounds if tile.spectrogram is None else _union(tile.media, tile.spectrogram)
        sheet.crop(box).save(files / f"{name}.png", format="PNG", compress_level=1)
        player = ""
        if clips is not None:
            _write_wav(files / f"{name}.wav", clips[k], rate)
            player = f'<audio controls preload="none" src="{FILES}/{name}.wav"></audio>'
        figures.append(_figure(tile, f"{FILES}/{name}.png", box[2] - box[0], box[3] - box[1], player))
    page = directory / "index.html"
    page.write_text(_document(layout, figures), encoding="utf-8")
    return page


def _union(first: Box, second: Box) -> tuple[int, int, int, int]:
    """The bounds of both boxes (a clip's waveform and spectrogram, as one picture)."""
    return (
        min(first.x, second.x),
        min(first.y, second.y),
        max(first.bounds[2], second.bounds[2]),
        max(first.bounds[3], second.bounds[3]),
    )


def _figure(tile: Tile, src: str, width: int, height: int, player: str) -> str:
    """One sample: its picture, then its index and size or lengths, its player, and its whole caption."""
    first, *details = tile.lines
    about = f"<div>{html.escape(details[0])}</div>" if tile.spectrogram is not None and details else ""
    return (
        f'<figure><img src="{html.escape(src)}" width="{width}" height="{height}" alt="sample {tile.index}">'
        f'<figcaption><div class="index">{html.escape(first)}</div>{about}{player}'
        f'<div class="caption">{html.escape(tile.caption)}</div></figcaption></figure>'
    )


def _document(layout: PreviewLayout, figures: list[str]) -> str:
    title, *lines = layout.header_lines
    paragraphs = "".join(
        f'<p class="{"failed" if line.startswith("failed:") else "about"}">{html.escape(line)}</p>' for line in lines
    )
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{POLICY}">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>"
        f"<header><h1>{html.escape(title)}</h1>{paragraphs}</header>\n"
        f'<main class="{layout.media}">\n' + "\n".join(figures) + "\n</main></body></html>\n"
    )


def _write_wav(path: Path, clip: np.ndarray, rate: int) -> None:
    """The stored clip (padding included) as mono 16-bit PCM."""
    import numpy as np

    pcm = np.round(np.clip(clip.astype(np.float32), -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.tobytes())
