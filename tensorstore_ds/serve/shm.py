"""Shared buffers: one copy of the data for a whole DataLoader process tree.

A buffer is a file in a RAM-backed directory (``/dev/shm``, or
``$TENSORSTORE_DS_SHM_DIR``) mapped with ``MAP_SHARED``. Forked workers inherit
the mapping; spawned or forkserver workers, and anything that unpickles the
buffer, attach to it by name, so pickling never copies the data. Only the
process that created a buffer removes its file, when the buffer is garbage
collected or the process exits. A process killed before that (SIGKILL, or a
SIGTERM from a scheduler's preemption) cannot; its buffers carry its pid in
their name, and the next buffer created on the machine removes them.
"""

from __future__ import annotations

import mmap
import os
import uuid
import weakref
from typing import Any

import numpy as np

from ..errors import SharedMemoryError
from ..processes import alive

PREFIX = "tensorstore_ds-"


def shm_dir() -> str:
    """Directory that holds shared buffers."""
    return os.environ.get("TENSORSTORE_DS_SHM_DIR", "/dev/shm")


def _unlink(path: str, creator: int) -> None:
    if os.getpid() == creator:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


class SharedBuffer:
    """A named, process-shared byte buffer (use :meth:`create` or :meth:`attach`).

    Parameters
    ----------
    path
        The backing file.
    size
        Bytes.
    mapped
        Its mapping in this process.
    """

    def __init__(self, path: str, size: int, mapped: mmap.mmap) -> None:
        self.path = path
        self.size = size
        self.mapped = mapped

    @classmethod
    def create(cls, size: int) -> SharedBuffer:
        """A new zero-filled buffer owned by this process."""
        directory = shm_dir()
        reap_orphans(directory)
        free = free_bytes(directory)
        if size > free:
            raise SharedMemoryError(directory, size, free)
        path = os.path.join(directory, f"{PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, max(size, 1))  # mmap cannot map an empty file
            mapped = mmap.mmap(fd, max(size, 1), flags=mmap.MAP_SHARED)
        except BaseException:
            os.unlink(path)
            raise
        finally:
            os.close(fd)
        buffer = cls(path, size, mapped)
        weakref.finalize(buffer, _unlink, path, os.getpid())
        return buffer

    @classmethod
    def attach(cls, path: str, size: int) -> SharedBuffer:
        """Map an existing buffer read-only."""
        fd = os.open(path, os.O_RDONLY)
        try:
            mapped = mmap.mmap(fd, max(size, 1), flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        return cls(path, size, mapped)

    def __reduce__(self) -> tuple[Any, ...]:
        return (SharedBuffer.attach, (self.path, self.size))

    def array(self, dtype: str | np.dtype[Any], shape: tuple[int, ...]) -> np.ndarray:
        """The buffer as a numpy array (read-only when attached)."""
        return np.frombuffer(self.mapped, dtype=dtype, count=int(np.prod(shape))).reshape(shape)


def reap_orphans(directory: str) -> list[str]:
    """Remove the buffers whose creating process is gone; return their names."""
    reaped = []
    for name in os.listdir(directory):
        if not name.startswith(PREFIX):
            continue
        pid = name[len(PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not alive(int(pid)):
            try:
                os.unlink(os.path.join(directory, name))
                reaped.append(name)
            except FileNotFoundError:
                pass  # another process reaped it first
    return reaped


def free_bytes(directory: str) -> int:
    """Bytes still free in ``directory``'s file system."""
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


class RamArray:
    """A whole store array held in a :class:`SharedBuffer`.

    Parameters
    ----------
    buffer
        The shared buffer.
    dtype, shape
        Of the array.
    """

    def __init__(self, buffer: SharedBuffer, dtype: str, shape: tuple[int, ...]) -> None:
        self.buffer = buffer
        self.dtype = np.dtype(dtype)
        self.shape = shape
        self.data = buffer.array(dtype, shape)

    def __getstate__(self) -> dict[str, Any]:
        return {"buffer": self.buffer, "dtype": self.dtype.str, "shape": self.shape}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["buffer"], state["dtype"], state["shape"])  # type: ignore[misc]

    def __len__(self) -> int:
        return self.shape[0]

    def take(self, indices: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Rows at ``indices`` in one vectorised gather; the caller checks the range.

        ``mode="clip"`` matters: with the default ``"raise"`` numpy gathers into
        a temporary buffer and copies it into ``out`` afterwards.
        """
        return np.take(self.data, indices, axis=0, out=out, mode="clip")

    def willneed(self, indices: np.ndarray) -> None:
        """Nothing to read ahead: the data is in RAM."""
