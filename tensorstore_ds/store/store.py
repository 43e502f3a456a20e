"""``open_store``: a finished store as numpy arrays and text, without torch.

A store is a local directory or, for any fsspec URL (``https://``, ``s3://``,
``gs://``...), a local cache of one that fetches files as they are needed
(see :mod:`tensorstore_ds.store.remote`). ``file://`` URLs and paths are local.
"""

from __future__ import annotations

import json
import os
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FieldNotFoundError, StoreFormatError
from ..format.layout import ArraySpec, irregular_file
from ..format.manifest import FAILURES, MANIFEST, Manifest
from ..format.text import TextColumn
from .chunked import ChunkedArray, LocalFiles, StoreFiles

MEDIA_FIELDS = {"image": "images", "audio": "audio"}
MAX_ARRAY_METADATA = 2**20


class Store:
    """A finished, validated store (use :func:`open_store`).

    Parameters
    ----------
    path
        The store directory.
    manifest
        Its validated manifest.
    files
        Where its files are (default: under ``path``); for a remote store,
        ``path`` is the local cache directory.
    parts
        A store made of parts (a sharded conversion committed in object
        storage): the part stores, in sample order. Serve it with
        ``TensorStoreDataset`` (one dataset) or read ``store.parts``.
    """

    def __init__(
        self, path: Path, manifest: Manifest, files: StoreFiles | None = None, parts: list[Store] | None = None
    ) -> None:
        self.path = path
        self.manifest = manifest
        self.files: StoreFiles = files if files is not None else LocalFiles(path)
        self.parts: list[Store] = list(parts or [])
        self._arrays: dict[str, ChunkedArray] = {}
        self._text: dict[str, TextColumn] = {}

    def __len__(self) -> int:
        return self.manifest.num_samples

    def __repr__(self) -> str:
        return f"Store({self.location!r}, samples={len(self)}, fields={self.fields})"

    @property
    def location(self) -> str:
        """The store's path, or its URL for a remote store."""
        return self.files.location

    @property
    def fields(self) -> list[str]:
        """Names that :meth:`array` or :meth:`text` accept."""
        return self.manifest.fields

    @property
    def media(self) -> str:
        """``"image"`` or ``"audio"``."""
        return str(self.manifest.options.get("media", "image" if "images" in self.manifest.arrays else "audio"))

    def array(self, name: str) -> ChunkedArray:
        """A per-sample array (``images``, ``audio``, ``image_size``, ...), memory-mapped."""
        name = MEDIA_FIELDS.get(name, name)
        self._whole()
        if name not in self.manifest.arrays or name.startswith("text/"):
            raise FieldNotFoundError(self.location, "array", name, self.array_names)
        return self._chunked(name)

    def _whole(self) -> None:
        if self.parts:
            raise StoreFormatError(
                self.files.where(MANIFEST),
                f"a store made of {len(self.parts)} parts has no arrays of its own: read store.parts[k], "
                "or serve it whole with TensorStoreDataset",
            )

    def _chunked(self, name: str) -> ChunkedArray:
        if name not in self._arrays:
            self._arrays[name] = ChunkedArray(self.path, self.manifest.arrays[name], files=self.files)
        return self._arrays[name]

    @property
    def array_names(self) -> list[str]:
        return sorted(n for n in self.manifest.arrays if not n.startswith("text/"))

    def text(self, name: str = "caption") -> TextColumn:
        """A text column (``caption``, ``captions``, kept columns), loaded once."""
        if name not in self._text:
            self._text[name] = self.load_text(name)
        return self._text[name]

    def paged_text(self, name: str) -> TextColumn:
        """A text column read on demand: only the chunk files holding the rows asked for are read.

        For a store at a URL only those chunk files are downloaded; :meth:`text`
        instead loads the whole column once.
        """
        if name not in self.manifest.text:
            raise FieldNotFoundError(self.location, "text column", name, sorted(self.manifest.text))
        data, offsets = (self._chunked(f"text/{name}/{part}") for part in ("bytes", "offsets"))
        return TextColumn(data, offsets, self.manifest.text[name], self.files.where(f"text/{name}"))

    def load_text(self, name: str) -> TextColumn:
        """Read a text column afresh, without keeping it in this object."""
        self._whole()
        if name not in self.manifest.text:
            raise FieldNotFoundError(self.location, "text column", name, sorted(self.manifest.text))
        return _load_text(self, name)

    @property
    def captions(self) -> TextColumn:
        """The primary caption of every sample."""
        return self.text("caption")

    def field_nbytes(self, name: str) -> int:
        """Bytes that serving ``name`` from RAM takes."""
        if name in self.manifest.text:
            return sum(self.manifest.arrays[f"text/{name}/{p}"].nbytes for p in ("bytes", "offsets"))
        return self.manifest.arrays[MEDIA_FIELDS.get(name, name)].nbytes

    def failures(self) -> list[dict[str, Any]]:
        """Every failed source row: ``row``, ``key``, ``reason``, ``detail``."""
        if self.parts:
            return [f for part in self.parts for f in part.failures()]
        if not self.files.exists(FAILURES):
            return []
        path = self.files.path(FAILURES)
        why = irregular_file(path.parent, path.name)
        if why:
            raise StoreFormatError(self.files.where(FAILURES), f"the failure record {why}")
        records = []
        with open(path, "rb") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    records.append(_failure_record(line, number, self.files.where(FAILURES)))
        return records

    def fetch(self, names: list[str], progress: bool = False) -> None:
        """Download every chunk of these arrays now, in parallel (a no-op for a local store)."""
        keys = [spec.chunk_key(k) for spec in (self.manifest.arrays[n] for n in names) for k in range(spec.num_chunks)]
        self.files.fetch(keys, progress)

    def close(self) -> None:
        """Unmap every mapped chunk."""
        for array in self._arrays.values():
            array.close()
        for part in self.parts:
            part.close()

    @cached_property
    def nbytes(self) -> int:
        """Bytes of all data in the store."""
        return sum(spec.nbytes for spec in self.manifest.arrays.values())


def open_store(
    path: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str] | None = None,
    cache_limit: int | str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> Store:
    """Open and check a finished store, local or at a URL.

    Every check happens before anything is mapped: the manifest's format
    version, the Zarr metadata of every array, and the size of every chunk
    file (a truncated file is an error here, never a SIGBUS later). A remote
    store's files are checked (size and SHA-256) as they arrive.

    Parameters
    ----------
    path
        A store directory, or any fsspec URL of one (``https://host/store``,
        ``s3://bucket/store``); ``file://`` URLs are local.
    cache_dir
        Remote stores only: the local directory that mirrors the store
        (default: ``$TENSORSTORE_DS_CACHE/remote/<hash of the URL>``).
    cache_limit
        Remote stores only: bytes (or ``"20GiB"``) of chunk files kept in the
        cache; the least recently used are deleted beyond it.
    storage_options
        Remote stores only: passed to fsspec (credentials, endpoints, ...).

    Raises
    ------
    StoreNotFoundError, StoreIncompleteError, StoreFormatError
        With the path or URL of the offending file.
    """
    files: StoreFiles
    if is_url(path):
        from .remote import RemoteFiles

        remote = RemoteFiles.connect(os.fspath(path), cache_dir, cache_limit, storage_options)
        files, manifest = remote, remote.manifest
    else:
        files = LocalFiles(local_path(path))
        manifest = Manifest.read(files.root)
    if manifest.parts:
        return Store(
            files.root, manifest, files, _open_parts(path, manifest, files, cache_dir, cache_limit, storage_options)
        )
    _check_store(manifest, files)
    return Store(files.root, manifest, files)


def _open_parts(
    path: str | os.PathLike[str],
    manifest: Manifest,
    files: StoreFiles,
    cache_dir: str | os.PathLike[str] | None,
    cache_limit: int | str | None,
    storage_options: dict[str, Any] | None,
) -> list[Store]:
    """The parts of a store made of parts, each opened, checked, and matched against the pinned manifest."""
    from ..format.hashing import hash_file

    parts = []
    for entry in manifest.parts:
        where = f"{os.fspath(path).rstrip('/')}/{entry['path']}" if is_url(path) else files.root / entry["path"]
        part_cache = None if cache_dir is None else Path(cache_dir) / entry["path"]
        part = open_store(where, part_cache, cache_limit, storage_options)
        if part.parts or hash_file(part.files.root / MANIFEST)[1] != entry["manifest_sha256"]:
            part.close()
            raise StoreFormatError(
                files.where(MANIFEST),
                f"part {entry['path']} is not the store this manifest lists (its manifest differs)",
            )
        if len(part) != entry["num_samples"]:
            raise StoreFormatError(
                files.where(MANIFEST), f"part {entry['path']} has {len(part)} samples, not {entry['num_samples']}"
            )
        parts.append(part)
    return parts


def is_url(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` names a remote store (a URL other than ``file://``)."""
    text = os.fspath(path)
    return isinstance(text, str) and "://" in text and not text.startswith("file://")


def local_path(path: str | os.PathLike[str]) -> Path:
    """A local path, from a path or a ``file://`` URL."""
    text = os.fspath(path)
    if isinstance(text, str) and text.startswith("file://"):
        from urllib.parse import unquote, urlparse

        return Path(unquote(urlparse(text).path))
    return Path(text)


def _check_store(manifest: Manifest, files: StoreFiles) -> None:
    for name, spec in manifest.arrays.items():
        key = f"{name}/zarr.json"
        if not files.exists(key):
            raise StoreFormatError(files.where(key), f"metadata of array {name!r} is missing")
        if isinstance(files, LocalFiles):
            why = irregular_file(files.root, key)
            if why:
                raise StoreFormatError(files.where(key), f"array metadata {why}")
        per_sample = not name.startswith("text/")
        if per_sample and spec.shape[0] != manifest.num_samples:
            raise StoreFormatError(
                files.where(key), f"array has {spec.shape[0]} rows, the store has {manifest.num_samples} samples"
            )
        _check_zarr_metadata(files.path(key), spec, files.where(key))
        files.check_chunks(spec)
    for name in manifest.text:
        for part in ("bytes", "offsets"):
            if f"text/{name}/{part}" not in manifest.arrays:
                raise StoreFormatError(files.where(MANIFEST), f"text column {name!r} lacks its {part} array")


def _failure_record(line: bytes, number: int, where: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise StoreFormatError(where, f"line {number} is not valid JSON ({type(exc).__name__})") from None
    if not isinstance(record, dict):
        raise StoreFormatError(where, f"line {number} is not a failure record")
    return record


def _check_zarr_metadata(meta: Path, spec: ArraySpec, where: str) -> None:
    """The array's ``zarr.json`` describes the same layout as the manifest, so Zarr readers agree with us."""
    size = meta.stat().st_size
    if size > MAX_ARRAY_METADATA:
        raise StoreFormatError(
            where, f"array metadata is {size} bytes, more than any store writes ({MAX_ARRAY_METADATA})"
        )
    try:
        doc = json.loads(meta.read_bytes())
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise StoreFormatError(where, f"array metadata is not valid JSON ({type(exc).__name__})") from None
    expected = spec.metadata()
    for key in ("zarr_format", "node_type", "shape", "data_type", "chunk_grid", "chunk_key_encoding", "codecs"):
        found = doc.get(key) if isinstance(doc, dict) else None
        if found != expected[key]:
            raise StoreFormatError(where, f"{key} is {found!r}, the manifest says {expected[key]!r}")


def _load_text(store: Store, name: str) -> TextColumn:
    data = np.asarray(store._chunked(f"text/{name}/bytes"))
    offsets = np.asarray(store._chunked(f"text/{name}/offsets"))
    where = store.files.where(f"text/{name}/offsets")
    if len(offsets) != len(store) + 1 or (len(offsets) and (offsets[0] != 0 or offsets[-1] != len(data))):
        raise StoreFormatError(where, f"offsets do not span the {len(data)} text bytes of {len(store)} samples")
    if np.any(np.diff(offsets) < 0):
        raise StoreFormatError(where, "offsets are not increasing")
    return TextColumn(data, offsets, store.manifest.text[name], where=store.files.where(f"text/{name}"))
