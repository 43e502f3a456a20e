"""Batch rings: reusable batch buffers that come back when the batch is dropped.

Gathering a batch into freshly allocated memory pays a page fault per 4 KiB, and
a DataLoader worker's batch is normally copied once more into new shared memory
to reach the main process. A ring avoids both. Each process keeps a few flat
byte buffers ("slots"); a batch is gathered straight into a free slot, and the
slot is marked free again when the last tensor viewing it is garbage collected
(a finalizer on the numpy array that every view of the batch keeps alive).

In a DataLoader worker the slots, and the array of their "free" flags, are
files in the shared-memory directory (named with the worker's pid, see
:mod:`~tensorstore_ds.serve.shm`). A batch crosses to the main process as a
:class:`SlotHandle`: the files' names, the slot number and the layout, a few
hundred bytes of pickle. The main process maps each file once, the first time
a handle names it, keeps the mapping for the next batches in that slot, and
removes the name at once: from then on only the two mappings hold the memory,
so a worker killed later leaves nothing behind in /dev/shm. (Sending torch
shared-memory tensors instead passes two file descriptors per batch through a
socket round trip to the worker, about 0.6 ms a batch on the development
machine, and maps the slot anew each time.) A worker removes the names it
still has when it exits; a worker killed before the main process mapped a
slot leaves a pid-named file that the next buffer created on the machine reaps.
While the main process holds mappings of worker rings, a daemon thread drops
those of exited workers about once a second (a mapping keeps a file descriptor
and the slot's memory), so a finished or killed loader's rings are freed even
when no further batch arrives; batches still viewing a slot keep its memory.

Every slot a ring holds stays in memory, so a ring grows only when it must.
It starts with a floor of slots and, when every slot is taken, first waits up
to ``WAIT`` seconds for the consumer to drop a batch before it adds one. The
floors keep every core busy with the fewest slots: as many workers as the
process may use cores get two (one the consumer holds, one being gathered),
the others one, since while they wait for the consumer to drop their batch
the first ones fill the cores. A consumer that keeps batches
(``list(loader)``), or a training step longer than ``WAIT``, grows a ring to
its most slots; beyond them a batch goes into ordinary new memory at once,
never blocking. At batch 256 of 224x224 images with 4 workers on 2 cores the
workers keep 6 slots of 38.5 MB instead of 12, at about 0.92 of the throughput
(``tools/bench_dataset.py``).
"""

from __future__ import annotations

import math
import mmap
import multiprocessing.util
import os
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..processes import alive, usable_cores
from .shm import PREFIX, SharedBuffer

FREE, TAKEN = 0, 1
ALIGN = 4096
Layout = list[tuple[str, str, tuple[int, ...]]]


class BatchRing:
    """Reusable batch buffers for one process.

    Parameters
    ----------
    shared
        Slots in shared-memory files (DataLoader workers) or plain memory.
    max_slots
        Slots at most; beyond them batches get ordinary memory.
    floor
        Slots made without waiting; between ``floor`` and ``max_slots`` the ring
        first waits up to ``wait`` seconds for a slot to come back.
    wait
        Seconds to wait for a free slot before growing.
    """

    def __init__(self, shared: bool, max_slots: int, floor: int | None = None, wait: float = 0.0) -> None:
        self.shared = shared
        self.max_slots = max_slots
        self.floor = max_slots if floor is None else floor
        self.wait = wait
        self.slots: list[np.ndarray] = []
        self.buffers: list[SharedBuffer] = []
        self.state_buffer: SharedBuffer | None = None
        self.state = np.zeros(max_slots, dtype=np.int32)
        if shared:
            self.state_buffer = SharedBuffer.create(max_slots * 4)
            self.state = self.state_buffer.array("int32", (max_slots,))
            paths = self._paths = [self.state_buffer.path]
            multiprocessing.util.Finalize(self, _unlink_all, args=(paths,), exitpriority=0)

    def acquire(self, nbytes: int) -> int | None:
        """A free slot of at least ``nbytes``, marked taken; None when all are taken.

        Below the floor a slot is added at once; up to ``max_slots`` only after
        waiting ``wait`` seconds for one to be freed; beyond, None.
        """
        s = self._free_slot(nbytes)
        if s is None and self.floor <= len(self.slots) < self.max_slots and self.wait > 0:
            deadline, pause = time.monotonic() + self.wait, 0.0001
            while s is None and time.monotonic() < deadline:
                time.sleep(pause)
                pause = min(pause * 2, 0.0005)
                s = self._free_slot(nbytes)
        if s is not None:
            self.state[s] = TAKEN
            return s
        if len(self.slots) >= self.max_slots:
            return None
        size = ALIGN * math.ceil(max(nbytes, 1) / ALIGN)
        if self.shared:
            buffer = SharedBuffer.create(size)
            self.buffers.append(buffer)
            self._paths.append(buffer.path)
            self.slots.append(buffer.array("uint8", (size,)))
        else:
            self.slots.append(np.zeros(size, dtype=np.uint8))
        s = len(self.slots) - 1
        self.state[s] = TAKEN
        return s

    def _free_slot(self, nbytes: int) -> int | None:
        for s, slot in enumerate(self.slots):
            if self.state[s] == FREE and len(slot) >= nbytes:
                return s
        return None

    def view(self, s: int, nbytes: int, release: bool) -> np.ndarray:
        """Slot ``s`` as a fresh flat array; with ``release``, freed when it is collected."""
        return slot_view(self.slots[s], self.state, s, nbytes, release)

    def handle(self, s: int, nbytes: int, layout: Layout) -> SlotHandle:
        """What the main process needs to find slot ``s`` (a shared ring's)."""
        assert self.state_buffer is not None, "only a shared ring's slots have handles"
        buffer = self.buffers[s]
        state = self.state_buffer
        return SlotHandle(buffer.path, buffer.size, state.path, state.size, s, nbytes, layout, self.state)


@dataclass
class SlotHandle:
    """A worker's batch in a ring slot, as the main process finds it.

    Parameters
    ----------
    path, size
        The slot's file and its bytes.
    state_path, state_size
        The file of the ring's "free" flags and its bytes.
    slot
        The slot's number in its ring.
    nbytes
        Bytes of the batch in the slot.
    layout
        ``(name, dtype, shape)`` of each array, as :func:`carve` cuts them.
    state
        The flags, where they are already mapped (in the worker; not pickled).
    """

    path: str
    size: int
    state_path: str
    state_size: int
    slot: int
    nbytes: int
    layout: Layout
    state: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "state": None}

    def flags(self) -> np.ndarray:
        """The ring's flags, mapped from their file the first time this process needs them."""
        if self.state is None:
            memory = attached(self.state_path, self.state_size)
            self.state = np.frombuffer(memory, dtype=np.int32, count=self.state_size // 4)
        return self.state

    def release(self) -> None:
        """Mark the slot free at once."""
        self.flags()[self.slot] = FREE

    def arrays(self) -> dict[str, np.ndarray]:
        """The batch's arrays over the slot's memory; the slot is freed when the last view goes."""
        memory = attached(self.path, self.size)
        return carve(
            slot_view(np.frombuffer(memory, dtype=np.uint8), self.flags(), self.slot, self.nbytes, True), self.layout
        )


_ATTACHED: dict[str, mmap.mmap] = {}
_ATTACHED_LOCK = threading.Lock()
_WATCHER: dict[str, threading.Thread] = {}  # the thread dropping exited workers' mappings, while there are some
WATCH_EVERY = 1.0  # seconds between two looks at the workers whose rings are mapped


def attached(path: str, size: int) -> mmap.mmap:
    """This process's mapping of a worker's ring file (mapped, then unnamed, on first use)."""
    with _ATTACHED_LOCK:
        mapped = _ATTACHED.get(path)
        if mapped is None:
            _forget_gone_workers()
            fd = os.open(path, os.O_RDWR)
            try:
                mapped = mmap.mmap(fd, size, flags=mmap.MAP_SHARED)
            finally:
                os.close(fd)
            _unlink_all([path])  # the two mappings hold the memory from now on
            _ATTACHED[path] = mapped
            if "thread" not in _WATCHER:
                _WATCHER["thread"] = threading.Thread(target=_watch_workers, name="tensorstore_ds-rings", daemon=True)
                _WATCHER["thread"].start()
        return mapped


def _watch_workers() -> None:
    """Drop exited workers' mappings about once a second; stop when none is left."""
    while True:
        time.sleep(WATCH_EVERY)
        with _ATTACHED_LOCK:
            _forget_gone_workers()
            if not _ATTACHED:
                _WATCHER.pop("thread", None)
                return


def _forget_gone_workers() -> None:
    """Drop the mappings of workers that have exited (batches still viewing them keep theirs)."""
    for path in list(_ATTACHED):
        pid = os.path.basename(path)[len(PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not alive(int(pid)):
            del _ATTACHED[path]


def _unlink_all(paths: list[str]) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


def _release(state: Any, s: int) -> None:
    state[s] = FREE


def slot_view(slot: Any, state: Any, s: int, nbytes: int, release: bool) -> np.ndarray:
    """A flat uint8 array over ``slot`` that every view made from it keeps alive.

    The array is built on a memoryview, so numpy views of it point back to it
    as their base, and torch tensors made from those views keep them alive:
    the finalizer runs only when the last of them is gone.
    """
    flat = np.frombuffer(memoryview(slot), dtype=np.uint8, count=nbytes)
    if release:
        weakref.finalize(flat, _release, state, s)
    return flat


def carve(flat: np.ndarray, layout: list[tuple[str, str, tuple[int, ...]]]) -> dict[str, np.ndarray]:
    """Split a flat buffer into arrays of the given (name, dtype, shape), aligned."""
    out, offset = {}, 0
    for name, dtype, shape in layout:
        size = int(np.dtype(dtype).itemsize * math.prod(shape))
        out[name] = flat[offset : offset + size].view(dtype).reshape(shape)
        offset += ALIGN * math.ceil(size / ALIGN)
    return out


def layout_bytes(layout: list[tuple[str, str, tuple[int, ...]]]) -> int:
    """Bytes :func:`carve` needs for ``layout``."""
    return sum(ALIGN * math.ceil(np.dtype(d).itemsize * math.prod(s) / ALIGN) for _, d, s in layout)


_RINGS: dict[bool, BatchRing] = {}
# A worker has at most prefetch_factor (default 2) batches queued plus the one the
# consumer holds; the main process's own batches are the one served and the one held.
MAX_SLOTS = {False: 2, True: 3}
WAIT = 1.0  # seconds a worker's ring waits for a free slot before growing (spawned workers start that far apart)


def worker_floor(worker_id: int) -> int:
    """Slots DataLoader worker ``worker_id``'s ring makes without waiting (see the module's docstring)."""
    return 2 if worker_id < usable_cores() else 1


def process_ring(worker_id: int | None) -> BatchRing:
    """This process's ring: the main process's (``worker_id`` None) or a worker's, one per process."""
    in_worker = worker_id is not None
    ring = _RINGS.get(in_worker)
    if ring is None:
        if worker_id is None:
            ring = BatchRing(shared=False, max_slots=MAX_SLOTS[False])
        else:
            ring = BatchRing(True, MAX_SLOTS[True], floor=worker_floor(worker_id), wait=WAIT)
        _RINGS[in_worker] = ring
    return ring


def _reset_after_fork() -> None:
    global _ATTACHED_LOCK  # noqa: PLW0603 - the parent's lock may have been held by a thread that is not here
    _RINGS.clear()
    _ATTACHED.clear()
    _WATCHER.clear()
    _ATTACHED_LOCK = threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)
