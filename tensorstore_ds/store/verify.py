"""``verify``: re-read every file of a store and compare it with its manifest."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import StoreFormatError
from ..format.hashing import ALGORITHM, checksum_files, store_files
from ..format.layout import irregular_file
from ..format.manifest import MANIFEST, PARTS_DIR, Manifest
from .report import VerifyReport


def verify(
    path: str | os.PathLike[str],
    progress: bool | None = True,
    threads: int = 4,
    storage_options: dict[str, Any] | None = None,
) -> VerifyReport:
    """Re-read every file of a store and compare it with the manifest.

    Returns a report naming each file that is missing, truncated, extended,
    altered (any flipped byte), irregular (a symlink or not a regular file),
    inconsistent with the manifest, or present but not in the manifest. A
    URL (``s3://``, ``https://``...) is verified where it is, reading every
    byte (see :mod:`~tensorstore_ds.store.verify_remote`).
    """
    from .store import is_url

    if is_url(path):
        from .verify_remote import verify_url

        return verify_url(os.fspath(path), progress, threads, storage_options)
    root = Path(path)
    manifest = Manifest.read(root)
    if manifest.parts:  # a store made of parts (pulled from object storage): every part, in full
        return _verify_local_parts(root, manifest, progress, threads)
    report = VerifyReport(str(root))
    expected = manifest.files
    present = set(store_files(root))
    for name in sorted(present - set(expected)):
        report.problems.append((name, "unexpected", "not listed in the manifest"))
    readable = []
    for name, entry in sorted(expected.items()):
        if not os.path.lexists(root / name):
            report.problems.append((name, "missing", f"expected {entry['size']} bytes"))
            continue
        why = irregular_file(root, name)
        if why:
            report.problems.append((name, "irregular", why))
            continue
        size = (root / name).stat().st_size
        if size != entry["size"]:
            kind = "truncated" if size < entry["size"] else "extended"
            report.problems.append((name, kind, f"{size} bytes, expected {entry['size']}"))
            continue
        readable.append(name)
    sums = checksum_files(root, readable, threads, progress, desc=f"verifying {root.name}")
    for name in readable:
        if sums[name][ALGORITHM] != expected[name].get(ALGORITHM):
            report.problems.append(
                (
                    name,
                    "altered",
                    f"sha256 {sums[name][ALGORITHM][:12]}..., expected {str(expected[name].get(ALGORITHM))[:12]}...",
                )
            )
    _check_structure(root, report)
    report.checked = len(expected)
    report.bytes = sum(s["size"] for s in sums.values())
    report.problems.sort()
    return report


def _check_structure(root: Path, report: VerifyReport) -> None:
    """What ``open_store`` checks (metadata and chunk files agree with the manifest), as a problem.

    Files intact by their checksums can still disagree with an edited manifest.
    A file already reported is not reported again.
    """
    from .store import open_store

    try:
        open_store(root).close()
    except Exception as exc:
        if isinstance(exc, StoreFormatError):
            name, detail = os.path.relpath(exc.path, root), str(exc).removeprefix(f"{exc.path}: ")
        else:
            name, detail = MANIFEST, f"{type(exc).__name__}: {exc}"
        if name not in {n for n, _, _ in report.problems}:
            report.problems.append((name, "inconsistent", detail))


def _verify_local_parts(root: Path, manifest: Manifest, progress: bool | None, threads: int) -> VerifyReport:
    """A local store made of parts: each part verified in full, and each part's manifest against its pin."""
    from ..format.hashing import hash_file

    report = VerifyReport(str(root))
    for part in manifest.parts:
        sub = verify(root / part["path"], progress, threads)
        report.problems += [(f"{part['path']}/{name}", kind, detail) for name, kind, detail in sub.problems]
        report.checked += sub.checked
        report.bytes += sub.bytes
        if hash_file(root / part["path"] / MANIFEST)[1] != part["manifest_sha256"]:
            report.problems.append((f"{part['path']}/{MANIFEST}", "altered", "not the manifest the store lists"))
    for entry in root.iterdir():
        if entry.name not in (PARTS_DIR, MANIFEST):
            report.problems.append((entry.name, "unexpected", "not listed in the manifest"))
    report.problems.sort()
    return report
