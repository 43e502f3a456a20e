"""Array layout of a store: Zarr v3 metadata and uncompressed chunk files.

Every array of a store is a Zarr v3 array with a regular chunk grid that splits
only the first (sample) axis, the ``bytes`` codec (little endian) and no
compression, so that a chunk file holds exactly ``chunk_rows * row_bytes``
bytes in C order. Zarr stores edge chunks at full size too, so every chunk file
of an array has the same size and can be memory-mapped as a plain numpy array.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import StoreFormatError

DTYPES = ("uint8", "int32", "int64", "float16", "float32")
GROUP_ATTRIBUTE = "tensorstore_ds"


@dataclass(frozen=True)
class ArraySpec:
    """Shape, type and chunking of one store array.

    Parameters
    ----------
    name
        Path of the array inside the store, ``/``-separated (``"images"``,
        ``"text/caption/bytes"``).
    shape
        Full shape; the first axis is the sample (or byte) axis.
    dtype
        One of :data:`DTYPES`.
    chunk_rows
        Rows of the first axis per chunk file.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    chunk_rows: int

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"array {self.name}: dtype {self.dtype!r} is not one of {DTYPES}")
        if self.chunk_rows < 1 or any(int(s) < 0 for s in self.shape) or not self.shape:
            raise ValueError(f"array {self.name}: bad shape {self.shape} or chunk_rows {self.chunk_rows}")

    @property
    def row_shape(self) -> tuple[int, ...]:
        return tuple(self.shape[1:])

    @property
    def row_bytes(self) -> int:
        return int(np.dtype(self.dtype).itemsize * math.prod(self.row_shape))

    @property
    def chunk_bytes(self) -> int:
        return self.chunk_rows * self.row_bytes

    @property
    def num_chunks(self) -> int:
        return math.ceil(self.shape[0] / self.chunk_rows)

    @property
    def nbytes(self) -> int:
        """Bytes of the array's data (without edge-chunk padding)."""
        return self.shape[0] * self.row_bytes

    def chunk_key(self, k: int) -> str:
        """Store-relative path of chunk file ``k``."""
        return "/".join([self.name, "c", str(k)] + ["0"] * len(self.row_shape))

    def metadata(self, attributes: dict[str, Any] | None = None) -> dict[str, Any]:
        """The array's ``zarr.json`` document."""
        return {
            "zarr_format": 3,
            "node_type": "array",
            "shape": list(self.shape),
            "data_type": self.dtype,
            "chunk_grid": {
                "name": "regular",
                "configuration": {"chunk_shape": [self.chunk_rows, *self.row_shape]},
            },
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
            "fill_value": 0.0 if self.dtype.startswith("float") else 0,
            "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
            "attributes": attributes or {},
        }

    def to_json(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "dtype": self.dtype, "chunk_rows": self.chunk_rows}

    @classmethod
    def from_json(cls, name: str, doc: Any, where: str | os.PathLike[str]) -> ArraySpec:
        """Build a spec from its manifest entry, validating every field."""
        try:
            shape = tuple(_integer(s) for s in doc["shape"])
            spec = cls(name, shape, _string(doc["dtype"]), _integer(doc["chunk_rows"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise StoreFormatError(where, f"array {short_repr(name)} has an invalid entry: {exc!r}") from None
        if spec.chunk_bytes > 2**34 or spec.nbytes > 2**50:
            raise StoreFormatError(where, f"array {name!r} declares absurd sizes {short_repr(shape)}")
        return spec


def _integer(value: Any) -> int:
    """A JSON integer, exactly: not a float, a bool or a string that int() would accept."""
    if type(value) is not int:
        raise TypeError(f"{short_repr(value)} is not an integer")
    return value


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{short_repr(value)} is not a string")
    return value


def short_repr(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, for messages about untrusted values."""
    try:
        text = repr(value)
    except RecursionError:
        text = f"<deeply nested {type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def chunk_rows_for(row_bytes: int, target_bytes: int) -> int:
    """Rows per chunk so that a chunk file is about ``target_bytes``.

    Rounded down to a multiple of 8 rows from 16 rows up (so rounding never
    loses more than a third), which makes the chunk size page-aligned for the
    usual image and audio shapes; fewer rows are kept as they are.
    """
    rows = max(1, target_bytes // max(1, row_bytes))
    return rows - rows % 8 if rows >= 16 else rows


def write_json_atomic(path: str | os.PathLike[str], doc: Any, fsync: bool = True) -> None:
    """Write ``doc`` as JSON to ``path`` via a temporary file and a rename."""
    write_bytes_atomic(path, json.dumps(doc, indent=1, sort_keys=True).encode(), fsync)


TEMP_FILE = re.compile(r"\..+\.tmp\d+")  # the names of write_bytes_atomic's temporary files


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes | memoryview, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` via a temporary file (a :data:`TEMP_FILE` name) and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_group_metadata(root: Path, format_version: int) -> None:
    """Write the store's root ``zarr.json`` (a Zarr v3 group)."""
    doc = {
        "zarr_format": 3,
        "node_type": "group",
        "attributes": {GROUP_ATTRIBUTE: {"format_version": format_version}},
    }
    write_json_atomic(root / "zarr.json", doc)


def write_array(root: Path, spec: ArraySpec, data: np.ndarray, attributes: dict[str, Any] | None = None) -> None:
    """Write a whole (small) array: its chunk files and its ``zarr.json``.

    The last chunk is zero-padded to full size, as Zarr stores edge chunks.
    """
    flat = np.ascontiguousarray(data, dtype=spec.dtype).reshape(spec.shape)
    for k in range(spec.num_chunks):
        part = flat[k * spec.chunk_rows : (k + 1) * spec.chunk_rows]
        write_chunk(root, spec, k, part)
    write_array_metadata(root, spec, attributes)


def write_chunk(root: Path, spec: ArraySpec, k: int, rows: np.ndarray, fsync: bool = False) -> None:
    """Write chunk ``k`` of ``spec`` from ``rows`` (at most ``chunk_rows``), zero-padded."""
    buf = np.ascontiguousarray(rows, dtype=spec.dtype)
    data = memoryview(buf.data).cast("B")
    pad = spec.chunk_bytes - len(data)
    if pad < 0:
        raise ValueError(f"chunk {k} of {spec.name} has {len(rows)} rows, more than {spec.chunk_rows}")
    write_bytes_atomic(root / spec.chunk_key(k), bytes(data) + bytes(pad) if pad else data, fsync)


def write_array_metadata(root: Path, spec: ArraySpec, attributes: dict[str, Any] | None = None) -> None:
    """Write the array's ``zarr.json`` and the ``zarr.json`` of its parent groups."""
    parts = spec.name.split("/")
    for depth in range(1, len(parts)):
        group = root.joinpath(*parts[:depth]) / "zarr.json"
        if not group.exists():
            write_json_atomic(group, {"zarr_format": 3, "node_type": "group", "attributes": {}}, fsync=False)
    write_json_atomic(root / spec.name / "zarr.json", spec.metadata(attributes), fsync=False)


def irregular_file(root: Path, name: str) -> str | None:
    """Why the store file ``name`` is not a plain file inside the store, or None."""
    path = root / name
    real = os.path.realpath(path)
    if not Path(real).is_relative_to(os.path.realpath(root)):
        return f"resolves to {real}, outside the store"
    if path.is_symlink():
        return f"is a symlink to {os.readlink(path)}"
    if os.path.realpath(path.parent) != os.path.join(os.path.realpath(root), os.path.dirname(name)).rstrip("/"):
        return "is reached through a symlinked directory"
    if not stat.S_ISREG(path.lstat().st_mode):
        return "is not a regular file"
    return None
