"""What flows through the conversion pipeline (:class:`Task`) and the decode process pools it uses."""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..errors import DecoderStartError, SampleError

__all__ = ["Outcome", "Task", "check_decoders_run", "process_pool"]


@dataclass(frozen=True)
class Task:
    """One source row on its way through the pipeline.

    Parameters
    ----------
    row
        Source row index.
    key
        The row's media key (URL, path or column), for the failure record.
    kind
        Media reference kind (``url``, ``path``, ``bytes``, ``array``),
        ``error`` for a row that failed before decoding, or ``done`` for a
        row whose result is known.
    payload
        The reference's value (the :class:`SampleError` for ``error``, the
        result values for ``done``).
    args
        Further positional arguments for the decode function after the payload.
    extra
        Anything the caller wants back with the result (captions, kept values).
    """

    row: int
    key: str
    kind: str
    payload: Any
    args: tuple[Any, ...]
    extra: Any


Outcome = dict[str, Any] | SampleError


def process_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of ``workers`` spawned decode processes that exit when this process dies."""
    context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(workers, mp_context=context, initializer=start_decoder, initargs=(os.getpid(),))


def start_decoder(parent: int) -> None:
    """In a new decode process: keep image buffers in the heap, and exit with the converting process."""
    keep_freed_memory()
    exit_with(parent)


def exit_with(parent: int) -> None:
    """In a decode process: exit once the converting process is gone (a SIGKILL leaves no one to stop us)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="tsds-parent-watch", daemon=True).start()


MMAP_THRESHOLD = 16 * 2**20  # glibc: blocks at least this large are mapped afresh (default 128 KiB, adaptive)
TRIM_THRESHOLD = 32 * 2**20  # glibc: free memory at the top of the heap kept for reuse (default 128 KiB)


def keep_freed_memory() -> bool:
    """Have glibc reuse freed image buffers instead of mapping new pages for every image.

    A fresh process's malloc maps each block over 128 KiB afresh and unmaps it
    when freed, and returns the top of its heap to the kernel as soon as
    128 KiB are free there. A decode process allocates and frees several
    such buffers per image (the decoded image, its RGB copy, the resize's
    arrays), so every image's memory was faulted in again: about 950 page
    faults and 2 ms of system time per 640x480 photo, a third of its
    decoding time. With these thresholds the buffers are reused; a decode
    process keeps at most ``TRIM_THRESHOLD`` of freed memory.

    Only for processes we start; returns False where malloc is not glibc's.
    """
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # glibc's <malloc.h>
    return bool(mallopt(m_mmap_threshold, MMAP_THRESHOLD)) and bool(mallopt(m_trim_threshold, TRIM_THRESHOLD))


def check_decoders_run(decode: Callable[..., Any], canary: Any, args: tuple[Any, ...]) -> None:
    """Blame a sample only if a fresh decode process decodes a known-good sample (``canary``).

    Otherwise every sample would be recorded as failed for a fault that is
    not theirs (a broken decoder library, a main module that spawned
    processes cannot import): stop instead, and nothing is recorded.
    """
    if canary is None:
        return
    probe = process_pool(1)
    try:
        probe.submit(decode, canary, *args).result(timeout=120)
    except BaseException as exc:
        raise DecoderStartError(type(exc).__name__, str(exc)) from exc
    finally:
        probe.shutdown(wait=False, cancel_futures=True)
