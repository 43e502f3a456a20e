"""Hashing: the size and SHA-256 of every store file, as recorded in its manifest.

SHA-256 runs at about disk speed on CPUs with SHA extensions, and files are
hashed by several threads at once (hashlib releases the GIL on large updates).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..options import byte_bar
from .manifest import MANIFEST, RESERVED_DIRS

BLOCK = 4 * 2**20
ALGORITHM = "sha256"


def hash_file(path: Path, progress: Any = None) -> tuple[int, str]:
    """Size and SHA-256 hex digest of one file."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(BLOCK)
        view = memoryview(buf)
        while n := f.readinto(buf):
            digest.update(view[:n])
            size += n
            if progress is not None:
                progress.update(n)
    return size, digest.hexdigest()


def store_files(root: Path) -> list[str]:
    """Store-relative paths of every regular file except the manifest and work files."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = Path(dirpath).relative_to(root)
        dirnames[:] = sorted(d for d in dirnames if not (rel == Path(".") and d in RESERVED_DIRS))
        found.extend(str(rel / name) if str(rel) != "." else name for name in sorted(filenames))
    return [f for f in found if f != MANIFEST and not Path(f).name.startswith(f".{MANIFEST}")]


def checksum_files(
    root: Path, names: Iterable[str], threads: int = 4, progress: bool | None = False, desc: str = "checksums"
) -> dict[str, dict[str, Any]]:
    """``{name: {"size", "sha256"}}`` for the given store-relative files."""

    names = list(names)
    total = sum((root / n).stat().st_size for n in names)
    with (
        byte_bar(total, desc, progress) as bar,
        ThreadPoolExecutor(threads) as pool,
    ):
        results = list(pool.map(lambda n: hash_file(root / n, bar), names))
    return {n: {"size": size, ALGORITHM: digest} for n, (size, digest) in zip(names, results)}
