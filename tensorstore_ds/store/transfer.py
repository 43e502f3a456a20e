"""Transfers: the files of a store at an fsspec URL, downloaded and verified.

Any fsspec URL works (``https://``, ``s3://``, ``gs://``, ``memory://``...);
http(s) needs ``aiohttp``. A file is read in ranged blocks (one request per
:data:`BLOCK` bytes), written to a partial file and hashed as it arrives; a
dropped connection or a timeout is retried from the last block that arrived,
and only a file whose size and SHA-256 match the manifest is renamed into
place. Used by :mod:`tensorstore_ds.store.remote` (the cache of a remote store) and
:mod:`tensorstore_ds.pull`.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any, cast

from ..errors import StoreError, StoreFormatError, StoreNotFoundError
from ..format.manifest import _MAX_MANIFEST_BYTES, MANIFEST, Manifest

BLOCK = 16 * 2**20
BACKOFF = 0.5
RETRIES = 3
_HEX = frozenset("0123456789abcdef")


class Remote:
    """A store at an fsspec URL.

    Parameters
    ----------
    url
        The store's URL (its directory, without ``manifest.json``).
    storage_options
        Passed to fsspec (credentials, endpoints, client options).
    """

    def __init__(self, url: str, storage_options: dict[str, Any] | None = None) -> None:
        self.url = url.rstrip("/")
        self.storage_options = dict(storage_options or {})
        self._fs: Any = None
        self._pid = -1
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "storage_options": self.storage_options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["url"], state["storage_options"])  # type: ignore[misc]

    def url_of(self, name: str) -> str:
        return f"{self.url}/{name}"

    def filesystem(self) -> tuple[Any, str]:
        """The fsspec filesystem (one per process) and the store's path on it."""
        with self._lock:
            if self._fs is None or self._pid != os.getpid():
                self._fs, self._root = _filesystem(self.url, self.storage_options)
                self._pid = os.getpid()
            return self._fs, self._root

    def read(self, name: str, start: int, end: int) -> bytes:
        """Bytes ``start`` to ``end`` (exclusive) of one file."""
        fs, root = self.filesystem()
        return bytes(fs.cat_file(f"{root}/{name}", start=start, end=end))

    def read_manifest(self) -> tuple[bytes, Manifest]:
        """The raw ``manifest.json`` (at most the size any store writes) and the validated manifest."""
        where = self.url_of(MANIFEST)
        try:
            raw = self._read_limited(MANIFEST, _MAX_MANIFEST_BYTES)
        except FileNotFoundError:
            raise StoreNotFoundError(
                self.url, f"there is no {MANIFEST} at {where} (not a store, or an unfinished one)"
            ) from None
        except Exception as exc:
            raise StoreError(f"cannot read {where}: {type(exc).__name__}: {exc}") from exc
        if len(raw) > _MAX_MANIFEST_BYTES:
            raise StoreFormatError(
                where, f"manifest is more than {_MAX_MANIFEST_BYTES} bytes, more than any store writes"
            )
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise StoreFormatError(where, f"manifest is not valid JSON ({exc})") from None
        manifest = Manifest.from_json(doc, cast(Path, where))
        check_file_entries(manifest, where)
        return raw, manifest

    def _read_limited(self, name: str, limit: int) -> bytes:
        fs, root = self.filesystem()
        out = bytearray()
        with fs.open(f"{root}/{name}", "rb") as f:
            while len(out) <= limit:
                piece = f.read(limit + 1 - len(out))
                if not piece:
                    break
                out += piece
        return bytes(out)


def _filesystem(url: str, storage_options: dict[str, Any]) -> tuple[Any, str]:
    import fsspec

    options = dict(storage_options)
    if url.split("://", 1)[0] in ("http", "https") and "client_kwargs" not in options:
        import aiohttp  # a stalled server must not hang a reader for aiohttp's default 5 minutes

        options["client_kwargs"] = {"timeout": aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=60)}
    fs, root = fsspec.core.url_to_fs(url, **options)
    return fs, root.rstrip("/")


def check_file_entries(manifest: Manifest, where: str) -> None:
    """The manifest lists a size and a SHA-256 for every file, so downloads can be verified."""
    if not manifest.files:
        raise StoreFormatError(
            where,
            "the manifest lists no file checksums (a store from before version 0.2?); copy the store directory instead",
        )
    for name, entry in manifest.files.items():
        size = entry.get("size") if isinstance(entry, dict) else None
        digest = entry.get("sha256") if isinstance(entry, dict) else None
        if (
            not isinstance(size, int)
            or size < 0
            or not isinstance(digest, str)
            or len(digest) != 64
            or not set(digest) <= _HEX
        ):
            raise StoreFormatError(where, f"file entry {name!r} has no valid size and sha256: {entry!r}")


def transient_errors() -> tuple[type[BaseException], ...]:
    """Errors worth retrying: connections dropped or refused, timeouts, 5xx answers."""
    errors: list[type[BaseException]] = [OSError, TimeoutError, EOFError]
    try:
        import aiohttp

        errors.append(aiohttp.ClientError)
    except ImportError:
        pass
    try:
        from fsspec.exceptions import FSTimeoutError

        errors.append(FSTimeoutError)
    except ImportError:
        pass
    return tuple(errors)


def download(
    remote: Remote,
    name: str,
    entry: dict[str, Any],
    partial: Path,
    *,
    resume: bool = False,
    retries: int = RETRIES,
    progress: Any = None,
    fsync: bool = False,
) -> None:
    """Download one file into ``partial`` and check its size and SHA-256.

    Parameters
    ----------
    remote, name, entry
        The store, the store-relative file and its manifest entry (``size``, ``sha256``).
    partial
        Where the bytes go; with ``resume``, bytes already there are kept
        (and hashed) and only the rest is requested.
    retries, progress, fsync
        Consecutive failed requests tolerated (a retry resumes after the last
        block); a tqdm bar updated with bytes; flush the file to disk.

    Raises
    ------
    StoreFormatError
        The file is missing on the server or differs from the manifest (``partial`` is deleted).
    StoreError
        The transfer kept failing; with ``resume`` the bytes received stay.
    """
    digest = hashlib.sha256()
    partial.parent.mkdir(parents=True, exist_ok=True)
    pos = _resume_point(partial, entry["size"], digest, progress) if resume else 0
    try:
        with open(partial, "ab" if pos else "wb") as out:
            _receive(remote, name, entry["size"], pos, out, digest, retries, progress)
            if fsync:
                out.flush()
                os.fsync(out.fileno())
    except BaseException as exc:
        if not resume or isinstance(exc, StoreFormatError):
            partial.unlink(missing_ok=True)
        raise
    if digest.hexdigest() != entry["sha256"]:
        partial.unlink(missing_ok=True)
        raise StoreFormatError(
            remote.url_of(name),
            f"downloaded file has sha256 {digest.hexdigest()[:16]}..., the "
            f"manifest says {entry['sha256'][:16]}...; the file was not kept",
        )


def _resume_point(partial: Path, size: int, digest: Any, progress: Any) -> int:
    """Bytes already in ``partial`` (hashed into ``digest``), or 0 if it cannot be resumed."""
    try:
        have = partial.stat().st_size
    except FileNotFoundError:
        return 0
    if have > size:
        return 0
    from ..format.hashing import BLOCK as HASH_BLOCK

    with open(partial, "rb", buffering=0) as f:
        while data := f.read(HASH_BLOCK):
            digest.update(data)
    if progress is not None:
        progress.update(have)
    return have


def _receive(
    remote: Remote, name: str, size: int, pos: int, out: Any, digest: Any, retries: int, progress: Any
) -> None:
    """Request blocks from ``pos`` to ``size`` into ``out``, retrying dropped or failed requests."""
    transient, failures = transient_errors(), 0
    while pos < size:
        want = min(BLOCK, size - pos)
        try:
            data = remote.read(name, pos, pos + want)
        except FileNotFoundError:
            raise StoreFormatError(
                remote.url_of(name), "file is missing on the server; the manifest lists it"
            ) from None
        except transient as exc:
            failures += 1
            status = getattr(exc, "status", None)
            if status == 416:
                raise StoreFormatError(
                    remote.url_of(name), f"the server's file ends after {pos} bytes; the manifest says {size} bytes"
                ) from None
            if failures > retries or (isinstance(status, int) and 400 <= status < 500 and status not in (408, 429)):
                raise StoreError(
                    f"cannot download {remote.url_of(name)}: {type(exc).__name__}: {exc} "
                    f"({pos} of {size} bytes arrived, {failures} attempts)"
                ) from exc
            time.sleep(BACKOFF * 2 ** (failures - 1))
            continue
        if len(data) > want and len(data) == size:
            data = data[pos:]  # a server without range requests (python -m http.server) sends the whole file
        if not data or len(data) > size - pos:
            what = f"ends after {pos} bytes" if not data else f"answered {len(data)} bytes for {want}"
            raise StoreFormatError(remote.url_of(name), f"the server's file {what}; the manifest says {size} bytes")
        out.write(data)
        digest.update(data)
        pos += len(data)
        failures = 0
        if progress is not None:
            progress.update(len(data))
