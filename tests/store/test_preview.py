"""``preview``: the sheet's pixels, layout and text, the HTML page, remote stores, errors."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

import tensorstore_ds
from tensorstore_ds import open_store, preview
from tensorstore_ds.cli import main
from tensorstore_ds.errors import OptionsError, StoreNotFoundError
from tensorstore_ds.store.preview.layout import Box, PreviewLayout
from tests.httpserver import TestServer
from tests.media import pixels, sine

IMAGES = 14
BROKEN = {3: "b\u00e4d-3.png", 8: "bad-8.png"}  # rows whose files are not images
RATE = 16000
CLIPS = (1.0, 3.0, 0.5, 2.0)  # source seconds; the store pads or cuts to 2 s


def caption(i: int) -> str:
    """Untrusted text: markup, quotes, ampersands, accents, and a long tail to wrap and cut."""
    return f'<b>photo {i}</b> & "friends" \u2014 caf\u00e9 <script>x({i})</script> ' + "lorem ipsum " * (i % 4 * 6)


def _convert(source: Path, out: Path, **options: Any) -> Path:
    import datasets

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", str(out.parent / f"hf-cache-{out.name}"))
        tensorstore_ds.convert(str(source), out, progress=False, workers=0, **options)
    return out


def _folder(root: Path, names: list[str], captions: list[str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "metadata.jsonl", "w", encoding="utf-8") as meta:
        for name, text in zip(names, captions):
            meta.write(json.dumps({"file_name": name, "caption": text}) + "\n")
    return root


@pytest.fixture(scope="module")
def image_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """14 rows of PNGs of several sizes (rows 3 and 8 are not images), 4 images a chunk."""
    root = tmp_path_factory.mktemp("images")
    names = [BROKEN.get(i, f"{i:02d}.png") for i in range(IMAGES)]
    _folder(root / "src", names, [caption(i) for i in range(IMAGES)])
    for i, name in enumerate(names):
        if i in BROKEN:
            (root / "src" / name).write_bytes(b"<html>not an image</html>")
        else:
            Image.fromarray(pixels(24 + 8 * (i % 3), 40 + 4 * i, seed=i)).save(root / "src" / name)
    return _convert(root / "src", root / "store", chunk_mb=4 * 224 * 224 * 3 / 2**20)


@pytest.fixture(scope="module")
def audio_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Sines of 1, 3, 0.5 and 2 s, stored as 2 s clips, and one file that is not audio."""
    root = tmp_path_factory.mktemp("audio")
    names = [f"{i}.wav" for i in range(len(CLIPS) + 1)]
    _folder(root / "src", names, [caption(i) for i in range(len(names))])
    for i, seconds in enumerate(CLIPS):
        sf.write(root / "src" / names[i], sine(RATE, seconds, freq=300.0 * (i + 1)), RATE)
    (root / "src" / names[-1]).write_bytes(b"RIFF but no audio")
    return _convert(root / "src", root / "store", audio_seconds=2.0)


def sheet(layout: PreviewLayout) -> np.ndarray:
    assert layout.png is not None
    with Image.open(layout.png) as image:
        assert image.size == layout.size
        return np.asarray(image.convert("RGB"))


def region(pixels: np.ndarray, box: Box) -> np.ndarray:
    return pixels[box.y : box.y + box.height, box.x : box.x + box.width]


def inked(pixels: np.ndarray, box: Box) -> int:
    """How many pixels of ``box`` are not the background (something was drawn there)."""
    part = region(pixels, box).reshape(-1, 3)
    return int((part != part[-1]).any(axis=1).sum())


# --- image stores -----------------------------------------------------------


def test_image_tiles_are_the_stored_pixels(image_store: Path, tmp_path: Path) -> None:
    layout = preview(image_store, tmp_path / "sheet.png")
    store = open_store(image_store)
    got = sheet(layout)
    assert layout.media == "image" and [t.index for t in layout.tiles] == list(range(len(store)))
    assert layout.size[0] == 2 * 16 + 6 * 224 + 5 * 12
    sizes = store.array("image_size")[:]
    for tile in layout.tiles:
        np.testing.assert_array_equal(region(got, tile.media), store.array("images")[tile.index])
        h, w = sizes[tile.index]
        assert tile.lines[0] == f"#{tile.index}  {w}x{h} original"
        assert tile.caption == store.captions[tile.index] and tile.lines[1].startswith("<b>photo")
        assert inked(got, tile.label) > 100
        assert tile.media.y + tile.media.height <= tile.label.y  # the label is below its image
    long = [t for t in layout.tiles if len(t.caption) > 200]
    assert long and all(len(t.lines) == 5 and t.lines[-1].endswith("...") for t in long)
    assert inked(got, layout.header) > 500


def test_header_names_counts_options_and_failures(image_store: Path, tmp_path: Path) -> None:
    layout = preview(image_store, tmp_path / "sheet.png", samples=2)
    title, counts, options, source, failed = layout.header_lines
    assert title == f"tensorstore_ds preview of {image_store}"
    assert counts == "12 image samples (224x224x3 uint8); 14 rows read, 2 failed; showing the first 2"
    assert "resize=squash" in options and "image_size=224" in options and "sample_rate" not in options
    assert source == f"source: folder {image_store.parent / 'src'}"
    assert failed.startswith("failed: 2 x undecodable-image (e.g. ") and "b\u00e4d-3.png" in failed
    assert "bad-8.png" in failed
    got = sheet(layout)
    lines = layout.header.height // 5  # a band at the bottom of the header holds the failure line
    assert inked(got, Box(layout.header.x, layout.header.y + layout.header.height - lines, 400, lines)) > 50


def test_seed_and_indices_choose_samples(image_store: Path, tmp_path: Path) -> None:
    first = preview(image_store, tmp_path / "a.png", samples=5, seed=3)
    again = preview(image_store, tmp_path / "b.png", samples=5, seed=3)
    other = preview(image_store, tmp_path / "c.png", samples=5, seed=4)
    picked = [t.index for t in first.tiles]
    assert picked == sorted(set(picked)) and len(picked) == 5
    assert picked == [t.index for t in again.tiles] != [t.index for t in other.tiles]
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert "showing 5 at random (seed 3)" in first.header_lines[1]
    chosen = preview(image_store, tmp_path / "d.png", indices=[11, 0, 11])
    assert [t.index for t in chosen.tiles] == [11, 0, 11]
    assert len(preview(image_store, tmp_path / "e.png", samples=100).tiles) == 12


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"indices": [0, 12]}, r"index 12 is out of range: store .* has 12 samples, indices 0\.\.11"),
        ({"indices": [-1]}, r"index -1 is out of range"),
        ({"indices": []}, r"index \(none\) is out of range"),
        ({"samples": 0}, r"samples=0: show at least 1 sample"),
        ({"indices": [1], "seed": 2}, r"give indices, or samples and seed, not both"),
    ],
)
def test_bad_options(image_store: Path, tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(OptionsError, match=message):
        preview(image_store, tmp_path / "sheet.png", **kwargs)
    assert not (tmp_path / "sheet.png").exists()


def test_not_a_store_nothing_to_write_and_empty_store(tmp_path: Path) -> None:
    with pytest.raises(StoreNotFoundError, match=f"no tensorstore_ds store at {re.escape(str(tmp_path))}"):
        preview(tmp_path, tmp_path / "sheet.png")
    with pytest.raises(OptionsError, match="preview has nothing to write"):
        preview(tmp_path)
    source = _folder(tmp_path / "src", ["a.png", "b.png"], ["one", "two"])
    for name in ("a.png", "b.png"):
        (source / name).write_bytes(b"not an image")
    empty = _convert(source, tmp_path / "empty")
    with pytest.raises(
        OptionsError,
        match=r"store .*empty has no samples to preview: 2 rows read, 2 failed "
        r"\(2 x undecodable-image\)",
    ):
        preview(empty, tmp_path / "sheet.png")


def test_output_is_deterministic(image_store: Path, tmp_path: Path) -> None:
    for run in ("a", "b"):
        preview(image_store, tmp_path / run / "sheet.png", seed=1, samples=4, html=tmp_path / run / "page")
    files = [sorted(p.relative_to(tmp_path / run) for p in (tmp_path / run).rglob("*")) for run in ("a", "b")]
    assert files[0] == files[1]
    for name in files[0]:
        if (tmp_path / "a" / name).is_file():
            assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_works_without_a_scalable_font(image_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pillow 10.0, or a Pillow without FreeType: the fixed bitmap font, Latin-1 only."""
    from PIL import ImageFont

    from tensorstore_ds.store.preview.sheet import _font

    original = ImageFont.load_default

    def no_freetype(size: float | None = None) -> Any:
        if size is not None:
            raise ImportError("The _imagingft C module is not installed")
        return ImageFont.load_default_imagefont()

    monkeypatch.setattr(ImageFont, "load_default", no_freetype)
    _font.cache_clear()
    try:
        layout = preview(image_store, tmp_path / "sheet.png", samples=3)
    finally:
        monkeypatch.setattr(ImageFont, "load_default", original)
        _font.cache_clear()
    got = sheet(layout)
    assert all(inked(got, t.label) > 50 for t in layout.tiles) and inked(got, layout.header) > 300


# --- audio stores -----------------------------------------------------------


def test_audio_rows_show_waveform_spectrogram_and_padding(audio_store: Path, tmp_path: Path) -> None:
    layout = preview(audio_store, tmp_path / "sheet.png")
    got = sheet(layout)
    store = open_store(audio_store)
    assert layout.media == "audio" and [t.index for t in layout.tiles] == [0, 1, 2, 3]
    assert (
        layout.header_lines[-1]
        == "failed: 1 x undecodable-audio (e.g. " + str(audio_store.parent / "src" / "4.wav") + ")"
    )
    lengths = store.array("audio_length")[:]
    for tile, length in zip(layout.tiles, lengths):
        assert tile.spectrogram is not None
        assert inked(got, tile.media) > 1000 and inked(got, tile.spectrogram) > 1000 and inked(got, tile.label) > 100
        assert tile.lines[0] == f"#{tile.index}  {length / RATE:.2f} s of 2.00 s"
        red = np.flatnonzero((region(got, tile.media) == (214, 39, 40)).all(axis=-1).all(axis=0))
        if length < RATE * 2:  # the red line stands where the padding starts, on the whole height
            start = length * tile.media.width // (2 * RATE)
            assert red.tolist() == [start - 1, start] and tile.lines[1].startswith(f"padding {2 - length / RATE:.2f} s")
        else:
            assert red.size == 0 and tile.lines[1] == "no padding"
    assert lengths.tolist() == [RATE, 2 * RATE, RATE // 2, 2 * RATE]


def test_audio_page_plays_every_clip(audio_store: Path, tmp_path: Path) -> None:
    layout = preview(audio_store, None, indices=[2, 0], html=tmp_path / "page")
    assert layout.png is None and layout.html == tmp_path / "page" / "index.html"
    links = check_page(tmp_path / "page", layout)
    wavs = [link for link in links if link.endswith(".wav")]
    assert len(wavs) == 2
    clips = open_store(audio_store).array("audio")
    for link, tile in zip(wavs, layout.tiles):
        data, rate = sf.read(tmp_path / "page" / link, dtype="float32")
        assert rate == RATE and data.shape == (2 * RATE,)
        np.testing.assert_allclose(data, clips[tile.index].astype(np.float32), atol=1 / 32767)


# --- the HTML page ------------------------------------------------------------


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.links += [value or "" for name, value in attrs if name in ("src", "href", "srcset", "poster", "data")]


def check_page(directory: Path, layout: PreviewLayout) -> list[str]:
    """The page exists, links only to files in ``directory`` that exist, and shows every caption escaped."""
    text = (directory / "index.html").read_text(encoding="utf-8")
    parser = _Links()
    parser.feed(text)
    root = directory.resolve()
    for link in parser.links:
        assert "://" not in link and not link.startswith(("/", "//")), link
        target = (directory / link).resolve()
        assert target.is_relative_to(root) and target.is_file(), link
    for tile in layout.tiles:
        assert html.escape(tile.caption) in text
    assert "<script>" not in text and "<b>photo" not in text
    return parser.links


def test_image_page_shows_the_stored_images(image_store: Path, tmp_path: Path) -> None:
    layout = preview(image_store, tmp_path / "sheet.png", samples=7, html=tmp_path / "page")
    links = check_page(tmp_path / "page", layout)
    store = open_store(image_store)
    assert len(links) == 7
    for link, tile in zip(links, layout.tiles):
        with Image.open(tmp_path / "page" / link) as image:
            np.testing.assert_array_equal(np.asarray(image), store.array("images")[tile.index])
    text = (tmp_path / "page" / "index.html").read_text(encoding="utf-8")
    assert "b\u00e4d-3.png" in text and "Content-Security-Policy" in text


# --- remote stores and the command -------------------------------------------------


@pytest.fixture
def served(
    image_store: Path, http_server: TestServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    monkeypatch.setenv("TENSORSTORE_DS_CACHE", str(tmp_path / "cache"))
    http_server.serve_dir(image_store, "/s/")
    yield http_server.url_for("/s")


def test_remote_store_reads_only_the_shown_chunks(
    served: str, image_store: Path, http_server: TestServer, tmp_path: Path
) -> None:
    layout = preview(served, tmp_path / "sheet.png", indices=[5, 6])
    assert layout.store == served and layout.header_lines[0] == f"tensorstore_ds preview of {served}"
    images = {path for path in http_server.hits if "/images/c/" in path}
    assert images == {"/s/images/c/1/0/0/0"}  # 4 images a chunk: samples 5 and 6 are in chunk 1 of 3
    got = sheet(layout)
    for tile in layout.tiles:
        np.testing.assert_array_equal(region(got, tile.media), open_store(image_store).array("images")[tile.index])


def test_command(image_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sheet.png"
    assert (
        main(["preview", str(image_store), "-o", str(out), "--indices", "1,2", "--html", str(tmp_path / "page")]) == 0
    )
    assert out.is_file() and (tmp_path / "page" / "index.html").is_file()
    assert capsys.readouterr().out.startswith(f"preview of 2 samples of {image_store}: {out}")
    assert main(["preview", str(image_store), "-o", str(out), "--indices", "99"]) == 2
    assert "tensorstore-ds preview: error: index 99 is out of range" in capsys.readouterr().err
    assert main(["preview", str(tmp_path / "nothing"), "-o", str(out)]) == 2
    assert "error: no tensorstore_ds store at" in capsys.readouterr().err


def test_the_preview_subcommand(image_store: Path, tmp_path: Path) -> None:
    """``tensorstore-ds preview``: its arguments, parsed as the command line parses them, run the library."""
    from tensorstore_ds.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["preview", str(image_store), "-o", str(tmp_path / "s.png"), "--seed", "2"])
    assert (args.samples, args.seed, args.indices, args.html) == (None, 2, None, None)
    assert args.run(args) == 0 and (tmp_path / "s.png").is_file()
    with pytest.raises(SystemExit):
        parser.parse_args(["preview", str(image_store), "--indices", "1,x"])


# --- drawing details -----------------------------------------------------------


def test_wrapping_bounds_any_caption() -> None:
    """A megabyte without a space (untrusted input) is cut to the lines shown, quickly, each within the width."""
    from tensorstore_ds.store.preview.sheet import _font, _wrap

    font = _font(13)
    for text in ("x" * 2**20, "word " * 2**18, "\u6771\u4eac " * 1000, ""):
        lines = _wrap(text, font, 224, 4)
        assert len(lines) <= 4 and all(font.getlength(line) <= 224 for line in lines)
        assert bool(lines) == bool(text) and (not text or len(text) < 100 or lines[-1].endswith("..."))


def test_silence_is_dark_and_padding_is_marked() -> None:
    from tensorstore_ds.store.preview.signal import spectrogram as _spectrogram
    from tensorstore_ds.store.preview.signal import waveform as _waveform

    silence = np.zeros(2 * RATE, np.float16)
    spec = _spectrogram(silence, 2 * RATE, RATE)
    assert (spec == spec[0, 0]).all() and spec[0, 0].sum() < 20
    wave = _waveform(silence, RATE, RATE)
    assert (wave[:, wave.shape[1] // 2 - 1 : wave.shape[1] // 2 + 1] == (214, 39, 40)).all()
