"""``verify URL``: every byte of a store at a URL (or of each of its parts) re-read and compared with its manifest.

Each file the manifest lists is streamed (ranged reads of
:data:`~tensorstore_ds.store.transfer.BLOCK` bytes, several files at once) and
hashed; nothing is written to disk. Where the URL can be listed (object
storage), files present but not in the manifest are reported too, and sizes
come from the listing; over plain http each file's size is what its bytes add
up to. Afterwards the structure is checked as ``open_store`` checks it (array
metadata against the manifest), which downloads only the small metadata files.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..errors import StoreError, StoreFormatError
from ..format.manifest import MANIFEST
from ..options import byte_bar
from .report import VerifyReport
from .transfer import BLOCK, Remote

IGNORED_PREFIXES = (".convert/", ".push/")  # a conversion's lease, a push's ledger: not store data


def verify_url(
    url: str, progress: bool | None = True, threads: int = 4, storage_options: dict[str, Any] | None = None
) -> VerifyReport:
    """Re-read every file of the store at ``url`` and compare it with the manifest (see the module docstring)."""

    remote = Remote(url, storage_options)
    _, manifest = remote.read_manifest()
    report = VerifyReport(remote.url)
    listed = _listing(remote)
    expected = manifest.files
    if manifest.parts:
        listed = {n: size for n, size in listed.items() if n in expected} if listed is not None else None
        _verify_parts(remote, manifest.parts, report, progress, threads, storage_options)
    if listed is not None:
        for name in sorted(set(listed) - set(expected) - {MANIFEST}):
            if not name.startswith(IGNORED_PREFIXES):
                report.problems.append((name, "unexpected", "not listed in the manifest"))
    readable = []
    for name, entry in sorted(expected.items()):
        if listed is not None and name not in listed:
            report.problems.append((name, "missing", f"expected {entry['size']} bytes"))
        elif listed is not None and listed[name] != entry["size"]:
            kind = "truncated" if listed[name] < entry["size"] else "extended"
            report.problems.append((name, kind, f"{listed[name]} bytes, expected {entry['size']}"))
        else:
            readable.append(name)
    total = sum(expected[n]["size"] for n in readable)
    with (
        byte_bar(total, "verifying", progress) as bar,
        ThreadPoolExecutor(max(1, threads)) as pool,
    ):
        found = list(pool.map(lambda n: _hash_remote(remote, n, expected[n]["size"], bar), readable))
    for name, (size, digest, problem) in zip(readable, found):
        entry = expected[name]
        if problem is not None:
            report.problems.append((name, problem[0], problem[1]))
        elif size != entry["size"]:
            kind = "truncated" if size < entry["size"] else "extended"
            report.problems.append((name, kind, f"{size} bytes, expected {entry['size']}"))
        elif digest != entry["sha256"]:
            report.problems.append((name, "altered", f"sha256 {digest[:12]}..., expected {entry['sha256'][:12]}..."))
        report.bytes += size
    _check_structure(remote, report, storage_options)
    report.checked += len(expected)
    report.problems.sort()
    return report


def _verify_parts(
    remote: Remote,
    parts: list[dict[str, Any]],
    report: VerifyReport,
    progress: bool | None,
    threads: int,
    storage_options: dict[str, Any] | None,
) -> None:
    """Every part of a store made of parts, verified in full; problems named by their path in the whole."""
    for part in parts:
        sub = verify_url(remote.url_of(part["path"]), progress, threads, storage_options)
        report.problems += [(f"{part['path']}/{name}", kind, detail) for name, kind, detail in sub.problems]
        report.checked += sub.checked
        report.bytes += sub.bytes


def _listing(remote: Remote) -> dict[str, int] | None:
    """Sizes of every object under the URL, or ``None`` where it cannot be listed (plain http)."""
    if remote.url.split("://", 1)[0] in ("http", "https"):
        return None
    from .objects import sizes

    return sizes(remote)


def _hash_remote(remote: Remote, name: str, size: int, bar: Any) -> tuple[int, str, tuple[str, str] | None]:
    """``(bytes read, sha256, problem)`` of the manifest's ``size`` bytes (a longer file shows in the listing)."""
    digest, pos = hashlib.sha256(), 0
    try:
        while pos < size:
            data = remote.read(name, pos, min(size, pos + BLOCK))
            if len(data) > size - pos and len(data) == size:
                data = data[pos:]  # a server without range requests sends the whole file
            if not data:
                break
            digest.update(data)
            pos += len(data)
            bar.update(len(data))
    except FileNotFoundError:
        return pos, "", ("missing", f"expected {size} bytes")
    except Exception as exc:
        return pos, "", ("unreadable", f"{type(exc).__name__}: {exc}")
    return pos, digest.hexdigest(), None


def _check_structure(remote: Remote, report: VerifyReport, storage_options: dict[str, Any] | None) -> None:
    """What ``open_store`` checks (array metadata against the manifest), as a problem."""
    import tempfile

    from .store import open_store

    with tempfile.TemporaryDirectory(prefix="tensorstore_ds-verify-") as cache:
        try:
            open_store(remote.url, cache_dir=cache, storage_options=storage_options).close()
        except StoreFormatError as exc:
            name = exc.path.removeprefix(remote.url + "/")
            if name not in {n for n, _, _ in report.problems}:
                report.problems.append((name, "inconsistent", exc.problem))
        except StoreError as exc:
            if not any(kind == "altered" for _, kind, _ in report.problems):
                report.problems.append((MANIFEST, "inconsistent", str(exc)))
