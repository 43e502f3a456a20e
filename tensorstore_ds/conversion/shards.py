"""Sharded conversion: chunk-aligned slices of one source, converted anywhere, committed once.

A conversion of ``N`` shards splits the source's rows into ``N`` consecutive
ranges whose sizes are multiples of the store's chunk size. Shard ``K`` is
converted, by any machine, into its own store ``OUT/.shards/K-of-N`` (so no
two writers ever touch one file, and each shard resumes after a crash like any
conversion). :func:`commit` then merges the finished shards, in order, into
``OUT`` and writes the manifest last: the result is the store a single-machine
conversion of the same source and options makes.

Into object storage (``OUT`` an ``s3://``... URL), shard ``K`` is converted
into the part ``OUT/parts/K-of-N`` instead, and :func:`commit` writes a
manifest listing the parts, copying nothing
(:mod:`~tensorstore_ds.conversion.parts`).

Two ways to run the shards:

- a job array: ``tensorstore-ds convert SOURCE OUT --shard K/N`` on each of N
  machines (or tasks), then ``tensorstore-ds commit OUT``;
- a Dask cluster: ``tensorstore-ds convert SOURCE OUT --engine dask
  --scheduler tcp://HOST:8786`` (or ``convert(..., engine="dask",
  client=client)``), which runs every shard as a task (retried by Dask if it
  fails or its worker is lost) and commits.
"""

from __future__ import annotations

import math
import os
import re
import shutil
from pathlib import Path
from typing import Any

from ..errors import OptionsError, StoreError
from ..format.manifest import MANIFEST, SHARDS_DIR, Manifest

_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
_DIR = re.compile(r"^(\d{5})-of-(\d{5})$")


def parse_shard(spec: str | tuple[int, int]) -> tuple[int, int]:
    """``(K, N)`` from ``"K/N"`` (0 <= K < N)."""
    if isinstance(spec, tuple):
        k, n = spec
    else:
        match = _SHARD.match(str(spec))
        if not match:
            raise OptionsError(f"shard must look like K/N (e.g. 3/16), not {spec!r}")
        k, n = int(match.group(1)), int(match.group(2))
    if not 0 <= k < n:
        raise OptionsError(f"shard {k}/{n}: K must be in [0, N)")
    return k, n


def shard_ranges(num_rows: int, shards: int, chunk_rows: int) -> list[tuple[int, int]]:
    """Consecutive source-row ranges, each a whole number of chunks (the last may be short or empty)."""
    size = max(1, math.ceil(num_rows / shards / chunk_rows)) * chunk_rows
    return [(min(k * size, num_rows), min((k + 1) * size, num_rows)) for k in range(shards)]


def shard_dir(out: str | os.PathLike[str], k: int, n: int) -> str | Path:
    """Where shard ``k`` of ``n`` of the store ``out`` is converted (a part of it, when ``out`` is a URL)."""
    from ..store.store import is_url

    if is_url(out):
        from .parts import part_path

        return f"{os.fspath(out).rstrip('/')}/{part_path(k, n)}"
    return Path(out) / SHARDS_DIR / f"{k:05d}-of-{n:05d}"


def commit(
    out: str | os.PathLike[str], progress: bool | None = True, storage_options: dict[str, Any] | None = None
) -> Manifest:
    """Assemble the finished shards of ``out``; the manifest comes last.

    A local store merges its shards into one (see above). A store at a URL
    becomes a store made of its parts, without copying a sample
    (:func:`~tensorstore_ds.conversion.parts.commit_parts`).

    Raises
    ------
    StoreError
        Shards are missing or unfinished; it names them.
    """
    from ..store.store import is_url
    from .merge import merge

    if is_url(out):
        from .parts import commit_parts

        return commit_parts(os.fspath(out), storage_options)

    root = Path(out)
    if (root / MANIFEST).exists():
        return Manifest.read(root)
    parts = _finished_shards(root)
    first = Manifest.read(parts[0])
    source = {k: v for k, v in first.source.items() if k not in ("shard", "rows")}
    manifest = merge(root, [str(p) for p in parts], progress=bool(progress), source=source)
    shutil.rmtree(root / SHARDS_DIR, ignore_errors=True)
    return manifest


def _finished_shards(root: Path) -> list[Path]:
    found: dict[int, dict[int, Path]] = {}
    for entry in sorted((root / SHARDS_DIR).glob("*-of-*")) if (root / SHARDS_DIR).is_dir() else []:
        match = _DIR.match(entry.name)
        if match:
            found.setdefault(int(match.group(2)), {})[int(match.group(1))] = entry
    if len(found) != 1:
        raise StoreError(
            f"{root}: expected the shards of one split under {SHARDS_DIR}/, found "
            f"{sorted(found) or 'none'} shard counts"
        )
    n, shards = next(iter(found.items()))
    missing = [k for k in range(n) if k not in shards or not (shards[k] / MANIFEST).exists()]
    if missing:
        raise StoreError(
            f"{root}: shards {missing} of {n} are missing or unfinished; "
            f"convert them with --shard K/{n} before committing"
        )
    return [shards[k] for k in range(n)]
