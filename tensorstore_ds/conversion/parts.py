"""Committing a sharded conversion in object storage without copying: a store made of parts.

Shard ``K`` of ``N`` of a conversion into ``URL`` is converted (by any
machine, with only its own scratch disk: see
:mod:`~tensorstore_ds.conversion.upload`) into ``URL/parts/KKKKK-of-NNNNN``,
a complete store with its own manifest, uploaded last. :func:`commit_parts`
then reads the ``N`` part manifests (a few kilobytes each) and writes one
``URL/manifest.json`` of :data:`~tensorstore_ds.format.manifest.PARTS_FORMAT_VERSION`
that lists the parts in order, pins each part's manifest by its SHA-256, and
adds up their counts. No sample byte passes through the committing machine:
it reads ``N`` manifests and writes one.

Reading it: ``open_store(URL)`` opens every part (``store.parts``);
``TensorStoreDataset(URL)`` serves the parts as one dataset, sample ``i`` of
the whole being sample ``i - offset`` of its part, in the order of a
single-machine conversion; ``verify URL`` checks every byte of every part.
Stock zarr reads each part's arrays, e.g.
``zarr.open_array(FsspecStore.from_url(URL + "/parts/00000-of-00004"), path="images")``.
A part's ``source_row`` counts from the part's first source row; the part
entry's ``rows_read`` of the parts before it is the offset.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from ..errors import StoreError, StoresMismatchError
from ..format.manifest import MANIFEST, PARTS_DIR, PARTS_FORMAT_VERSION, Manifest
from ..store.objects import get_bytes, put_bytes, sizes
from ..store.transfer import Remote

_PART = re.compile(r"^" + PARTS_DIR + r"/(\d{5})-of-(\d{5})/(.*)$")


def part_path(k: int, n: int) -> str:
    """The store-relative directory of part ``k`` of ``n``."""
    return f"{PARTS_DIR}/{k:05d}-of-{n:05d}"


def commit_parts(url: str, storage_options: dict[str, Any] | None = None) -> Manifest:
    """Write the manifest of the store made of the finished parts under ``url`` (see the module docstring).

    Raises
    ------
    StoreError
        Parts are missing or unfinished (it names them), or of several splits.
    StoresMismatchError
        Two parts were made with different options.
    """
    remote = Remote(url, storage_options)
    present = sizes(remote)
    if MANIFEST in present:
        return remote.read_manifest()[1]
    n = _finished_parts(remote, present)
    raws = [get_bytes(remote, f"{part_path(k, n)}/{MANIFEST}") or b"" for k in range(n)]
    manifests = [Manifest.from_json(json.loads(raw), remote.url_of(part_path(k, n))) for k, raw in enumerate(raws)]  # type: ignore[arg-type]
    for k, other in enumerate(manifests[1:], 1):
        _check_same(remote, manifests[0], other, k, n)
    manifest = _parts_manifest(manifests, raws, n)
    put_bytes(remote, MANIFEST, json.dumps(manifest.to_json(), indent=1).encode())
    return manifest


def _finished_parts(remote: Remote, present: dict[str, int]) -> int:
    """The number of parts, all of which are finished (or a StoreError naming those that are not)."""
    found: dict[int, dict[int, bool]] = {}
    for name in present:
        match = _PART.match(name)
        if match:
            k, n = int(match.group(1)), int(match.group(2))
            found.setdefault(n, {})
            found[n][k] = found[n].get(k, False) or match.group(3) == MANIFEST
    if len(found) != 1:
        raise StoreError(
            f"{remote.url}: expected the parts of one split under {PARTS_DIR}/, found "
            f"{sorted(found) or 'none'} part counts"
        )
    n, parts = next(iter(found.items()))
    missing = [k for k in range(n) if not parts.get(k)]
    if missing:
        raise StoreError(
            f"{remote.url}: parts {missing} of {n} are missing or unfinished; "
            f"convert them with --shard K/{n} before committing"
        )
    return n


def _check_same(remote: Remote, a: Manifest, b: Manifest, k: int, n: int) -> None:
    first, other = remote.url_of(part_path(0, n)), remote.url_of(part_path(k, n))
    for key in [*a.options, *(k for k in b.options if k not in a.options)]:
        if a.options.get(key) != b.options.get(key):
            raise StoresMismatchError(first, other, key, a.options.get(key), b.options.get(key))
    if a.text != b.text:
        raise StoresMismatchError(first, other, "text columns", a.text, b.text)


def _parts_manifest(manifests: list[Manifest], raws: list[bytes], n: int) -> Manifest:
    from ..format.layout import ArraySpec

    first = manifests[0]
    total = sum(m.num_samples for m in manifests)
    arrays = {
        name: ArraySpec(name, (total, *spec.row_shape), spec.dtype, spec.chunk_rows)
        for name, spec in first.arrays.items()
        if not name.startswith("text/")
    }
    by_reason: dict[str, int] = {}
    for m in manifests:
        for reason, count in m.counts.get("failed_by_reason", {}).items():
            by_reason[reason] = by_reason.get(reason, 0) + count
    counts = {key: sum(int(m.counts.get(key, 0)) for m in manifests) for key in ("rows_read", "converted", "failed")}
    parts = [
        {
            "path": part_path(k, n),
            "num_samples": m.num_samples,
            "rows_read": int(m.counts.get("rows_read", 0)),
            "manifest_sha256": hashlib.sha256(raw).hexdigest(),
        }
        for k, (m, raw) in enumerate(zip(manifests, raws))
    ]
    files = {
        f"{p['path']}/{MANIFEST}": {"size": len(raw), "sha256": p["manifest_sha256"]} for p, raw in zip(parts, raws)
    }
    source = {k: v for k, v in first.source.items() if k not in ("shard", "rows")}
    return Manifest(
        num_samples=total,
        arrays=arrays,
        text=dict(first.text),
        options=dict(first.options),
        source=source,
        counts={**counts, "failed_by_reason": dict(sorted(by_reason.items()))},
        files=files,
        parts=parts,
        format_version=PARTS_FORMAT_VERSION,
    )
