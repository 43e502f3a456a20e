"""The conversion pipeline: fetch in threads, decode in processes, results in order.

URLs are fetched by a pool of threads (network-bound, so many more than
cores); decoding runs in a pool of worker processes (CPU-bound, one per core)
or inline when ``workers == 0``. Results come back strictly in submission
order, so the store is the same whatever the number of workers.

A decode process that dies (a decoder crashing on hostile bytes, the kernel's
out-of-memory killer) breaks the whole process pool. The pool is replaced, and
every sample that was in flight is decoded again alone, in a separate
one-process pool: the sample that kills its decoder again fails by itself with
reason ``decoder-crashed``, and the others are decoded as usual, so the
conversion goes on and its result does not depend on the timing of the crash.
(With ``workers == 0`` the decoder runs in the converting process itself.)
"""

from __future__ import annotations

import multiprocessing
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from ..errors import DecoderStartError, SampleError
from .fetch import Fetcher


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
        Media reference kind (``url``, ``path``, ``bytes``, ``array``), or
        ``error`` for a row that failed before decoding.
    payload
        The reference's value (the :class:`SampleError` for ``error``).
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


class Pipeline:
    """Ordered parallel fetch + decode.

    Parameters
    ----------
    decode
        A picklable module-level function ``decode(payload, *task.args)``.
    workers
        Decode processes; 0 decodes in the calling thread.
    fetcher
        Fetches URL payloads; None when the source has no URLs.
    fetch_threads
        Concurrent fetches.
    canary
        A payload that must decode: after a decode process dies, a fresh one
        decodes it before the sample is blamed.
    """

    def __init__(
        self,
        decode: Callable[..., dict[str, Any]],
        workers: int,
        fetcher: Fetcher | None = None,
        fetch_threads: int = 64,
        canary: Any = None,
    ) -> None:
        self.decode = decode
        self.workers = workers
        self.fetcher = fetcher
        self.fetch_threads = fetch_threads
        self.canary = canary
        self._procs: ProcessPoolExecutor | None = None
        self._solo: ProcessPoolExecutor | None = None  # decodes one sample at a time after a crash
        self._threads: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> Pipeline:
        if self.workers > 0:
            self._procs = _process_pool(self.workers)
        if self.fetcher is not None:
            self._threads = ThreadPoolExecutor(self.fetch_threads, thread_name_prefix="tsds-fetch")
        return self

    def __exit__(self, *exc: Any) -> None:
        for pool in (self._threads, self._procs, self._solo):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        if self.fetcher is not None:
            self.fetcher.close()

    @property
    def window(self) -> int:
        """Tasks in flight at most: enough to keep every fetch thread and worker busy."""
        fetch = 2 * self.fetch_threads if self.fetcher is not None else 0
        return max(8, 4 * self.workers, fetch)

    def map(self, tasks: Iterable[Task]) -> Iterator[tuple[Task, Outcome]]:
        """Yield ``(task, values or SampleError)`` in the order of ``tasks``."""
        window: deque[tuple[Task, Future[dict[str, Any]]]] = deque()
        for task in tasks:
            window.append((task, self._submit(task)))
            while window and (len(window) >= self.window or window[0][1].done()):
                head, future = window.popleft()
                yield head, self._outcome(head, future)
        while window:
            head, future = window.popleft()
            yield head, self._outcome(head, future)

    def _outcome(self, task: Task, future: Future[dict[str, Any]]) -> Outcome:
        try:
            return _outcome(future)
        except BrokenProcessPool:
            self._replace(getattr(future, "pool", None))
            return self._alone(task, getattr(future, "payload", task.payload))

    def _replace(self, broken: ProcessPoolExecutor | None) -> None:
        """Swap in a new pool for the broken one (once, however many of its futures report it)."""
        with self._lock:
            if broken is not None and broken is self._procs:
                self._procs = _process_pool(self.workers)
                broken.shutdown(wait=False, cancel_futures=True)

    def _alone(self, task: Task, payload: Any) -> Outcome:
        """Decode one sample in a pool of its own: a sample that kills its decoder fails alone."""
        if self._solo is None:
            self._solo = _process_pool(1)
        try:
            return self._solo.submit(self.decode, payload, *task.args).result()
        except SampleError as exc:
            return exc
        except BrokenProcessPool:
            self._solo.shutdown(wait=False, cancel_futures=True)
            self._solo = None
            self._check_decoders_run(task)
            return SampleError(
                "decoder-crashed",
                "the decoding process died on this sample (a decoder crash or "
                "the out-of-memory killer); the other samples were decoded",
            )

    def _check_decoders_run(self, task: Task) -> None:
        """Blame a sample only if a fresh decode process decodes a known-good sample.

        Otherwise every sample would be recorded as failed for a fault that is
        not theirs (a broken decoder library, a main module that spawned
        processes cannot import): stop instead, and nothing is recorded.
        """
        if self.canary is None:
            return
        probe = _process_pool(1)
        try:
            probe.submit(self.decode, self.canary, *task.args).result(timeout=120)
        except BaseException as exc:
            raise DecoderStartError(type(exc).__name__, str(exc)) from exc
        finally:
            probe.shutdown(wait=False, cancel_futures=True)

    def _submit(self, task: Task) -> Future[dict[str, Any]]:
        if task.kind == "error":
            failed: Future[dict[str, Any]] = Future()
            failed.set_exception(task.payload)
            return failed
        if task.kind != "url":
            return self._decode(task, task.payload)
        if self._threads is None or self.fetcher is None:
            raise RuntimeError("a URL task needs a fetcher")
        outer: Future[dict[str, Any]] = Future()
        fetched = self._threads.submit(self.fetcher.fetch, task.payload)
        fetched.add_done_callback(lambda f: self._after_fetch(task, f, outer))
        return outer

    def _after_fetch(self, task: Task, fetched: Future[bytes], outer: Future[dict[str, Any]]) -> None:
        error = fetched.exception()
        if error is not None:
            outer.set_exception(error)
            return
        try:
            decoded = self._decode(task, fetched.result())
        except BaseException as exc:  # raised in a fetch thread: hand it to map(), which waits on outer
            outer.set_exception(exc)
            return
        outer.payload, outer.pool = fetched.result(), getattr(decoded, "pool", None)  # type: ignore[attr-defined]
        _chain(decoded, outer)

    def _decode(self, task: Task, payload: Any) -> Future[dict[str, Any]]:
        pool = self._procs
        if pool is not None:
            try:
                submitted = pool.submit(self.decode, payload, *task.args)
            except BrokenProcessPool as exc:  # broken since the last result: map() decodes it alone
                submitted = Future()
                submitted.set_exception(exc)
            submitted.payload, submitted.pool = payload, pool  # type: ignore[attr-defined]
            return submitted
        future: Future[dict[str, Any]] = Future()
        try:
            future.set_result(self.decode(payload, *task.args))
        except SampleError as exc:
            future.set_exception(exc)
        return future


def _process_pool(workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


def _chain(source: Future[dict[str, Any]], target: Future[dict[str, Any]]) -> None:
    def copy(f: Future[dict[str, Any]]) -> None:
        error = f.exception()
        target.set_exception(error) if error is not None else target.set_result(f.result())

    source.add_done_callback(copy)


def _outcome(future: Future[dict[str, Any]]) -> Outcome:
    try:
        return future.result()
    except SampleError as exc:
        return exc
