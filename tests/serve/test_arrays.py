"""One test class for every array kind that serving reads, and one for text columns.

In the way zarr-python's ``StoreTests`` is subclassed per backend:
:class:`ServedArrayTests` holds the contract of
:class:`~tensorstore_ds.serve.arrays.ServedArray`, and each subclass makes one
kind (RAM, paged, concatenated) with its ``made`` fixture, which returns the
array and the numpy array it must equal. :class:`ServedTextTests` does the
same for :class:`~tensorstore_ds.serve.arrays.ServedText`.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tensorstore_ds.format.layout import ArraySpec
from tensorstore_ds.format.text import TextColumn, encode_value
from tensorstore_ds.serve.arrays import ConcatArray, ConcatText, ServedArray, ServedText
from tensorstore_ds.serve.part import SharedText
from tensorstore_ds.serve.shm import RamArray, SharedBuffer
from tensorstore_ds.store.chunked import ChunkedArray

ROWS, ROW_SHAPE, CHUNK_ROWS = 23, (4, 3), 5
VALUES = [f"value {i}" if i % 3 else {"id": i, "tags": ["é"] * (i % 4)} for i in range(ROWS)]


def expected_rows(seed: int = 0, rows: int = ROWS) -> np.ndarray:
    return np.random.default_rng(seed).integers(-(2**30), 2**30, (rows, *ROW_SHAPE), dtype=np.int32)


def ram_array(values: np.ndarray) -> RamArray:
    buffer = SharedBuffer.create(values.nbytes)
    buffer.array(values.dtype, values.shape)[:] = values
    return RamArray(buffer, values.dtype.str, values.shape)


def chunked_array(root: Path, values: np.ndarray, max_mapped_bytes: int | None) -> ChunkedArray:
    """The chunk files of ``values`` written as a store writes them (the last chunk padded)."""
    spec = ArraySpec("rows", values.shape, values.dtype.name, CHUNK_ROWS)
    for k in range(spec.num_chunks):
        chunk = np.zeros((CHUNK_ROWS, *values.shape[1:]), values.dtype)
        part = values[k * CHUNK_ROWS : (k + 1) * CHUNK_ROWS]
        chunk[: len(part)] = part
        path = root / spec.chunk_key(k)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(chunk.tobytes())
    return ChunkedArray(root, spec, max_mapped_bytes)


# --- arrays --------------------------------------------------------------------------------


class ServedArrayTests:
    """The contract of every served array; subclasses provide ``made`` -> (array, expected)."""

    @pytest.fixture
    def made(self, tmp_path: Path) -> tuple[ServedArray, np.ndarray]:
        raise NotImplementedError("subclasses make the array")

    def test_follows_the_protocol(self, made: tuple[ServedArray, np.ndarray]) -> None:
        array, expected = made
        assert isinstance(array, ServedArray)
        assert array.dtype == expected.dtype and tuple(array.shape) == expected.shape

    def test_take_in_any_order_with_repeats(self, made: tuple[ServedArray, np.ndarray]) -> None:
        array, expected = made
        for indices in ([0], [ROWS - 1, 0, 7, 7, 12, 3], list(range(ROWS))[::-1], [4, 19, 4, 19, 22]):
            idx = np.asarray(indices, dtype=np.int64)
            got = array.take(idx)
            assert got.dtype == expected.dtype
            np.testing.assert_array_equal(got, expected[idx])

    def test_take_into_out(self, made: tuple[ServedArray, np.ndarray]) -> None:
        array, expected = made
        idx = np.asarray([9, 2, 22, 2, 15], dtype=np.int64)
        out = np.full((len(idx), *ROW_SHAPE), 7, expected.dtype)
        got = array.take(idx, out=out)
        assert got is out
        np.testing.assert_array_equal(out, expected[idx])

    def test_take_nothing(self, made: tuple[ServedArray, np.ndarray]) -> None:
        array, expected = made
        got = array.take(np.zeros(0, dtype=np.int64))
        assert got.shape == (0, *ROW_SHAPE) and got.dtype == expected.dtype

    def test_willneed_changes_nothing(self, made: tuple[ServedArray, np.ndarray]) -> None:
        array, expected = made
        idx = np.asarray([21, 1, 11, 6], dtype=np.int64)
        assert array.willneed(idx) is None  # type: ignore[func-returns-value]
        np.testing.assert_array_equal(array.take(idx), expected[idx])

    def test_pickled_copy_serves_the_same(self, made: tuple[ServedArray, np.ndarray]) -> None:
        array, expected = made
        copy = pickle.loads(pickle.dumps(array))
        idx = np.arange(ROWS, dtype=np.int64)[::-2].copy()
        np.testing.assert_array_equal(copy.take(idx), expected[idx])
        np.testing.assert_array_equal(array.take(idx), expected[idx])


class TestRamArray(ServedArrayTests):
    @pytest.fixture
    def made(self, tmp_path: Path) -> tuple[ServedArray, np.ndarray]:
        expected = expected_rows()
        return ram_array(expected), expected


class TestPagedArray(ServedArrayTests):
    """Mapped chunks within a budget of two chunks, so gathers evict."""

    @pytest.fixture
    def made(self, tmp_path: Path) -> tuple[ServedArray, np.ndarray]:
        expected = expected_rows()
        return chunked_array(tmp_path, expected, 2 * CHUNK_ROWS * expected[0].nbytes), expected


class TestConcatArray(ServedArrayTests):
    """Three stores' parts (RAM, paged, RAM) of unequal lengths as one array."""

    @pytest.fixture
    def made(self, tmp_path: Path) -> tuple[ServedArray, np.ndarray]:
        expected = expected_rows()
        cuts = [0, 6, 17, ROWS]
        parts: list[ServedArray] = [
            ram_array(expected[0:6]),
            chunked_array(tmp_path, expected[6:17].copy(), None),
            ram_array(expected[17:]),
        ]
        return ConcatArray(parts, np.asarray(cuts, dtype=np.int64)), expected


# --- text ----------------------------------------------------------------------------------


def text_arrays(values: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    encoded = [encode_value(v, "json") for v in values]
    offsets = np.concatenate([[0], np.cumsum([len(e) for e in encoded])]).astype(np.int64)
    return np.frombuffer(b"".join(encoded), dtype=np.uint8).copy(), offsets


class ServedTextTests:
    """The contract of every served text column; subclasses provide ``column``."""

    @pytest.fixture
    def column(self) -> ServedText:
        raise NotImplementedError("subclasses make the column")

    def test_follows_the_protocol(self, column: ServedText) -> None:
        assert isinstance(column, ServedText)

    def test_take_in_any_order_with_repeats(self, column: ServedText) -> None:
        for indices in ([0], [ROWS - 1, 0, 7, 7, 12, 3], list(range(ROWS))):
            got = column.take(np.asarray(indices, dtype=np.int64))
            assert isinstance(got, list)
            assert json.dumps(got) == json.dumps([VALUES[i] for i in indices])

    def test_take_nothing(self, column: ServedText) -> None:
        assert column.take(np.zeros(0, dtype=np.int64)) == []

    def test_pickled_copy_serves_the_same(self, column: ServedText) -> None:
        copy = pickle.loads(pickle.dumps(column))
        idx = np.asarray([5, 0, 22], dtype=np.int64)
        assert copy.take(idx) == column.take(idx) == [VALUES[i] for i in idx]


class TestTextColumn(ServedTextTests):
    @pytest.fixture
    def column(self) -> ServedText:
        return TextColumn(*text_arrays(VALUES), "json")


class TestSharedText(ServedTextTests):
    @pytest.fixture
    def column(self) -> ServedText:
        data, offsets = text_arrays(VALUES)
        return SharedText(ram_array(data), ram_array(offsets), "json", "test column")


class TestConcatText(ServedTextTests):
    @pytest.fixture
    def column(self) -> ServedText:
        cuts = [0, 10, ROWS]
        parts: list[ServedText] = [
            SharedText(*map(ram_array, text_arrays(VALUES[:10])), "json", "first"),
            TextColumn(*text_arrays(VALUES[10:]), "json"),
        ]
        return ConcatText(parts, np.asarray(cuts, dtype=np.int64))
