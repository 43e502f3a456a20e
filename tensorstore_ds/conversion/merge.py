"""``merge``: stores converted from consecutive parts of one source, as one store.

A source split into parts (say, two Parquet files holding its first and second
half) and converted part by part, on different machines, with the same
preprocessing options, merges into the store that converting the whole source
would have made: the same arrays, chunk files, captions, kept columns and
failures.

Source rows: each part numbers its rows from 0, so merge adds to a part's
``source_row`` values (and to the ``row`` of its failures) the rows read by
the parts before it (their ``counts["rows_read"]``). Give the stores in source
order. The samples are written by the conversion's own store writer, so the
merged store is resumable (rerun the same merge after an interruption) and
has the same layout, checksums and manifest as a conversion; its ``source``
lists the parts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ..errors import OptionsError, StoreFormatError, StoresMismatchError
from ..format.manifest import MANIFEST, Manifest
from ..options import progress_disabled
from ..store.chunked import ChunkedArray
from ..store.store import Store, open_store
from .writer import Column, Plan, StoreWriter

MEDIA = ("images", "audio")


def merge(
    out: str | os.PathLike[str],
    stores: Sequence[str | os.PathLike[str]],
    progress: bool | None = True,
    source: dict[str, Any] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> Manifest:
    """Merge stores made from consecutive parts of one source into one store at ``out``.

    Parameters
    ----------
    out
        The new store's directory (new or empty, or an interrupted merge of
        the same stores, which is resumed).
    stores
        Store directories or URLs, in source order.
    progress
        Show progress bars.
    source
        The merged store's source description; default: the list of parts.
        (Committing shards passes the original source's, so the store is the
        one a single conversion makes.)
    storage_options
        For stores at URLs: passed to fsspec.

    Raises
    ------
    StoresMismatchError
        Two stores were made with different preprocessing options; it names
        the option and both values.
    """
    if not stores:
        raise OptionsError("merge needs at least one store")
    opened = [open_store(s, storage_options=storage_options) for s in stores]
    parts = [p for s in opened for p in (s.parts or [s])]  # a store made of parts merges as its parts
    try:
        for other in parts[1:]:
            _check_same(parts[0], other)
        plan = _plan(parts)
        writer = StoreWriter.open(out, plan if source is None else dataclasses.replace(plan, source=source))
        try:
            if not writer.finished:
                _copy(parts, writer, progress)
            rows_read = sum(_rows_read(p) for p in parts)
            return writer.finish({"rows_read": rows_read}, progress=progress)
        finally:
            writer.close()
    finally:
        for p in parts:
            p.close()


def _check_same(first: Store, other: Store) -> None:
    a, b = first.manifest, other.manifest
    for key in [*a.options, *(k for k in b.options if k not in a.options)]:
        if a.options.get(key) != b.options.get(key):
            raise StoresMismatchError(first.location, other.location, key, a.options.get(key), b.options.get(key))
    if a.text != b.text:
        raise StoresMismatchError(first.location, other.location, "text columns", a.text, b.text)
    layout = {n: (s.dtype, s.row_shape) for n, s in a.arrays.items() if not n.startswith("text/")}
    other_layout = {n: (s.dtype, s.row_shape) for n, s in b.arrays.items() if not n.startswith("text/")}
    if layout != other_layout:
        raise StoresMismatchError(first.location, other.location, "arrays", layout, other_layout)


def _rows_read(store: Store) -> int:
    rows = store.manifest.counts.get("rows_read")
    if not isinstance(rows, int) or rows < len(store):
        raise StoreFormatError(store.files.where(MANIFEST), f"counts.rows_read is {rows!r}, not a row count")
    return rows


def _plan(parts: list[Store]) -> Plan:
    first = parts[0].manifest
    media = next(n for n in MEDIA if n in first.arrays)
    columns = tuple(
        Column(n, s.row_shape, s.dtype, n == media) for n, s in first.arrays.items() if not n.startswith("text/")
    )
    fingerprint = hashlib.sha256(json.dumps([p.manifest.files for p in parts], sort_keys=True).encode()).hexdigest()
    rows: list[Any] = [p.manifest.source.get("num_rows") for p in parts]
    source = {
        "kind": "merged",
        "spec": " + ".join(p.location for p in parts),
        "fingerprint": fingerprint,
        "num_rows": sum(rows) if all(isinstance(r, int) for r in rows) else None,
        "parts": [p.manifest.source for p in parts],
    }
    return Plan(columns, dict(first.text), first.arrays[media].chunk_rows, dict(first.options), source)


def _copy(parts: list[Store], writer: StoreWriter, progress: bool | None) -> None:
    from tqdm.auto import tqdm

    total = sum(_rows_read(p) for p in parts)
    with tqdm(
        total=total,
        initial=writer.next_row,
        unit="row",
        disable=progress_disabled(progress),
        desc="merging",
        dynamic_ncols=True,
    ) as bar:
        offset = 0
        for store in parts:
            rows = _rows_read(store)
            if offset + rows > writer.next_row:
                _copy_part(store, offset, writer, bar)
            offset += rows


def _copy_part(store: Store, offset: int, writer: StoreWriter, bar: Any) -> None:
    """Add one store's samples and failures, in source-row order, from ``writer.next_row`` on."""
    plan = writer.plan
    media = next(c for c in plan.columns if c.media)
    spec = store.manifest.arrays[media.name]
    images = ChunkedArray(store.path, spec, 2 * spec.chunk_bytes, store.files)
    small = {c.name: np.asarray(store.array(c.name)) for c in plan.columns if not c.media}
    rows = small.pop("source_row").astype(np.int64) + offset
    if np.any(np.diff(rows) <= 0):
        raise StoreFormatError(store.files.where("source_row"), "source_row is not increasing")
    texts = {name: store.text(name) for name in plan.text}
    failures = [{**f, "row": int(f["row"]) + offset} for f in store.failures()]
    for row, item in _in_row_order(rows, failures):
        if row < writer.next_row:
            continue
        if isinstance(item, dict):
            writer.add_failure(row, item["key"], item["reason"], item["detail"])
        else:
            values = {n: v[item] for n, v in small.items()}
            values[media.name] = images.chunk(item // spec.chunk_rows)[item % spec.chunk_rows]
            writer.add(row, {**values, "source_row": row}, {n: t[item] for n, t in texts.items()})
        bar.update(1)
    images.close()


def _in_row_order(rows: np.ndarray, failures: list[dict[str, Any]]) -> Iterator[tuple[int, Any]]:
    """``(row, sample index)`` and ``(row, failure)`` merged by source row."""
    failures = sorted(failures, key=lambda f: f["row"])
    f = 0
    for i, row in enumerate(rows.tolist()):
        while f < len(failures) and failures[f]["row"] < row:
            yield failures[f]["row"], failures[f]
            f += 1
        yield row, i
    for failure in failures[f:]:
        yield failure["row"], failure
