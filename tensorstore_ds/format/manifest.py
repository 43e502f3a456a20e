"""The manifest: what a finished store holds and how it was made.

``manifest.json`` is written last and atomically; its presence is what marks a
store as finished. Readers check :data:`FORMAT_VERSION` before anything else.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._version import __version__
from ..errors import StoreFormatError, StoreIncompleteError, StoreNotFoundError
from .layout import ArraySpec, write_json_atomic

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
FAILURES = "failures.jsonl"
WORK_DIR = ".convert"
TEXT_ENCODINGS = ("utf-8", "json")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*$")
_MAX_MANIFEST_BYTES = 64 * 2**20


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
    """

    num_samples: int
    arrays: dict[str, ArraySpec]
    text: dict[str, str]
    options: dict[str, Any]
    source: dict[str, Any]
    counts: dict[str, Any]
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
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
        if path.stat().st_size > _MAX_MANIFEST_BYTES:
            raise StoreFormatError(path, f"manifest is {path.stat().st_size} bytes, more than any store writes")
        try:
            doc = json.loads(path.read_bytes())
        except (ValueError, UnicodeDecodeError) as exc:
            raise StoreFormatError(path, f"manifest is not valid JSON ({exc})") from None
        return cls.from_json(doc, path)

    @classmethod
    def from_json(cls, doc: Any, path: Path) -> Manifest:
        """Validate a parsed manifest document."""
        if not isinstance(doc, dict) or doc.get("format") != "tensorstore_ds":
            raise StoreFormatError(path, "not a tensorstore_ds manifest")
        version = doc.get("format_version")
        if not isinstance(version, int) or version < 1:
            raise StoreFormatError(path, f"format_version {version!r} is not a positive integer")
        if version > FORMAT_VERSION:
            raise StoreFormatError(
                path,
                f"store format version {version} is newer than this library reads "
                f"(version {FORMAT_VERSION}); upgrade tensorstore_ds",
            )
        try:
            n = int(doc["num_samples"])
            arrays = {check_name(k, path): ArraySpec.from_json(k, v, path) for k, v in doc["arrays"].items()}
            text = {check_name(k, path): str(v["encoding"]) for k, v in doc["text"].items()}
            parts = {k: doc[k] for k in ("options", "source", "counts")}
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise StoreFormatError(path, f"manifest is missing or mangles a field ({exc!r})") from None
        bad = [k for k, e in text.items() if e not in TEXT_ENCODINGS]
        if n < 0 or bad:
            raise StoreFormatError(path, f"bad num_samples {n} or text encodings {bad}")
        files = doc.get("files") or {}
        for name in files:
            check_name(name, path)
        return cls(
            n, arrays, text, files=files, format_version=version,
            library_version=str(doc.get("library_version", "?")), created=str(doc.get("created", "?")),
            **parts,
        )


def _raise_missing(root: Path) -> None:
    work = root / WORK_DIR
    if work.is_dir():
        done = 0
        try:
            done = int(json.loads((work / "state.json").read_bytes()).get("converted", 0))
        except (OSError, ValueError, AttributeError):
            pass
        raise StoreIncompleteError(root, done)
    if not root.exists():
        raise StoreNotFoundError(root, "the path does not exist")
    raise StoreNotFoundError(root, f"it has no {MANIFEST}")
