"""Tests of tensorstore_ds.conversion.decode.image: modes, orientation, resize rules, failures, draft."""

from __future__ import annotations

import functools
import io
import math
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageFilter, ImageOps, JpegImagePlugin, features

from tensorstore_ds.conversion.decode.image import RESIZE_MODES, ImageOptions, decode_image
from tensorstore_ds.conversion.decode.resize import DRAFT_MARGIN, draft_request
from tensorstore_ds.errors import DecodeError

SMALL = ImageOptions(size=32)
WHITE = (255, 255, 255)


def encode(im: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, fmt, **params)
    return buffer.getvalue()


def check_pixels(pixels: np.ndarray, size: int) -> None:
    assert pixels.shape == (size, size, 3)
    assert pixels.dtype == np.uint8
    assert pixels.flags.c_contiguous


def flat(mode: str, color: Any, size: tuple[int, int] = (12, 10)) -> Image.Image:
    return Image.new(mode, size, color)


def paletted(transparent: bool) -> Image.Image:
    im = Image.new("P", (12, 10), 1)
    im.putpalette([0, 0, 0, 10, 200, 30] + [0, 0, 0] * 254)
    if transparent:
        im.info["transparency"] = 1
    return im


def sixteen_bit(values: list[int]) -> Image.Image:
    return Image.fromarray(np.array([values] * 4, dtype=np.uint16))


# --- options ------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [{"size": 0}, {"size": -3}, {"size": 2.0}, {"size": True}, {"resize": "stretch"}, {"max_pixels": 0}],
)
def test_options_reject_bad_values(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ImageOptions(**kwargs)


def test_options_accept_numpy_integers() -> None:
    options = ImageOptions(np.int64(64), "pad", np.int32(1000))
    assert type(options.size) is int and type(options.max_pixels) is int
    assert options == ImageOptions(64, "pad", 1000)


# --- modes ----------------------------------------------------------------------

MODE_CASES = [
    ("RGB", lambda: flat("RGB", (10, 200, 30)), "PNG", {}, (10, 200, 30), 0),
    ("L", lambda: flat("L", 77), "PNG", {}, (77, 77, 77), 0),
    ("1-white", lambda: flat("1", 1), "PNG", {}, WHITE, 0),
    ("1-black", lambda: flat("1", 0), "PNG", {}, (0, 0, 0), 0),
    ("P", lambda: paletted(False), "PNG", {}, (10, 200, 30), 0),
    ("P-transparent-png", lambda: paletted(True), "PNG", {"transparency": 1}, WHITE, 0),
    ("P-transparent-gif", lambda: paletted(True), "GIF", {"transparency": 1}, WHITE, 0),
    ("RGBA-opaque", lambda: flat("RGBA", (10, 200, 30, 255)), "PNG", {}, (10, 200, 30), 0),
    ("RGBA-clear", lambda: flat("RGBA", (10, 200, 30, 0)), "PNG", {}, WHITE, 0),
    ("RGBA-half", lambda: flat("RGBA", (200, 0, 0, 128)), "PNG", {}, (227, 127, 127), 1),
    ("LA-clear", lambda: flat("LA", (50, 0)), "PNG", {}, WHITE, 0),
    ("LA-opaque", lambda: flat("LA", (50, 255)), "PNG", {}, (50, 50, 50), 0),
    ("RGB-key", lambda: flat("RGB", (10, 200, 30)), "PNG", {"transparency": (10, 200, 30)}, WHITE, 0),
    ("L-key", lambda: flat("L", 77), "PNG", {"transparency": 77}, WHITE, 0),
    ("CMYK-tiff", lambda: flat("CMYK", (0, 255, 0, 0)), "TIFF", {}, (255, 0, 255), 0),
    ("CMYK-jpeg", lambda: flat("CMYK", (0, 0, 0, 0)), "JPEG", {"quality": 95}, WHITE, 3),
    ("YCbCr-tiff", lambda: flat("YCbCr", (128, 128, 128)), "TIFF", {}, (128, 128, 128), 1),
    ("LAB-white", lambda: flat("LAB", (255, 128, 128)), "TIFF", {}, WHITE, 2),
    ("F", lambda: Image.fromarray(np.full((10, 12), 77.4, np.float32)), "TIFF", {}, (77, 77, 77), 0),
    ("F-over", lambda: Image.fromarray(np.full((10, 12), 300.0, np.float32)), "TIFF", {}, WHITE, 0),
    ("F-under", lambda: Image.fromarray(np.full((10, 12), -4.0, np.float32)), "TIFF", {}, (0, 0, 0), 0),
    ("I32-over", lambda: Image.fromarray(np.full((10, 12), 70000, np.int32)), "TIFF", {}, WHITE, 0),
    ("I32-negative", lambda: Image.fromarray(np.full((10, 12), -5, np.int32)), "TIFF", {}, (0, 0, 0), 0),
    ("I32-mid", lambda: Image.fromarray(np.full((10, 12), 32896, np.int32)), "TIFF", {}, (128,) * 3, 0),
]


@pytest.mark.parametrize(
    "make, fmt, params, expected, tolerance",
    [case[1:] for case in MODE_CASES],
    ids=[case[0] for case in MODE_CASES],
)
def test_modes_become_rgb(
    make: Any, fmt: str, params: dict[str, Any], expected: tuple[int, int, int], tolerance: int
) -> None:
    pixels, orig = decode_image(encode(make(), fmt, **params), SMALL)
    check_pixels(pixels, 32)
    assert orig == (10, 12)
    assert np.abs(pixels.astype(int) - expected).max() <= tolerance


def test_transparent_palette_composites_only_transparent_entries() -> None:
    im = Image.new("P", (10, 10), 1)
    im.putpalette([0, 0, 0, 10, 200, 30, 250, 0, 0] + [0, 0, 0] * 253)
    im.paste(2, (0, 0, 10, 5))  # top half: opaque red entry 2
    pixels, _ = decode_image(encode(im, "PNG", transparency=1), ImageOptions(size=10))
    assert tuple(pixels[0, 5]) == (250, 0, 0)
    assert tuple(pixels[9, 5]) == WHITE


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
@pytest.mark.parametrize("value, expected", [(65535, 255), (32896, 128), (25700, 100), (128, 0), (129, 1), (0, 0)])
def test_sixteen_bit_is_scaled_not_clipped(fmt: str, value: int, expected: int) -> None:
    data = encode(sixteen_bit([value] * 3), fmt)
    assert Image.open(io.BytesIO(data)).mode.startswith("I;16")
    pixels, _ = decode_image(data, SMALL)
    check_pixels(pixels, 32)
    assert set(np.unique(pixels)) == {expected}


def test_sixteen_bit_key_transparency_goes_white() -> None:
    im = sixteen_bit([1000] * 5)
    pixels, _ = decode_image(encode(im, "PNG", transparency=1000), SMALL)
    assert set(np.unique(pixels)) == {255}


ANIMATED = ["GIF", "PNG"] + (["WEBP"] if features.check("webp") else [])


@pytest.mark.parametrize("fmt", ANIMATED)
def test_animated_gives_first_frame(fmt: str) -> None:
    frames = [Image.new("RGB", (16, 16), color) for color in [(250, 0, 0), (0, 0, 250), (0, 250, 0)]]
    extra = {"lossless": True} if fmt == "WEBP" else {}
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, **extra)
    with Image.open(io.BytesIO(data)) as opened:
        assert getattr(opened, "n_frames", 1) == 3
    pixels, _ = decode_image(data, SMALL)
    assert pixels[..., 0].min() >= 240 and pixels[..., 2].max() <= 10


# --- EXIF orientation ---------------------------------------------------------------


def red_left_blue_right(width: int, height: int) -> Image.Image:
    im = Image.new("RGB", (width, height), (255, 0, 0))
    im.paste((0, 0, 255), (width // 2, 0, width, height))
    return im


def with_orientation(im: Image.Image, orientation: int, fmt: str = "JPEG") -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(im, fmt, exif=exif.tobytes(), quality=95)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_exif_orientation_6_rotates(fmt: str) -> None:
    data = with_orientation(red_left_blue_right(80, 40), 6, fmt)
    pixels, orig = decode_image(data, ImageOptions(size=32))
    assert orig == (80, 40)  # (height, width) after rotation
    top, bottom = pixels[:12].reshape(-1, 3).mean(0), pixels[-12:].reshape(-1, 3).mean(0)
    assert top[0] > 200 and top[2] < 50  # the stored left (red) is on top
    assert bottom[2] > 200 and bottom[0] < 50
    reference = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    expected = np.asarray(reference.resize((32, 32), Image.Resampling.LANCZOS))
    assert np.abs(pixels.astype(int) - expected).max() <= 2


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_matches_pillow(orientation: int) -> None:
    im = red_left_blue_right(24, 12)
    im.paste((0, 255, 0), (0, 0, 6, 3))
    data = with_orientation(im, orientation, "PNG")
    pixels, orig = decode_image(data, ImageOptions(size=16, resize="pad"))
    reference = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    assert orig == (reference.height, reference.width)
    expected, _ = decode_image(np.asarray(reference), ImageOptions(size=16, resize="pad"))
    assert np.array_equal(pixels, expected)


def test_draft_request_accounts_for_rotation(monkeypatch: pytest.MonkeyPatch) -> None:
    requests: list[tuple[int, int]] = []
    real_draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self: Any, mode: Any, size: Any) -> Any:
        requests.append(size)
        result = real_draft(self, mode, size)
        requests.append(self.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    data = with_orientation(photo_image(2000, 500), 6)  # displayed 500 wide, 2000 tall
    options = ImageOptions(size=100, resize="center-crop")
    pixels, orig = decode_image(data, options)
    assert orig == (2000, 500)
    # displayed: short side 500 -> 100, so 100 x 400 displayed = 400 x 100 stored, times the margin
    assert requests[0] == (math.ceil(400 * DRAFT_MARGIN), math.ceil(100 * DRAFT_MARGIN))
    assert requests[1][0] >= 400 * DRAFT_MARGIN and requests[1][1] >= 100 * DRAFT_MARGIN
    full, _ = decode_image(data, ImageOptions(size=100, resize="center-crop", draft=False))
    assert np.abs(pixels.astype(float) - full).mean() < 1.0


# --- geometry -----------------------------------------------------------------------


def bands() -> bytes:
    """400x100: red | green (twice as wide) | blue vertical bands."""
    im = Image.new("RGB", (400, 100), (255, 0, 0))
    im.paste((0, 255, 0), (100, 0, 300, 100))
    im.paste((0, 0, 255), (300, 0, 400, 100))
    return encode(im, "PNG")


def test_squash_keeps_all_three_bands() -> None:
    pixels, orig = decode_image(bands(), ImageOptions(size=60, resize="squash"))
    assert orig == (100, 400)
    assert tuple(pixels[30, 5]) == (255, 0, 0)
    assert tuple(pixels[30, 30]) == (0, 255, 0)
    assert tuple(pixels[30, 55]) == (0, 0, 255)
    assert tuple(pixels[0, 30]) == (0, 255, 0) and tuple(pixels[59, 30]) == (0, 255, 0)


def test_center_crop_keeps_the_middle() -> None:
    pixels, _ = decode_image(bands(), ImageOptions(size=60, resize="center-crop"))
    assert np.all(pixels == (0, 255, 0))


def test_pad_leaves_black_bars() -> None:
    pixels, _ = decode_image(bands(), ImageOptions(size=60, resize="pad"))
    # 400x100 -> 60x15, centred: rows 22..36 hold the image
    assert np.all(pixels[:22] == 0) and np.all(pixels[37:] == 0)
    assert pixels[22:37].max(axis=2).min() > 0  # no black inside the image
    assert tuple(pixels[30, 5]) == (255, 0, 0)
    assert tuple(pixels[30, 30]) == (0, 255, 0)
    assert tuple(pixels[30, 55]) == (0, 0, 255)


@pytest.mark.parametrize("resize", RESIZE_MODES)
@pytest.mark.parametrize("shape", [(1, 1), (10, 10000), (10000, 10)])
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_extreme_shapes(resize: str, shape: tuple[int, int], fmt: str) -> None:
    height, width = shape
    data = encode(Image.new("RGB", (width, height), (200, 100, 50)), fmt, quality=95)
    pixels, orig = decode_image(data, ImageOptions(resize=resize))
    check_pixels(pixels, 224)
    assert orig == shape
    content = pixels.reshape(-1, 3)[pixels.reshape(-1, 3).any(axis=1)]
    assert len(content) > 0 and np.abs(content.astype(int) - (200, 100, 50)).max() <= 3
    if resize == "pad" and shape != (1, 1):
        assert len(content) < 224 * 224 // 10  # mostly black bars


# --- arrays -------------------------------------------------------------------------

ARRAY_CASES = [
    ("u8-hw", np.full((8, 6), 77, np.uint8), (77, 77, 77)),
    ("u8-hw1", np.full((8, 6, 1), 77, np.uint8), (77, 77, 77)),
    ("u8-rgb", np.full((8, 6, 3), (10, 200, 30), np.uint8), (10, 200, 30)),
    ("u8-rgba-opaque", np.full((8, 6, 4), (10, 200, 30, 255), np.uint8), (10, 200, 30)),
    ("u8-rgba-clear", np.full((8, 6, 4), (10, 200, 30, 0), np.uint8), WHITE),
    ("u16-rgb", np.full((8, 6, 3), (65535, 32896, 0), np.uint16), (255, 128, 0)),
    ("u16-hw", np.full((8, 6), 25700, np.uint16), (100, 100, 100)),
    ("f32-rgb", np.full((8, 6, 3), (1.0, 0.5, 0.0), np.float32), (255, 128, 0)),
    ("f64-clip", np.full((8, 6, 3), (2.0, -1.0, 0.2), np.float64), (255, 0, 51)),
    ("f16-hw", np.full((8, 6), 0.25, np.float16), (64, 64, 64)),
    ("f32-rgba-clear", np.full((8, 6, 4), (0.0, 0.0, 0.0, 0.0), np.float32), WHITE),
]


@pytest.mark.parametrize("array, expected", [case[1:] for case in ARRAY_CASES], ids=[case[0] for case in ARRAY_CASES])
def test_arrays(array: np.ndarray, expected: tuple[int, int, int]) -> None:
    pixels, orig = decode_image(array, SMALL)
    check_pixels(pixels, 32)
    assert orig == (8, 6)
    assert np.abs(pixels.astype(int) - expected).max() <= 1


def test_non_contiguous_array() -> None:
    base = np.zeros((20, 20, 3), np.uint8)
    base[:, :, 1] = 200
    pixels, orig = decode_image(base[::2, ::2], SMALL)
    assert orig == (10, 10) and np.all(pixels == (0, 200, 0))


BAD_ARRAYS = [
    ("int32", np.zeros((4, 4), np.int32)),
    ("bool", np.zeros((4, 4), bool)),
    ("two-channels", np.zeros((4, 4, 2), np.uint8)),
    ("five-channels", np.zeros((4, 4, 5), np.uint8)),
    ("1d", np.zeros(16, np.uint8)),
    ("4d", np.zeros((1, 4, 4, 3), np.uint8)),
    ("empty", np.zeros((0, 4, 3), np.uint8)),
    ("nan", np.full((4, 4), np.nan, np.float32)),
    ("inf", np.full((4, 4, 3), np.inf, np.float64)),
    ("complex", np.zeros((4, 4), np.complex64)),
]


@pytest.mark.parametrize("array", [case[1] for case in BAD_ARRAYS], ids=[case[0] for case in BAD_ARRAYS])
def test_bad_arrays(array: np.ndarray) -> None:
    with pytest.raises(DecodeError, match="bad-array") as info:
        decode_image(array, SMALL)
    assert info.value.reason == "bad-array"


# --- failures -------------------------------------------------------------------------


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with no real pixel data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"x") + chunk(b"IEND", b"")


def test_decompression_bomb_by_option() -> None:
    data = encode(Image.new("RGB", (20, 20)), "PNG")
    with pytest.raises(DecodeError, match="decompression-bomb"):
        decode_image(data, ImageOptions(max_pixels=399))
    decode_image(data, ImageOptions(max_pixels=400))


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("side", [10_000, 50_000])
def test_decompression_bomb_rejected_before_decoding(side: int) -> None:
    # 10_000^2 passes Pillow's hard limit (its warning only); 50_000^2 trips it.
    with pytest.raises(DecodeError, match="decompression-bomb"):
        decode_image(png_header(side, side), ImageOptions())


def test_empty_inputs(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    for source in (b"", empty, str(empty)):
        with pytest.raises(DecodeError, match="empty-file"):
            decode_image(source, SMALL)


def test_html_is_undecodable(tmp_path: Path) -> None:
    html = b"<!DOCTYPE html><html><body>404 Not Found</body></html>"
    path = tmp_path / "fake.jpg"
    path.write_bytes(html)
    for source in (html, path):
        with pytest.raises(DecodeError, match="undecodable-image"):
            decode_image(source, SMALL)


def test_missing_path_and_wrong_type(tmp_path: Path) -> None:
    with pytest.raises(DecodeError, match="undecodable-image"):
        decode_image(tmp_path / "missing.png", SMALL)
    with pytest.raises(DecodeError, match="undecodable-image"):
        decode_image(12345, SMALL)  # type: ignore[arg-type]


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "TIFF"])
@pytest.mark.parametrize("fraction", [0.05, 0.3, 0.6, 0.95])
def test_truncated_files_decode_or_raise_decode_error(fmt: str, fraction: float) -> None:
    if fmt == "WEBP" and not features.check("webp"):
        pytest.skip("no WebP support")
    im = photo_image(120, 90)
    data = encode(im.convert("P") if fmt == "GIF" else im, fmt)
    try:
        pixels, _ = decode_image(data[: int(len(data) * fraction)], SMALL)
    except DecodeError as exc:
        assert exc.reason in ("undecodable-image", "empty-file")
    else:
        check_pixels(pixels, 32)


def test_paths_and_bytes_agree(tmp_path: Path) -> None:
    data = encode(red_left_blue_right(50, 30), "PNG")
    path = tmp_path / "a.png"
    path.write_bytes(data)
    from_bytes, _ = decode_image(data, SMALL)
    from_path, _ = decode_image(path, SMALL)
    from_str, _ = decode_image(str(path), SMALL)
    from_view, _ = decode_image(memoryview(data), SMALL)
    assert np.array_equal(from_bytes, from_path)
    assert np.array_equal(from_bytes, from_str)
    assert np.array_equal(from_bytes, from_view)


# --- draft quality ----------------------------------------------------------------------


@functools.cache
def photo_image(width: int, height: int) -> Image.Image:
    """A smooth-ish synthetic photo: gradients plus blurred noise."""
    rng = np.random.default_rng(width * 7 + height)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    gradient = np.stack([255 * x / width, 255 * y / height, 128 + 60 * np.sin((x + y) / 300)], -1)
    noise = Image.fromarray(rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), np.uint8))
    noise = noise.resize((width, height), Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(2))
    mixed = 0.6 * gradient + 0.4 * np.asarray(noise, np.float32)
    return Image.fromarray(mixed.astype(np.uint8))


@functools.cache
def photo(width: int, height: int) -> bytes:
    """:func:`photo_image` saved as JPEG quality 90."""
    return encode(photo_image(width, height), "JPEG", quality=90)


@pytest.mark.parametrize("resize", RESIZE_MODES)
@pytest.mark.parametrize("width, height", [(1024, 768), (4000, 3000)])
def test_draft_matches_full_decode(width: int, height: int, resize: str) -> None:
    data = photo(width, height)
    fast, orig = decode_image(data, ImageOptions(resize=resize))
    full, orig_full = decode_image(data, ImageOptions(resize=resize, draft=False))
    assert orig == orig_full == (height, width)
    check_pixels(fast, 224)
    assert np.abs(fast.astype(float) - full).mean() < 1.0


@functools.cache
def detailed_photo(width: int, height: int) -> bytes:
    """Fine texture over a coarse colour field, JPEG quality 90: where a draft without margin goes soft."""
    rng = np.random.default_rng(width + height)
    fine = Image.fromarray(rng.integers(0, 256, (height, width), np.uint8)).filter(ImageFilter.GaussianBlur(1.0))
    coarse = Image.fromarray(rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), np.uint8))
    coarse = coarse.resize((width, height), Image.Resampling.BICUBIC)
    pixels = 0.5 * np.asarray(coarse, np.float32) + (np.asarray(fine, np.float32) - 128)[..., None] + 64
    return encode(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)), "JPEG", quality=90)


@pytest.mark.parametrize("width, height", [(1200, 900), (2300, 2300)])  # draft 1/2 and 1/4 (not 1/8)
def test_draft_margin_keeps_detailed_photos_within_one_level(width: int, height: int) -> None:
    data = detailed_photo(width, height)
    reference = Image.open(io.BytesIO(data)).convert("RGB").resize((224, 224), Image.Resampling.LANCZOS)
    pixels, _ = decode_image(data, ImageOptions())
    assert np.abs(pixels.astype(float) - np.asarray(reference)).mean() < 1.0
    no_margin = Image.open(io.BytesIO(data))
    no_margin.draft("RGB", (224, 224))
    soft = no_margin.resize((224, 224), Image.Resampling.LANCZOS)
    assert np.abs(np.asarray(soft, float) - np.asarray(reference)).mean() > 2.0  # what the margin is for


@pytest.mark.parametrize(
    "side, asked, decoded",
    [
        (1200, 280, 300),  # 1/4 leaves 300: at least 1.25 x 224
        (2300, 448, 575),  # 1/8 would leave 288, under 2 x 224: 1/4
        (4000, 448, 500),  # 1/8 leaves 500, over 2 x 224
    ],
)
def test_eighth_scale_needs_the_larger_margin(side: int, asked: int, decoded: int) -> None:
    assert draft_request(side, side, 1, 224, "squash") == (asked, asked)
    im = Image.open(io.BytesIO(encode(Image.new("RGB", (side, side), (90, 120, 30)), "JPEG")))
    im.draft("RGB", (asked, asked))
    assert im.size == (decoded, decoded)
