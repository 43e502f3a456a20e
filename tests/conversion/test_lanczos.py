"""LANCZOS in fixed point, compiled or by banded matrix products: Pillow's filter, the same bytes either way."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from threadpoolctl import threadpool_info

from tensorstore_ds import convert, open_store
from tensorstore_ds.conversion import run
from tensorstore_ds.conversion.decode import lanczos
from tensorstore_ds.conversion.decode.lanczos import lanczos_resize
from tensorstore_ds.conversion.decode.resize import resize
from tests.conversion.test_decode_image import photo_image
from tests.media import write_table

needs_extension = pytest.mark.skipif(
    not lanczos.compiled(), reason="the _resample extension was not built (no C compiler at install)"
)


@pytest.fixture(params=["compiled", "matrix products"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test taking this runs with the compiled passes and with numpy's matrix products."""
    if request.param == "compiled" and not lanczos.compiled():
        pytest.skip("the _resample extension was not built (no C compiler at install)")
    if request.param == "matrix products":
        monkeypatch.setattr(lanczos, "_resample", None)
    return str(request.param)


def pillow(im: Image.Image, size: tuple[int, int], box: tuple[float, float, float, float] | None = None) -> np.ndarray:
    return np.asarray(im.resize(size, Image.Resampling.LANCZOS, box=box))


@pytest.mark.parametrize(
    "source, size, box",
    [
        ((475, 713), (224, 224), None),  # a 950x1425 photo after a 1/2 draft
        ((1000, 750), (224, 224), None),
        ((713, 475), (224, 224), (119.0, 0.0, 594.0, 475.0)),  # a centre crop
        ((320, 240), (224, 168), None),
        ((100, 80), (224, 224), None),  # enlarged
        ((300, 7), (224, 224), None),  # enlarged one way, reduced the other
    ],
)
def test_matches_pillow_up_to_rounding(
    source: tuple[int, int], size: tuple[int, int], box: tuple[float, float, float, float] | None, backend: str
) -> None:
    im = photo_image(*source)
    ours = lanczos_resize(np.asarray(im), size, box)
    assert ours.shape == (size[1], size[0], 3) and ours.dtype == np.uint8 and ours.flags.c_contiguous
    diff = np.abs(ours.astype(int) - pillow(im, size, box))
    assert diff.mean() < 0.3 and diff.max() <= 4  # Pillow filters the other axis first and rounds in between


def test_one_channel_and_one_pixel(backend: str) -> None:
    grey = photo_image(333, 222).convert("L")
    ours = lanczos_resize(np.asarray(grey)[..., None], (100, 100))
    assert np.abs(ours[..., 0].astype(int) - pillow(grey, (100, 100))).mean() < 0.3
    dot = np.full((1, 1, 3), (10, 200, 90), np.uint8)
    assert np.array_equal(lanczos_resize(dot, (5, 4)), np.broadcast_to(dot, (4, 5, 3)))


def exact(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The same fixed-point sums in float64, band by band, with numpy's own loops (no BLAS)."""
    height, width, channels = pixels.shape
    rows = pixels.reshape(height, width * channels).astype(np.float64)
    down = np.zeros((size[1], width * channels))
    for lo, hi, b, e, weights in lanczos._bands(height, size[1], 0.0, float(height)):
        down[b:e] = np.einsum("ij,jk->ik", weights.astype(np.float64), rows[lo:hi])
    down = np.clip(np.floor((down + 2 ** (lanczos.WEIGHT_BITS - 1)) / 2**lanczos.WEIGHT_BITS), 0, 255)
    planes = down.reshape(size[1], width, channels)
    out = np.zeros((size[1], size[0], channels))
    for lo, hi, b, e, weights in lanczos._bands(width, size[0], 0.0, float(width)):
        out[:, b:e] = np.einsum("hwc,jw->hjc", planes[:, lo:hi], weights.astype(np.float64))
    return np.clip(np.floor((out + 2 ** (lanczos.WEIGHT_BITS - 1)) / 2**lanczos.WEIGHT_BITS), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("block", [8, 32])
def test_exact_whatever_the_order_of_summation(block: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """float32 BLAS sums equal float64 sums: every partial sum is an integer below 2**24."""
    pixels = np.asarray(photo_image(517, 389))
    monkeypatch.setattr(lanczos, "_resample", None)
    monkeypatch.setattr(lanczos, "BLOCK", block)
    lanczos._bands.cache_clear()
    try:
        assert np.array_equal(lanczos_resize(pixels, (224, 224)), exact(pixels, (224, 224)))
    finally:
        lanczos._bands.cache_clear()


def blas_threads() -> list[int]:
    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


def test_blas_threads_are_given_back_also_when_threads_resize_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lanczos, "_resample", None)  # only the matrix products use BLAS
    before = blas_threads()
    pixels = np.asarray(photo_image(300, 200))
    expected = lanczos_resize(pixels, (64, 64))
    assert blas_threads() == before

    def work() -> list[np.ndarray]:
        return [lanczos_resize(pixels, (64, 64)) for _ in range(20)]

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = [r for f in [pool.submit(work) for _ in range(4)] for r in f.result()]
    assert all(np.array_equal(r, expected) for r in results)
    assert blas_threads() == before


def test_resize_leaves_large_reductions_to_pillow(backend: str) -> None:
    big = photo_image(1600, 1400)  # 7x: Pillow averages blocks first (reducing_gap)
    assert np.array_equal(np.asarray(resize(big, 224, "squash")), pillow_gap(big, (224, 224)))
    same = photo_image(224, 224)
    assert np.array_equal(np.asarray(resize(same, 224, "squash")), np.asarray(same))
    drafted = photo_image(475, 713)
    assert np.array_equal(np.asarray(resize(drafted, 224, "squash")), lanczos_resize(np.asarray(drafted), (224, 224)))


def pillow_gap(im: Image.Image, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(im.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0))


def test_pillow_simd_resizes_everything_only_without_the_compiled_passes(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pillow-simd's vectorised resize beats the matrix products, not the compiled passes (which keep the bytes)."""
    from tensorstore_ds.conversion.decode import resize as resize_module

    assert resize_module.pillow_simd() is False  # the test environment has Pillow
    monkeypatch.setattr(resize_module, "pillow_simd", lambda: True)
    drafted = photo_image(475, 713)
    expected = (
        lanczos_resize(np.asarray(drafted), (224, 224)) if backend == "compiled" else pillow_gap(drafted, (224, 224))
    )
    assert np.array_equal(np.asarray(resize(drafted, 224, "squash")), expected)


@needs_extension
def test_compiled_equals_exact_sums() -> None:
    pixels = np.asarray(photo_image(517, 389))
    assert np.array_equal(lanczos_resize(pixels, (224, 224)), exact(pixels, (224, 224)))


@needs_extension
@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 160),
    st.integers(1, 160),
    st.sampled_from([1, 3, 4]),
    st.integers(1, 120),
    st.integers(1, 120),
    st.tuples(*[st.floats(0.0, 1.0)] * 4),
    st.integers(0, 2**32 - 1),
)
def test_compiled_and_matrix_products_give_the_same_bytes(
    height: int, width: int, channels: int, out_w: int, out_h: int, corners: tuple[float, ...], seed: int
) -> None:
    """Reductions, enlargements, crops, 1, 3 and 4 channels: identical bytes, so a store does not depend on the build."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, channels), np.uint8)
    a, b, c, d = corners
    left, right = sorted((a * width, c * width))
    top, bottom = sorted((b * height, d * height))
    region = (left, top, max(right, left + 0.5), max(bottom, top + 0.5))
    args = ((out_w, out_h), *region)
    assert np.array_equal(lanczos._compiled(pixels, *args), lanczos._matrix_products(pixels, *args))


@needs_extension
def test_compiled_refuses_tables_that_read_outside_the_image() -> None:
    pixels = np.zeros((10, 10, 3), np.uint8)
    first, count, weights = (np.array(a) for a in lanczos._weights(10, 4, 0.0, 10.0))
    out = np.empty((4, 4, 3), np.uint8)
    first[-1] += 5  # its last output row would read rows 10 and beyond
    with pytest.raises(ValueError, match="inconsistent"):
        lanczos._resample(
            pixels,
            10,
            10,
            3,
            first,
            count,
            weights,
            weights.shape[1],
            first,
            count,
            weights,
            weights.shape[1],
            0,
            10,
            out,
        )


@needs_extension
def test_compiled_resizes_in_threads_at_once() -> None:
    """The passes run without the GIL (fetch threads go on meanwhile), each call with its own buffers."""
    images = [np.asarray(photo_image(300 + 7 * i, 200 + 5 * i)) for i in range(4)]
    expected = [lanczos_resize(im, (64, 64)) for im in images]
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda i: [lanczos_resize(images[i % 4], (64, 64)) for _ in range(20)], range(8)))
    assert all(np.array_equal(r, expected[i % 4]) for i, rs in enumerate(results) for r in rs)


@needs_extension
def test_an_install_without_the_extension_converts_the_same_store_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    paths = []
    for i, (width, height) in enumerate([(640, 480), (333, 500), (1200, 900), (224, 224), (90, 60)]):
        paths.append(str(tmp_path / f"{i}.jpg"))
        photo_image(width, height).save(paths[-1], quality=90)
    table = write_table(tmp_path / "photos.parquet", {"image": paths, "caption": [f"photo {i}" for i in range(5)]})

    def converted(name: str) -> np.ndarray:
        run._note_resize_without_extension.cache_clear()
        convert(str(table), tmp_path / name, workers=0, progress=False, resize="center-crop")
        return np.asarray(open_store(tmp_path / name).array("images")[:])

    with caplog.at_level("WARNING", logger="tensorstore_ds"):
        compiled = converted("compiled")
        assert "compiled resize" not in caplog.text
        monkeypatch.setattr(lanczos, "_resample", None)
        fallback = converted("fallback")
    assert np.array_equal(compiled, fallback) and compiled.shape == (5, 224, 224, 3)
    assert "installed without its compiled resize" in caplog.text and "the same bytes" in caplog.text
    run._note_resize_without_extension.cache_clear()
