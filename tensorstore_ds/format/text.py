"""The caption index: variable-length text stored as two numeric arrays.

A text column ``NAME`` is ``text/NAME/bytes`` (uint8, the UTF-8 encoded values
one after another) plus ``text/NAME/offsets`` (int64, ``num_samples + 1``
entries): sample ``i`` is ``bytes[offsets[i]:offsets[i + 1]]``. Columns with
encoding ``"utf-8"`` hold plain strings; ``"json"`` columns hold one JSON value
per sample (caption lists, kept columns). Any Zarr v3 reader can read it::

    g = zarr.open_group(store)
    off = g["text/caption/offsets"]
    caption = bytes(g["text/caption/bytes"][off[i]:off[i + 1]]).decode()
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..errors import StoreFormatError
from .layout import ArraySpec, write_array, write_array_metadata, write_chunk

BYTES_CHUNK = 16 * 2**20
OFFSETS_CHUNK = 2**20


def encode_value(value: Any, encoding: str) -> bytes:
    """Encode one value of a text column."""
    if encoding == "utf-8":
        return str(value).encode("utf-8")
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str).encode("utf-8")


def text_specs(name: str, num_samples: int, num_bytes: int) -> tuple[ArraySpec, ArraySpec]:
    """Specs of a text column's ``bytes`` and ``offsets`` arrays.

    A column that fits in one chunk gets a chunk of its own size, not megabytes of padding.
    """
    data = ArraySpec(f"text/{name}/bytes", (num_bytes,), "uint8", max(1, min(BYTES_CHUNK, num_bytes)))
    offsets = ArraySpec(f"text/{name}/offsets", (num_samples + 1,), "int64", min(OFFSETS_CHUNK, num_samples + 1))
    return data, offsets


class TextColumnWriter:
    """Streams one text column into its chunk files.

    Parameters
    ----------
    root
        The store directory.
    name
        Column name.
    encoding
        ``"utf-8"`` or ``"json"``.
    """

    def __init__(self, root: Path, name: str, encoding: str) -> None:
        self.root = root
        self.name = name
        self.encoding = encoding
        self._pending = bytearray()
        self._chunks_written = 0
        self._lengths: list[int] = []

    def extend(self, values: Iterable[Any]) -> None:
        """Append values, writing every full bytes chunk as it fills."""
        for value in values:
            encoded = encode_value(value, self.encoding)
            self._lengths.append(len(encoded))
            self._pending += encoded
        spec = ArraySpec(f"text/{self.name}/bytes", (1,), "uint8", BYTES_CHUNK)
        while len(self._pending) >= BYTES_CHUNK:
            chunk = np.frombuffer(bytes(self._pending[:BYTES_CHUNK]), dtype=np.uint8)
            write_chunk(self.root, spec, self._chunks_written, chunk)
            del self._pending[:BYTES_CHUNK]
            self._chunks_written += 1

    def finish(self) -> int:
        """Write the last chunk, the offsets and the metadata; return total bytes."""
        total = self._chunks_written * BYTES_CHUNK + len(self._pending)
        data_spec, offsets_spec = text_specs(self.name, len(self._lengths), total)
        if self._pending:
            write_chunk(self.root, data_spec, self._chunks_written, np.frombuffer(bytes(self._pending), np.uint8))
        offsets = np.zeros(len(self._lengths) + 1, dtype=np.int64)
        np.cumsum(self._lengths, out=offsets[1:])
        write_array(self.root, offsets_spec, offsets)
        write_array_metadata(self.root, data_spec, {"encoding": self.encoding})
        return total


class Rows(Protocol):
    """A 1-D array a text column reads from: a numpy array, or a store array mapped on demand."""

    def __len__(self) -> int: ...

    def __getitem__(self, key: Any) -> Any: ...


class TextColumn:
    """Read access to one text column held as two numpy arrays.

    Parameters
    ----------
    data
        The column's bytes (uint8).
    offsets
        ``num_samples + 1`` int64 offsets into ``data``.
    encoding
        ``"utf-8"`` or ``"json"``.
    where
        The column's location, for the error raised when a value does not
        decode (its bytes were altered on disk).
    """

    def __init__(self, data: Rows, offsets: Rows, encoding: str, where: str = "a text column") -> None:
        self.data = data
        self.offsets = offsets
        self.encoding = encoding
        self.where = where

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> Any:
        index, i = i, int(i) + (len(self) if i < 0 else 0)
        if not 0 <= i < len(self):
            raise IndexError(f"text index {index} out of range for {len(self)} samples")
        start, stop = int(self.offsets[i]), int(self.offsets[i + 1])
        raw = self.data[start:stop].tobytes()
        try:
            return raw.decode("utf-8") if self.encoding == "utf-8" else json.loads(raw)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            raise StoreFormatError(
                self.where,
                f"value {i} (bytes {start}..{stop}) is not valid {self.encoding} ({exc}); "
                "the store is damaged: run tensorstore_ds.verify on it",
            ) from None

    def take(self, indices: Iterable[int]) -> list[Any]:
        """Values at ``indices``, in order."""
        return [self[int(i)] for i in indices]
