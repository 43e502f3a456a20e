"""Writing to object storage: uploads with retries, a parallel upload queue, and a lease.

Everything here works through fsspec on any writable URL (``s3://``,
``gs://``, ``memory://``, ``file://``...); ``s3://`` needs ``s3fs`` (the
``s3`` extra) and ``gs://`` needs ``gcsfs`` (the ``gcs`` extra).

Uploads. :func:`put_file` sends one local file to ``URL/name``; a dropped
connection, a timeout or a 5xx answer (``503 SlowDown`` included) is retried
with exponential backoff (the storage library retries too; these are retries
of whole files after its own give up). Refused credentials become a
:class:`~tensorstore_ds.errors.StoreAccessError` and a missing bucket a
:class:`~tensorstore_ds.errors.BucketNotFoundError`, both naming the URL.

The queue. :class:`Uploader` runs uploads in threads while the caller goes on
(decoding, in a conversion). It holds at most ``max_pending`` files not yet
uploaded: :meth:`Uploader.submit` blocks when that many are waiting, which is
what bounds the local disk a conversion into a URL uses. The first failure is
raised by the next call of :meth:`submit` or :meth:`drain`.

The lease. Object stores have no file locks, and plain fsspec has no
create-if-absent, so :class:`Lease` is a small JSON object at
``URL/.convert/lease.json``: its owner (a random id, the host and process id)
and when it expires. Acquiring reads it, refuses while another owner's lease
is unexpired, writes ours, waits :data:`SETTLE` seconds and reads it back: of
two processes that start together, the last writer wins and the other sees a
foreign owner and stops. A thread renews the lease every third of its
:data:`TTL` and checks that it is still ours; :meth:`Lease.check` raises once
it is not. A lease whose process is dead on this very host is taken over at
once (a rerun after SIGKILL), one from another host only after it expires.

Limits (documented, not hidden): the lease is advisory and relies on the
store's read-after-write consistency (S3 and GCS have it); a process stalled
for longer than the TTL (a suspended VM) loses its lease and finds out at its
next check; clocks of different hosts must agree to within a fraction of the
TTL; a writer that started between another's write and read-back (a window of
:data:`SETTLE` seconds) is caught at the other's next renewal, not before.
"""

from __future__ import annotations

import json
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import BucketNotFoundError, ObjectStoreError, StoreAccessError, StoreError, StoreLeaseError
from ..processes import alive
from .transfer import BACKOFF, RETRIES, Remote, transient_errors

LEASE = ".convert/lease.json"
TTL = 120.0
SETTLE = 1.0
POLL = 5.0
BUCKET_SCHEMES = ("s3", "s3a", "gs", "gcs", "az", "abfs")


def storage_error(exc: BaseException, url: str, operation: str) -> StoreError:
    """Our error for what the storage library raised while doing ``operation`` on ``url``."""
    if isinstance(exc, StoreError):
        return exc
    detail = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, PermissionError) or _code(exc) in (
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
    ):
        return StoreAccessError(url, detail)
    if _code(exc) == "NoSuchBucket" or "bucket does not exist" in str(exc).lower():
        return BucketNotFoundError(url, url.split("://", 1)[-1].split("/", 1)[0])
    return ObjectStoreError(url, operation, detail)


def _code(exc: BaseException) -> str | None:
    """The S3 error code of a botocore error, wherever the storage library keeps it."""
    for candidate in (exc, exc.__cause__, exc.__context__):
        response = getattr(candidate, "response", None)
        if isinstance(response, dict):
            return str(response.get("Error", {}).get("Code"))
    return None


def _retried(fn: Callable[[], Any], url: str, operation: str, retries: int = RETRIES) -> Any:
    """``fn()``, retried with backoff on transient errors; any other error translated."""
    transient, failures = transient_errors(), 0
    while True:
        try:
            return fn()
        except StoreError:
            raise
        except (PermissionError, FileNotFoundError) as exc:
            raise storage_error(exc, url, operation) from exc
        except transient as exc:
            failures += 1
            if failures > retries or _code(exc) in ("AccessDenied", "InvalidAccessKeyId", "NoSuchBucket"):
                raise storage_error(exc, url, operation) from exc
            time.sleep(BACKOFF * 2 ** (failures - 1))
        except Exception as exc:
            raise storage_error(exc, url, operation) from exc


def put_file(remote: Remote, name: str, path: Path, retries: int = RETRIES) -> None:
    """Upload the local file ``path`` to ``name`` under the remote store (overwriting it)."""
    fs, root = remote.filesystem()
    _retried(lambda: fs.put_file(str(path), f"{root}/{name}"), remote.url_of(name), "upload", retries)


def put_bytes(remote: Remote, name: str, data: bytes, retries: int = RETRIES) -> None:
    """Write ``data`` to ``name`` under the remote store (overwriting it)."""
    fs, root = remote.filesystem()
    _retried(lambda: fs.pipe_file(f"{root}/{name}", data), remote.url_of(name), "upload", retries)


def get_bytes(remote: Remote, name: str, retries: int = RETRIES) -> bytes | None:
    """The whole object ``name``, or ``None`` if there is none."""
    fs, root = remote.filesystem()

    def read() -> bytes | None:
        try:
            return bytes(fs.cat_file(f"{root}/{name}"))
        except FileNotFoundError as exc:
            if "bucket" in str(exc).lower():
                raise
            return None

    return _retried(read, remote.url_of(name), "read", retries)


def sizes(remote: Remote, retries: int = RETRIES) -> dict[str, int]:
    """Every object under the remote store, by store-relative name, with its size."""
    fs, root = remote.filesystem()

    def listing() -> dict[str, int]:
        if hasattr(fs, "invalidate_cache"):
            fs.invalidate_cache(root)
        try:
            found = fs.find(root, detail=True)
        except FileNotFoundError:
            found = {}
        prefix = root.rstrip("/") + "/"
        return {p[len(prefix) :]: int(d.get("size") or 0) for p, d in found.items() if p.startswith(prefix)}

    found: dict[str, int] = _retried(listing, remote.url, "list", retries)
    if not found:
        check_bucket(remote)
    return found


def check_bucket(remote: Remote) -> None:
    """Raise :class:`BucketNotFoundError` if the URL's bucket does not exist (object stores only)."""
    if remote.url.split("://", 1)[0] not in BUCKET_SCHEMES:
        return
    fs, root = remote.filesystem()
    bucket = root.split("/", 1)[0]
    if not _retried(lambda: fs.exists(bucket), remote.url, "list"):
        raise BucketNotFoundError(remote.url, bucket)


def delete(remote: Remote, name: str) -> None:
    """Delete ``name`` under the remote store if it is there."""
    fs, root = remote.filesystem()

    def rm() -> None:
        try:
            fs.rm_file(f"{root}/{name}")
        except FileNotFoundError:
            pass

    _retried(rm, remote.url_of(name), "delete")


class Uploader:
    """Uploads files in background threads, at most ``max_pending`` waiting at a time.

    Parameters
    ----------
    remote
        Where the files go.
    workers
        Parallel uploads.
    max_pending
        Files submitted and not yet uploaded, at most (``submit`` blocks beyond).
    done
        Called in the uploading thread with ``(name, path)`` after each upload.
    """

    def __init__(
        self,
        remote: Remote,
        workers: int = 4,
        max_pending: int = 8,
        done: Callable[[str, Path], None] | None = None,
        retries: int = RETRIES,
    ) -> None:
        self.remote = remote
        self.done = done
        self.retries = retries
        self.uploaded_bytes = 0
        self._slots = threading.BoundedSemaphore(max(1, max_pending))
        self._queue: queue.SimpleQueue[tuple[str, Path] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        self._pending = 0
        self._idle = threading.Condition(self._lock)
        self._threads = [
            threading.Thread(target=self._work, daemon=True, name="tensorstore_ds-upload")
            for _ in range(max(1, workers))
        ]
        for t in self._threads:
            t.start()

    def submit(self, name: str, path: Path) -> None:
        """Queue ``path`` for upload to ``name``; blocks while ``max_pending`` files wait."""
        self._raise()
        self._slots.acquire()
        with self._lock:
            self._pending += 1
        self._queue.put((name, path))

    def drain(self) -> None:
        """Wait until every submitted file is uploaded; raise the first failure."""
        with self._idle:
            while self._pending and self._error is None:
                self._idle.wait(0.5)
        self._raise()

    def close(self) -> None:
        """Stop the threads (files still queued are not uploaded)."""
        for _ in self._threads:
            self._queue.put(None)

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            name, path = item
            try:
                if self._error is None:
                    put_file(self.remote, name, path, self.retries)
                    size = path.stat().st_size
                    if self.done is not None:
                        self.done(name, path)
                    with self._lock:
                        self.uploaded_bytes += size
            except BaseException as exc:
                with self._lock:
                    self._error = self._error or exc
            finally:
                self._slots.release()
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()


class Lease:
    """The lease on a store URL that a conversion holds while it writes there (see the module docstring).

    Parameters
    ----------
    remote
        The store.
    ttl, settle
        Seconds a lease lasts without renewal; seconds between writing and reading it back.
    """

    def __init__(self, remote: Remote, ttl: float = TTL, settle: float = SETTLE) -> None:
        self.remote = remote
        self.ttl = ttl
        self.settle = settle
        self.owner = uuid.uuid4().hex
        self.lost: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self, wait: float = 0.0) -> Lease:
        """Take the lease, or raise :class:`StoreLeaseError` naming its holder.

        With ``wait``, a lease held by another owner is waited for (polled)
        for up to that many seconds: until it is released or expires.
        """
        deadline = time.monotonic() + wait
        while True:
            try:
                self._refuse_if_held()
                break
            except StoreLeaseError as exc:
                if time.monotonic() + min(exc.seconds_left, POLL) > deadline:
                    raise
                time.sleep(max(0.05, min(exc.seconds_left, POLL)))
        self._write()
        time.sleep(self.settle)
        held = self._read()
        if held is None or held.get("owner") != self.owner:
            raise StoreLeaseError(self.remote.url, _holder(held), _left(held))
        self._thread = threading.Thread(target=self._renew, daemon=True, name="tensorstore_ds-lease")
        self._thread.start()
        return self

    def check(self) -> None:
        """Raise if the lease was lost (another process took it)."""
        if self.lost is not None:
            raise StoreLeaseError(self.remote.url, self.lost, 0)

    def release(self) -> None:
        """Stop renewing and delete the lease (if it is still ours)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        held = self._read()
        if held is not None and held.get("owner") == self.owner:
            delete(self.remote, LEASE)

    def _refuse_if_held(self) -> None:
        held = self._read()
        if held is None or _left(held) <= 0 or _dead_here(held):
            return
        raise StoreLeaseError(self.remote.url, _holder(held), _left(held))

    def _doc(self) -> dict[str, Any]:
        return {
            "owner": self.owner,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "expires": time.time() + self.ttl,
            "ttl": self.ttl,
        }

    def _write(self) -> None:
        put_bytes(self.remote, LEASE, json.dumps(self._doc()).encode())

    def _read(self) -> dict[str, Any] | None:
        raw = get_bytes(self.remote, LEASE)
        if raw is None:
            return None
        try:
            doc = json.loads(raw)
        except ValueError:
            return {}
        return doc if isinstance(doc, dict) else {}

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            try:
                held = self._read()
                if held is None or held.get("owner") != self.owner:
                    self.lost = _holder(held)
                    return
                self._write()
            except Exception:
                continue  # a failed renewal is retried at the next tick; expiry is ttl away


def _holder(held: dict[str, Any] | None) -> str:
    if not held:
        return "another process"
    return f"process {held.get('pid', '?')} on {held.get('host', '?')}"


def _left(held: dict[str, Any] | None) -> float:
    expires = held.get("expires") if held else None
    return float(expires) - time.time() if isinstance(expires, (int, float)) else 0.0


def _dead_here(held: dict[str, Any]) -> bool:
    """The lease's process ran on this host and is gone (a rerun after a kill)."""
    pid = held.get("pid")
    if held.get("host") != socket.gethostname() or not isinstance(pid, int):
        return False
    return pid != os.getpid() and not alive(pid)
