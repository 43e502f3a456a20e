"""The end of a conversion: the part files compacted into the small arrays, the caption index and failures.

Each committed chunk left a part file (its rows' small values, text and
failure records, and the digests of its chunk files); :func:`compact` reads
them in order and writes the small arrays, the text columns, the media
arrays' metadata and ``failures.jsonl`` (atomically).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..errors import StoreError
from ..format.layout import ArraySpec, write_array, write_array_metadata
from ..format.manifest import FAILURES
from ..format.text import TextColumnWriter, text_specs


class PlanLike(Protocol):
    """What :func:`compact` reads of the writer's plan."""

    @property
    def columns(self) -> Sequence[Any]: ...

    @property
    def text(self) -> dict[str, str]: ...

    @property
    def chunk_rows(self) -> int: ...


__all__ = ["compact", "read_json"]


def compact(
    root: Path, plan: PlanLike, parts: list[Path], n: int, small_chunk_rows: int
) -> tuple[dict[str, ArraySpec], dict[str, int], dict[str, dict[str, Any]]]:
    """Write the store's arrays from ``parts`` (in order) for ``n`` samples.

    Returns
    -------
    tuple
        The array specs by name, the failure counts by reason, and the
        digests of chunk files recorded in the parts.
    """
    small: dict[str, list[Any]] = {c.name: [] for c in plan.columns if not c.media}
    texts = {name: TextColumnWriter(root, name, enc) for name, enc in plan.text.items()}
    by_reason: dict[str, int] = {}
    known: dict[str, dict[str, Any]] = {}
    with open(root / f".{FAILURES}.tmp", "w", encoding="utf-8") as failures:
        for path in parts:
            part = read_json(path, "part file")
            for name, values in small.items():
                values.extend(part["small"][name])
            for name, writer in texts.items():
                writer.extend(part["text"][name])
            known.update(part.get("files", {}))
            for record in part["failures"]:
                failures.write(json.dumps(record, ensure_ascii=False) + "\n")
                by_reason[record["reason"]] = by_reason.get(record["reason"], 0) + 1
    os.replace(root / f".{FAILURES}.tmp", root / FAILURES)
    arrays: dict[str, ArraySpec] = {}
    for column in plan.columns:
        rows = plan.chunk_rows if column.media else max(1, min(small_chunk_rows, n))  # no padding to 2**20
        spec = ArraySpec(column.name, (n, *column.row_shape), column.dtype, rows)
        if column.media:
            write_array_metadata(root, spec)
        else:
            write_array(root, spec, np.asarray(small[column.name], column.dtype).reshape(spec.shape))
        arrays[column.name] = spec
    for name, writer in texts.items():
        total = writer.finish()
        for spec in text_specs(name, n, total):
            arrays[spec.name] = spec
    return arrays, dict(sorted(by_reason.items())), known


def read_json(path: Path, what: str) -> Any:
    """A JSON file the writer wrote itself; damage (not a crash, which atomic writes survive) is a StoreError."""
    try:
        return json.loads(path.read_bytes())
    except (ValueError, RecursionError, FileNotFoundError) as exc:
        raise StoreError(f"the {what} {path} is damaged ({exc}); rerun with overwrite=True to start over") from None
