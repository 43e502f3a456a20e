"""Batch rings: reusable batch buffers that come back when the batch is dropped.

Gathering a batch into freshly allocated memory pays a page fault per 4 KiB, and
a DataLoader worker's batch is normally copied once more into new shared memory
to reach the main process. A ring avoids both. Each process keeps a few flat
byte buffers ("slots"); a batch is gathered straight into a free slot, and the
slot is marked free again when the last tensor viewing it is garbage collected
(a finalizer on the numpy array that every view of the batch keeps alive).

In a DataLoader worker the slots are torch shared-memory tensors: the batch
crosses to the main process as a file descriptor (torch's own sharing, no
copy), the main process wraps the same memory, and its finalizer writes the
slot's "free" flag into a shared state tensor that the worker reads. A ring
never blocks: when every slot is taken (the consumer keeps batches), the batch
goes into ordinary new memory instead. Torch unlinks its shared memory at once,
so a killed worker leaves nothing behind in /dev/shm.
"""

from __future__ import annotations

import math
import os
import weakref
from typing import Any

import numpy as np

FREE, TAKEN = 0, 1
ALIGN = 4096


class BatchRing:
    """Reusable batch buffers for one process.

    Parameters
    ----------
    shared
        Slots in torch shared memory (DataLoader workers) or plain memory.
    max_slots
        Slots at most; beyond them batches get ordinary memory.
    """

    def __init__(self, shared: bool, max_slots: int) -> None:
        self.shared = shared
        self.max_slots = max_slots
        self.slots: list[Any] = []
        self.state = self._zeros(max_slots, "int32")

    def _zeros(self, n: int, dtype: str) -> Any:
        if not self.shared:
            return np.zeros(n, dtype=dtype)
        import torch

        return torch.zeros(n, dtype=getattr(torch, dtype)).share_memory_()

    def acquire(self, nbytes: int) -> int | None:
        """A free slot of at least ``nbytes``, marked taken; None when all are taken."""
        state = self._flags()
        for s, slot in enumerate(self.slots):
            if state[s] == FREE and _length(slot) >= nbytes:
                state[s] = TAKEN
                return s
        if len(self.slots) >= self.max_slots:
            return None
        self.slots.append(self._zeros(ALIGN * math.ceil(max(nbytes, 1) / ALIGN), "uint8"))
        s = len(self.slots) - 1
        state[s] = TAKEN
        return s

    def _flags(self) -> np.ndarray:
        return self.state.numpy() if self.shared else self.state

    def view(self, s: int, nbytes: int, release: bool) -> np.ndarray:
        """Slot ``s`` as a fresh flat array; with ``release``, freed when it is collected."""
        return slot_view(self.slots[s], self.state, s, nbytes, release)


def _length(slot: Any) -> int:
    return int(slot.numel()) if hasattr(slot, "numel") else len(slot)


def _release(state: Any, s: int) -> None:
    state[s] = FREE


def slot_view(slot: Any, state: Any, s: int, nbytes: int, release: bool) -> np.ndarray:
    """A flat uint8 array over ``slot`` that every view made from it keeps alive.

    The array is built on a memoryview, so numpy views of it point back to it
    as their base, and torch tensors made from those views keep them alive:
    the finalizer runs only when the last of them is gone.
    """
    memory = slot.numpy() if hasattr(slot, "numpy") else slot
    flat = np.frombuffer(memoryview(memory), dtype=np.uint8, count=nbytes)
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


def process_ring(in_worker: bool) -> BatchRing:
    """This process's ring (one for the main process, one per worker)."""
    ring = _RINGS.get(in_worker)
    if ring is None:
        ring = _RINGS[in_worker] = BatchRing(shared=in_worker, max_slots=MAX_SLOTS[in_worker])
    return ring


def _reset_after_fork() -> None:
    _RINGS.clear()


os.register_at_fork(after_in_child=_reset_after_fork)
