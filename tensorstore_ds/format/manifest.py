"""The manifest: what a finished store holds and how it was made.

``manifest.json`` is written last and atomically; its presence is what marks a
store as finished. Readers check :data:`FORMAT_VERSION` before anything else.

A store made of parts (a sharded conversion into object storage, committed
without copying) has a manifest of :data:`PARTS_FORMAT_VERSION` whose
``parts`` lists the part stores in sample order, each a complete store of
version 1 under the store's URL, pinned by the SHA-256 of its manifest;
``files`` lists those part manifests. Readers of version 1 refuse it.

Forward compatibility: a reader refuses a store of a newer format version, but
within one version it ignores fields it does not know (at the top level and in
array and text entries), so later releases can add information without
breaking older readers. Every field it does know is validated: types, ranges
(no negative or absurd sizes, at most :data:`MAX_SAMPLES` samples) and names
(no path may leave the store).
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._version import __version__
from ..errors import StoreFormatError, StoreIncompleteError, StoreNotFoundError
from .layout import ArraySpec, short_repr, write_json_atomic

FORMAT_VERSION = 1
PARTS_FORMAT_VERSION = 2  # a store made of parts (see the module docstring)
PARTS_DIR = "parts"
MANIFEST = "manifest.json"
FAILURES = "failures.jsonl"
WORK_DIR = ".convert"
SHARDS_DIR = ".shards"
RESERVED_DIRS = (WORK_DIR, SHARDS_DIR)  # conversion state inside a store directory, never store data
TEXT_ENCODINGS = ("utf-8", "json")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*$")
_MAX_MANIFEST_BYTES = 64 * 2**20
MAX_SAMPLES = 2**50  # the largest per-sample array ArraySpec.from_json accepts has 2**50 bytes


def check_name(name: str, where: Path) -> str:
    """Reject array or column names that could escape the store directory."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name.split("/"):
        raise StoreFormatError(where, f"name {name!r} is not a safe store-relative path")
    return name


@dataclass
class Manifest:
    """Everything a reader needs to know about a finished store.

    Parameters
    ----------
    num_samples
        Samples in the store (rows of every per-sample array).
    arrays
        Every numeric array by store-relative name.
    text
        Text columns (``caption``, ``captions``, kept columns) by name, each
        with its encoding: ``"utf-8"`` strings or ``"json"`` values.
    options
        The preprocessing options the store was made with.
    source
        Description of the source: kind, spec and fingerprint.
    counts
        Rows read, converted, failed, and failures by reason.
    files
        Per-file size and checksum, by store-relative path.
    parts
        A store made of parts only: ``{"path", "num_samples", "rows_read",
        "manifest_sha256"}`` of each part store, in sample order.
    """

    num_samples: int
    arrays: dict[str, ArraySpec]
    text: dict[str, str]
    options: dict[str, Any]
    source: dict[str, Any]
    counts: dict[str, Any]
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    parts: list[dict[str, Any]] = field(default_factory=list)
    format_version: int = FORMAT_VERSION
    library_version: str = __version__
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))

    @property
    def fields(self) -> list[str]:
        """Servable fields: media arrays, per-sample arrays and text columns."""
        names = [n for n in self.arrays if "/" not in n]
        return sorted(names + list(self.text))

    def to_json(self) -> dict[str, Any]:
        return {
            "format": "tensorstore_ds",
            "format_version": self.format_version,
            "library_version": self.library_version,
            "created": self.created,
            "num_samples": self.num_samples,
            "arrays": {n: s.to_json() for n, s in self.arrays.items()},
            "text": {n: {"encoding": e} for n, e in self.text.items()},
            "options": self.options,
            "source": self.source,
            "counts": self.counts,
            "files": self.files,
            **({"parts": self.parts} if self.parts else {}),
        }

    def write(self, root: Path) -> None:
        write_json_atomic(root / MANIFEST, self.to_json())

    @classmethod
    def read(cls, root: Path) -> Manifest:
        """Read and validate ``root/manifest.json``.

        Raises
        ------
        StoreNotFoundError
            No store at ``root``.
        StoreIncompleteError
            A conversion into ``root`` has not finished.
        StoreFormatError
            The manifest is unreadable, of another version, or inconsistent.
        """
        path = root / MANIFEST
        if not path.is_file():
            _raise_missing(root)
        real = os.path.realpath(path)
        if not Path(real).is_relative_to(os.path.realpath(root)):
            raise StoreFormatError(path, f"manifest is a symlink to {real}, outside the store")
        if path.stat().st_size > _MAX_MANIFEST_BYTES:
            raise StoreFormatError(path, f"manifest is {path.stat().st_size} bytes, more than any store writes")
        try:
            doc = json.loads(path.read_bytes())
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: absurd nesting
            raise StoreFormatError(path, f"manifest is not valid JSON ({type(exc).__name__}: {exc})") from None
        return cls.from_json(doc, path)

    @classmethod
    def from_json(cls, doc: Any, path: Path) -> Manifest:
        """Validate a parsed manifest document."""
        if not isinstance(doc, dict) or doc.get("format") != "tensorstore_ds":
            raise StoreFormatError(path, "not a tensorstore_ds manifest")
        version = doc.get("format_version")
        if type(version) is not int or version < 1:
            raise StoreFormatError(path, f"format_version {short_repr(version)} is not a positive integer")
        if version > PARTS_FORMAT_VERSION or (version == PARTS_FORMAT_VERSION and not doc.get("parts")):
            raise StoreFormatError(
                path,
                f"store format version {version} is newer than this library reads "
                f"(version {FORMAT_VERSION}, or {PARTS_FORMAT_VERSION} with parts); upgrade tensorstore_ds",
            )
        try:
            n = doc["num_samples"]
            arrays = {check_name(k, path): ArraySpec.from_json(k, v, path) for k, v in _object(doc, "arrays").items()}
            text = {check_name(k, path): v["encoding"] for k, v in _object(doc, "text").items()}
            sections = {k: _object(doc, k) for k in ("options", "source", "counts")}
        except StoreFormatError:  # a ValueError too, but already says what is wrong
            raise
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise StoreFormatError(path, f"manifest is missing or mangles a field ({exc!r})") from None
        if type(n) is not int or not 0 <= n <= MAX_SAMPLES:
            raise StoreFormatError(path, f"bad num_samples {short_repr(n)}: not an integer in 0..{MAX_SAMPLES}")
        bad = [k for k, e in text.items() if e not in TEXT_ENCODINGS]
        if bad:
            raise StoreFormatError(path, f"bad text encodings for {bad}: not one of {TEXT_ENCODINGS}")
        files = doc.get("files") or {}  # stores written before checksums have none
        if not isinstance(files, dict):
            raise StoreFormatError(path, f"files is {type(files).__name__}, not an object")
        for name, entry in files.items():
            check_name(name, path)
            size = entry.get("size") if isinstance(entry, dict) else None
            if type(size) is not int or size < 0 or not isinstance(entry.get("sha256"), str):
                raise StoreFormatError(path, f"files entry {name!r} is {short_repr(entry)}, not a size and a sha256")
        parts = _parts(doc, path, n) if version == PARTS_FORMAT_VERSION else []
        return cls(
            n,
            arrays,
            text,
            files=files,
            parts=parts,
            format_version=version,
            library_version=_label(doc.get("library_version")),
            created=_label(doc.get("created")),
            **sections,
        )


def _parts(doc: dict[str, Any], path: Path, num_samples: int) -> list[dict[str, Any]]:
    """The validated part list of a store made of parts: safe paths, counts adding up to ``num_samples``."""
    parts = doc["parts"]
    if not isinstance(parts, list):
        raise StoreFormatError(path, f"parts is {type(parts).__name__}, not a list")
    for part in parts:
        ok = (
            isinstance(part, dict)
            and isinstance(part.get("path"), str)
            and isinstance(part.get("manifest_sha256"), str)
        )
        if not ok or any(type(part.get(k)) is not int or part[k] < 0 for k in ("num_samples", "rows_read")):
            raise StoreFormatError(path, f"parts entry {short_repr(part)} lacks a path, counts or a manifest sha256")
        check_name(part["path"], path)
    if sum(p["num_samples"] for p in parts) != num_samples:
        raise StoreFormatError(
            path, f"the parts hold {sum(p['num_samples'] for p in parts)} samples, not {num_samples}"
        )
    return parts


def _label(value: Any) -> str:
    """An informational string field; anything else is unknown."""
    return value if isinstance(value, str) else "?"


def _object(doc: dict[str, Any], key: str) -> dict[str, Any]:
    """``doc[key]``, which must be a JSON object."""
    value = doc[key]
    if not isinstance(value, dict):
        raise TypeError(f"{key} is {type(value).__name__}, not an object")
    return value


def _raise_missing(root: Path) -> None:
    work = root / WORK_DIR
    if work.is_dir():
        done: Any = 0
        try:  # the count is only for the message: a damaged state file must not hide the real error
            state = json.loads((work / "state.json").read_bytes())
            done = state.get("converted", 0) if isinstance(state, dict) else 0
        except (OSError, ValueError, RecursionError):
            pass
        raise StoreIncompleteError(root, done if type(done) is int and done >= 0 else 0)
    if not root.exists():
        raise StoreNotFoundError(root, "the path does not exist")
    raise StoreNotFoundError(root, f"it has no {MANIFEST}")
