"""Remote stores: a store at a URL, read through a local cache that fills on demand.

Opening fetches the manifest (validated like a local one) into a local
directory that mirrors the store: ``$TENSORSTORE_DS_CACHE/remote/<hash of the
URL>`` (default ``~/.cache/tensorstore_ds/remote/...``) or ``cache_dir``. A
file is downloaded the first time a reader needs it, written under a
temporary name (in ``.partial/``), checked against the manifest's size and
SHA-256, and renamed into place; from then on it is a local file, memory-mapped like any other, and
later opens of the same URL reuse it. Several processes may share a cache: two
that download the same file each write their own temporary file and the
rename is atomic. With ``cache_limit``, the least recently used chunk files
are deleted when the cache grows beyond it (a deleted file that is still
mapped stays readable until it is unmapped).
"""

from __future__ import annotations

import hashlib
import json
import os
import queue
import threading
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from io import FileIO
from pathlib import Path
from typing import Any

from ..errors import StoreError, StoreFormatError
from ..format.layout import ArraySpec, write_bytes_atomic
from ..format.manifest import MANIFEST, Manifest
from ..options import byte_bar, cache_root, parse_size
from ..processes import alive
from .chunked import fadvise_willneed
from .transfer import Remote, download

PREFETCH_THREADS = 4
FETCH_THREADS = 8
PARTIAL_DIR = ".partial"


def default_cache_dir(url: str) -> Path:
    """The cache directory of the store at ``url``."""
    return cache_root() / "remote" / hashlib.sha256(url.rstrip("/").encode()).hexdigest()[:16]


class RemoteFiles:
    """The files of a remote store, through a local cache (use :meth:`connect`).

    Parameters
    ----------
    remote
        The store's URL and filesystem.
    root
        The cache directory; it mirrors the store's layout.
    manifest
        The store's validated manifest.
    cache_limit
        Bytes of chunk files kept; ``None`` keeps everything.
    """

    def __init__(self, remote: Remote, root: Path, manifest: Manifest, cache_limit: int | None = None) -> None:
        self.remote = remote
        self.root = root
        self.manifest = manifest
        self.cache_limit = cache_limit
        self.location = remote.url
        self._chunk_keys = {s.chunk_key(k) for s in manifest.arrays.values() for k in range(s.num_chunks)}
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._inflight: dict[str, Future[Path]] = {}
        self._queue: queue.SimpleQueue[str] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {k: self.__dict__[k] for k in ("remote", "root", "manifest", "cache_limit")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    @classmethod
    def connect(
        cls,
        url: str,
        cache_dir: str | os.PathLike[str] | None = None,
        cache_limit: int | str | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> RemoteFiles:
        """Fetch and validate the manifest at ``url`` and prepare the cache."""
        remote = Remote(url, storage_options)
        raw, manifest = remote.read_manifest()
        root = Path(cache_dir) if cache_dir is not None else default_cache_dir(remote.url)
        _prepare_cache(root, raw, manifest)
        return cls(remote, root, manifest, None if cache_limit is None else parse_size(cache_limit))

    # --- the StoreFiles protocol ------------------------------------------------

    def where(self, key: str) -> str:
        return self.remote.url_of(key)

    def exists(self, key: str) -> bool:
        return key == MANIFEST or key in self.manifest.files

    def path(self, key: str) -> Path:
        """The cached file, downloaded and verified first if it is not there yet (the manifest always is)."""
        self._check_pid()
        path = self.root / key
        if key == MANIFEST:
            return path
        if self._cached(key, path):
            return path
        with self._lock:
            future = self._inflight.get(key)
            owner = future is None
            if future is None:
                future = self._inflight[key] = Future()
        if owner:
            try:
                self._download(key)
                future.set_result(path)
            except BaseException as exc:
                future.set_exception(exc)
                raise
            finally:
                with self._lock:
                    self._inflight.pop(key, None)
        return future.result()

    def open(self, key: str) -> FileIO:
        for attempt in range(3):  # another process may evict the file between path() and open()
            try:
                return open(self.path(key), "rb", buffering=0)
            except FileNotFoundError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def check_chunks(self, spec: ArraySpec) -> None:
        for k in range(spec.num_chunks):
            key = spec.chunk_key(k)
            entry = self.manifest.files.get(key)
            if entry is None:
                raise StoreFormatError(
                    self.where(key), f"chunk file is not in the manifest (array {spec.name!r}, chunk {k})"
                )
            if entry["size"] != spec.chunk_bytes:
                raise StoreFormatError(
                    self.where(key),
                    f"the manifest lists {entry['size']} bytes, a chunk of array {spec.name!r} has {spec.chunk_bytes}",
                )

    def prefetch(self, keys: Iterable[str]) -> None:
        """Download missing files in background threads; advise the kernel of cached ones."""
        self._check_pid()
        keys = list(keys)
        missing = [k for k in keys if not self._cached(k, self.root / k)]
        fadvise_willneed(self.root, [k for k in keys if k not in missing])
        if not missing:
            return
        with self._lock:
            if self._queue is None:  # daemon threads: exiting never waits for a read-ahead
                self._queue = queue.SimpleQueue()
                for _ in range(PREFETCH_THREADS):
                    threading.Thread(
                        target=self._prefetcher, args=(self._queue,), daemon=True, name="tensorstore_ds-prefetch"
                    ).start()
            for key in missing:
                if key not in self._inflight:
                    self._queue.put(key)

    def _prefetcher(self, keys: queue.SimpleQueue[str]) -> None:
        while True:
            key = keys.get()
            try:
                self.path(key)
            except Exception:  # a prefetch is only a hint: the read that needs the file raises its error
                pass

    def fetch(self, keys: Iterable[str], progress: bool = False) -> None:
        """Download every missing file now, in parallel (unless they would overflow ``cache_limit``)."""

        missing = [k for k in dict.fromkeys(keys) if not self._cached(k, self.root / k)]
        total = sum(self.manifest.files[k]["size"] for k in missing)
        if not missing or (self.cache_limit is not None and total > self.cache_limit):
            return
        with (
            byte_bar(total, f"downloading {self.remote.url}", progress) as bar,
            ThreadPoolExecutor(FETCH_THREADS) as pool,
        ):
            for key, _ in zip(missing, pool.map(self.path, missing)):
                bar.update(self.manifest.files[key]["size"])

    # --- the cache ----------------------------------------------------------------

    def _check_pid(self) -> None:
        if self._pid != os.getpid():  # a forked child: the parent's threads and locks are not ours
            self._reset()

    def _cached(self, key: str, path: Path) -> bool:
        entry = self.manifest.files.get(key)
        if entry is None:
            raise StoreFormatError(self.where(key), "the file is not listed in the store's manifest")
        try:
            if path.stat().st_size == entry["size"]:
                if self.cache_limit is not None and key in self._chunk_keys:
                    os.utime(path)  # least recently used = oldest mtime
                return True
        except FileNotFoundError:
            pass
        return False

    def _download(self, key: str) -> None:
        target = self.root / key
        partial = self.root / PARTIAL_DIR / f"{key.replace('/', '%')}.{os.getpid()}-{threading.get_ident()}"
        try:
            download(self.remote, key, self.manifest.files[key], partial)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        if self.cache_limit is not None and key in self._chunk_keys:
            self._evict(keep=key)

    def _evict(self, keep: str) -> None:
        """Delete the least recently used chunk files until the cache is within its limit."""
        assert self.cache_limit is not None
        present = []
        for key in self._chunk_keys:
            try:
                st = os.stat(self.root / key)
            except FileNotFoundError:
                continue
            present.append((st.st_mtime_ns, key, st.st_size))
        total = sum(size for _, _, size in present)
        for _, key, size in sorted(present):
            if total <= self.cache_limit:
                break
            if key != keep:
                (self.root / key).unlink(missing_ok=True)
                total -= size


def _prepare_cache(root: Path, raw: bytes, manifest: Manifest) -> None:
    """Make ``root`` the cache of this manifest: drop files of an older version of the store."""
    cached = root / MANIFEST
    if root.is_dir() and not cached.exists() and any(not e.name.startswith(".") for e in root.iterdir()):
        raise StoreError(
            f"cache directory {root} is not empty and holds no tensorstore_ds cache; choose another cache_dir"
        )
    _remove_stale_partials(root / PARTIAL_DIR)
    old = cached.read_bytes() if cached.exists() else None
    if old == raw:
        return
    if old is not None:
        try:
            previous = Manifest.from_json(json.loads(old), cached).files
        except (ValueError, StoreError):
            previous = None
        for name in _stale(root, previous, manifest.files):
            (root / name).unlink(missing_ok=True)
    write_bytes_atomic(cached, raw)


def _stale(root: Path, previous: dict[str, Any] | None, current: dict[str, Any]) -> list[str]:
    """Cached files that the new manifest does not vouch for."""
    if previous is not None:
        return [name for name, entry in previous.items() if current.get(name) != entry]
    return [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != MANIFEST]


def _remove_stale_partials(directory: Path) -> None:
    """Delete partial downloads left by processes that no longer run (killed mid-download)."""
    if not directory.is_dir():
        return
    for entry in directory.iterdir():
        try:
            pid = int(entry.name.rsplit(".", 1)[1].split("-")[0])
        except (ValueError, IndexError):
            continue
        if not alive(pid):
            entry.unlink(missing_ok=True)
