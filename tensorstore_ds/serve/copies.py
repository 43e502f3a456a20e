"""One copy per machine: named shared-memory copies of store fields, counted by their users.

Every process on a machine that serves the same field of the same store in RAM
mode (the ranks of a DDP job, DataLoader workers under fork or spawn, several
jobs) maps one copy of it. A copy is named by a key derived from the store's
identity (its manifest, which holds every file's checksum) and the field, so
processes find it without talking to each other.

Files, in the shared-memory directory (:func:`~tensorstore_ds.serve.shm.shm_dir`):

- ``tensorstore_ds-shared-KEY``: the data, complete (only complete copies
  carry this name);
- ``tensorstore_ds-shared-KEY.loading``: the data while its loader fills it;
- ``tensorstore_ds-shared-KEY.lock``: the guard and the user count.

Protocol. Each user holds its own open file description of the lock file with
a shared ``flock``: the kernel drops it when the process exits or is killed,
so the count survives SIGKILL. A forked child (a DataLoader worker) closes its
inherited descriptors at once: it maps the copy through its parent, which
counts for both, so a killed rank's workers, which outlive it by a few
seconds, do not keep the copy from being removed by the last rank to exit.
Deciding (load, attach, remove) happens under the guard, an exclusive POSIX
record lock (``lockf``) on the same file; ``flock`` and ``lockf`` locks do not
interact on Linux. Under the guard:

- attach: take the shared ``flock``; if the complete copy exists, map it;
  otherwise the loader (this process) removes a ``.loading`` left by a loader
  that died (loaders hold the guard while they load, so a ``.loading`` seen
  under the guard is dead), reserves the bytes with ``posix_fallocate``,
  fills them and renames the file to its complete name. Others wait on the
  guard, then attach.
- release (the last reference in this process is collected, or the process
  exits normally): if an exclusive ``flock`` can be taken without waiting, no
  other process uses the copy: remove the data and the lock file.
- reap (before any load): a copy whose lock file has no user (every user was
  killed) is removed the same way.

A lock file can be removed while another process waits on it; after taking
the guard a process checks that its descriptor is still the file at that
name, and starts again otherwise.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import mmap
import os
import threading
import weakref
from collections.abc import Callable

from ..errors import SharedMemoryError
from .shm import PREFIX, SharedBuffer, free_bytes, reap_orphans, shm_dir

SHARED = f"{PREFIX}shared-"
LOADING, LOCK = ".loading", ".lock"
# POSIX record locks belong to the process, not the thread: threads take this first.
_THREAD_GUARD = threading.Lock()
_PENDING: list[tuple[str, int]] = []  # releases that arrived while the guard was held
_HELD: set[int] = set()  # this process's user descriptors


def _forget_after_fork() -> None:
    for fd in _HELD:
        try:
            os.close(fd)  # the parent's lock stays: it holds the same open file description
        except OSError:
            pass
    _HELD.clear()
    _PENDING.clear()


os.register_at_fork(after_in_child=_forget_after_fork)


def copy_key(identity: str, name: str) -> str:
    """The key of field ``name`` of the store with this identity, for this user."""
    return hashlib.sha256(f"{os.getuid()}\0{identity}\0{name}".encode()).hexdigest()[:32]


def copy_path(key: str) -> str:
    """Where the complete copy with this key is."""
    return os.path.join(shm_dir(), SHARED + key)


def is_shared(key: str) -> bool:
    """Whether a copy with this key exists or is being loaded on this machine."""
    base = copy_path(key)
    return os.path.exists(base) or os.path.exists(base + LOADING)


def attach_or_load(key: str, size: int, fill: Callable[[SharedBuffer], None]) -> SharedBuffer:
    """The machine's copy with this key: attached if it exists, else made by ``fill`` first.

    ``fill`` writes the ``size`` bytes into the buffer it gets. The returned
    buffer keeps this process counted as a user until it is collected.

    Raises
    ------
    SharedMemoryError
        The shared-memory directory has less than ``size`` bytes free.
    """
    directory = shm_dir()
    reap_orphans(directory)
    reap_unused(directory)
    base = os.path.join(directory, SHARED + key)
    with _THREAD_GUARD:
        fd = _lock_file(base)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # never waits: exclusive flocks are only tried under the guard
            buffer = SharedBuffer.attach(base, size) if os.path.exists(base) else _load(base, size, fill)
        except BaseException:
            _release_locked(base, fd)  # closes fd, which drops the guard
            raise
        fcntl.lockf(fd, fcntl.LOCK_UN)
        _HELD.add(fd)
    _run_pending()
    weakref.finalize(buffer, _release, base, fd, os.getpid())
    return buffer


def _lock_file(base: str) -> int:
    """An open descriptor of the copy's lock file, with the guard taken."""
    while True:
        fd = os.open(base + LOCK, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.lockf(fd, fcntl.LOCK_EX)
        if _still_there(fd, base + LOCK):
            return fd
        os.close(fd)  # removed while we waited: start again with the new one


def _still_there(fd: int, path: str) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _run_pending() -> None:
    while _PENDING:
        base, fd = _PENDING.pop()
        if not _release(base, fd, os.getpid()):
            break  # another thread holds the guard now and runs the rest


def _load(base: str, size: int, fill: Callable[[SharedBuffer], None]) -> SharedBuffer:
    loading = base + LOADING
    _remove(loading)  # its loader died: loaders hold the guard
    free = free_bytes(os.path.dirname(base))
    if size > free:
        raise SharedMemoryError(os.path.dirname(base), size, free)
    fd = os.open(loading, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.posix_fallocate(fd, 0, max(size, 1))  # else a full tmpfs kills the filler with SIGBUS
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
            raise SharedMemoryError(os.path.dirname(base), size, free_bytes(os.path.dirname(base))) from None
        mapped = mmap.mmap(fd, max(size, 1), flags=mmap.MAP_SHARED)
        buffer = SharedBuffer(base, size, mapped)
        fill(buffer)
        os.rename(loading, base)
    except BaseException:
        _remove(loading)
        raise
    finally:
        os.close(fd)
    return buffer


def _release(base: str, fd: int, owner: int) -> bool:
    """Drop this process's use of a copy (a forked child leaves it to its parent).

    Returns False when the guard was busy and the release was queued for its holder.
    """
    if os.getpid() != owner:
        return True
    if not _THREAD_GUARD.acquire(blocking=False):
        _PENDING.append((base, fd))  # the guard's holder runs it when done
        return False
    try:
        if fd not in _HELD:
            return True  # closed already (at a fork)
        _HELD.discard(fd)
        fcntl.lockf(fd, fcntl.LOCK_EX)
        _release_locked(base, fd)
    except OSError:
        pass  # the descriptor is gone already (interpreter shutdown)
    finally:
        _THREAD_GUARD.release()
    return True


def _release_locked(base: str, fd: int) -> None:
    """With the guard held: remove the copy if no other process uses it, then close."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pass
    else:
        if _still_there(fd, base + LOCK):
            for path in (base, base + LOADING, base + LOCK):
                _remove(path)
    os.close(fd)


def reap_unused(directory: str) -> list[str]:
    """Remove the copies that no living process uses (their users were killed); return their keys."""
    reaped = []
    with _THREAD_GUARD:
        for name in os.listdir(directory):
            if not (name.startswith(SHARED) and name.endswith(LOCK)):
                continue
            base = os.path.join(directory, name[: -len(LOCK)])
            try:
                fd = os.open(base + LOCK, os.O_RDWR)
            except FileNotFoundError:
                continue
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                if _still_there(fd, base + LOCK) and _unused(fd):
                    for path in (base, base + LOADING, base + LOCK):
                        _remove(path)
                    reaped.append(name[len(SHARED) : -len(LOCK)])
            except OSError:
                pass  # another process is deciding about it right now
            finally:
                os.close(fd)
    return reaped


def _unused(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def in_use(key: str) -> bool:
    """Whether any process uses the copy with this key (for tests and diagnostics)."""
    try:
        fd = os.open(copy_path(key) + LOCK, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        return not _unused(fd)
    finally:
        os.close(fd)
