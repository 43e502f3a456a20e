"""Human and machine summaries of a store."""

from __future__ import annotations

import os
from typing import Any

from ..format.manifest import FAILURES, Manifest
from ..units import format_bytes
from .store import open_store


def summary(path: str | os.PathLike[str], manifest: Manifest) -> str:
    """The end-of-conversion summary: converted, failed by reason, bytes."""
    counts = manifest.counts
    data = sum(s.nbytes for s in manifest.arrays.values())
    lines = [
        f"store {os.fspath(path)}: {counts['converted']} samples converted, {counts['failed']} failed, "
        f"{format_bytes(data)}"
    ]
    for reason, n in counts.get("failed_by_reason", {}).items():
        lines.append(f"  failed: {n} x {reason}")
    if counts["failed"]:
        lines.append(f"  each failed row is listed in {os.path.join(os.fspath(path), FAILURES)}")
    return "\n".join(lines)


def info(path: str | os.PathLike[str], storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything a person or program wants to know about a store (a directory or a URL)."""
    store = open_store(path, storage_options=storage_options)
    m = store.manifest
    on_disk = sum(s.num_chunks * s.chunk_bytes for s in m.arrays.values())
    return {
        "path": os.fspath(path),
        "samples": m.num_samples,
        "media": store.media,
        "fields": m.fields,
        "arrays": {n: f"{s.dtype}{list(s.shape)}" for n, s in m.arrays.items() if not n.startswith("text/")},
        "bytes_on_disk": on_disk,
        "size": format_bytes(on_disk),
        "options": m.options,
        "source": m.source,
        "format_version": m.format_version,
        "library_version": m.library_version,
        "created": m.created,
        "failed_by_reason": m.counts.get("failed_by_reason", {}),
    }


def format_info(doc: dict[str, Any]) -> str:
    """:func:`info` as indented ``key: value`` lines, for a person."""
    lines = []
    for key, value in doc.items():
        if isinstance(value, dict):
            lines.append(f"{key}:")
            lines.extend(f"  {k}: {v}" for k, v in value.items())
        else:
            lines.append(f"{key}: {value}")
    return "\n".join(lines)
