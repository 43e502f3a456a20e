"""The conversion pipeline: fetch and decode out of order, results in source order.

Rows move through four stages, each bounded:

1. *read*: tasks are read from the source while fewer than ``lookahead``
   tasks are in flight past the oldest unfinished one (the head), and fewer
   than :data:`HEAVY_AHEAD` per decode process of them carry their media bytes
   (embedded images or arrays, which wait in memory; URLs and paths are small);
2. *fetch*: URL tasks are fetched by threads. ``fetch_threads`` fetches run at
   once; a fetch running longer than :data:`SLOW_AFTER` seconds (a stalled
   server) stops counting, so another may start, up to ``STALL_ROOM`` times
   ``fetch_threads`` threads in all. A per-host cap (:class:`~.hosts.Hosts`)
   parks a capped host's URLs while other hosts' URLs go ahead; a host whose
   circuit is open fails its URLs at once, without a thread. New fetches wait
   while ``fetch_threads`` fetched bodies, and :data:`BODY_BUDGET` bytes of
   them, are still undecoded, so bodies in memory are bounded whatever the
   decode speed; within the budget, fetches run ahead of slow decoding, and a
   stalled URL near the end of the source starts its deadline earlier;
3. *decode*: fetched bodies (and paths, bytes, arrays) are decoded by a pool
   of worker processes, in batches of up to :data:`BATCH` samples per task
   (one pickle and one future per batch), two batches per process at most
   (one decoding, one queued); samples that arrive while every process is
   busy wait and leave together in the next batch. With ``workers == 0``
   they are decoded inline in the calling thread.
   With a :class:`~.staging.Stage`, each sample sent to decode takes a free
   slot of the staging file, the decoder writes the decoded media row into it
   and returns only the small values; the result carries a
   :class:`~.staging.StagedRow`, which holds the slot until the consumer
   releases it (the writer, once the row's chunk file is written). The decode
   processes also write the chunk files, gathering the rows from their slots
   (``offload``, see ``chunkio``);
4. *yield*: results are yielded strictly in source order, so the store is the
   same whatever the number of workers and whatever the timing. A stalled
   URL holds up only its own row: the rows behind it are fetched and decoded
   meanwhile, up to ``lookahead`` of them; rows wait for the head in the
   staging file (on disk), not in memory.

So a stalled URL costs throughput only when it is stalled longer than it takes
to process ``lookahead`` rows: throughput under stalls is at least
``lookahead / deadline`` rows per second.

A decode process that dies (a decoder crashing on hostile bytes, the kernel's
out-of-memory killer) breaks the whole process pool. The pool is replaced, and
every sample that was in flight is decoded again alone, in a separate
one-process pool: the sample that kills its decoder again fails by itself with
reason ``decoder-crashed``, and the others are decoded as usual, so the
conversion goes on and its result does not depend on the timing of the crash.
(With ``workers == 0`` the decoder runs in the converting process itself.)
A decode process exits by itself within a second of the converting process
dying (a SIGKILL gives no chance to stop it).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from ..errors import SampleError
from .fetch import Fetcher
from .hosts import Hosts, host_of
from .staging import Stage, StagedRows, decode_batch, decode_staged
from .tasks import Outcome, Task, check_decoders_run, process_pool

SLOW_AFTER = 1.0  # seconds after which a fetch counts as stalled and frees its concurrency slot
STALL_ROOM = 4  # fetch threads at most, as a multiple of fetch_threads
BATCH = 32  # samples per decode-process task at most: fewer pickles, futures and thread wake-ups per sample
HEAVY_AHEAD = 128  # tasks carrying their media bytes read ahead at most, per decode process
HEAVY = frozenset({"bytes", "array"})  # task kinds whose payload is the media itself
BODY_BUDGET = 64 * 2**20  # bytes of fetched bodies that may wait for the decoders (beyond fetch_threads of them)


class _Item:
    """A task in flight: its sequence number, its result future, its payload while needed."""

    __slots__ = ("body", "future", "host", "payload", "seq", "slot", "task")

    def __init__(self, seq: int, task: Task) -> None:
        self.seq, self.task, self.payload, self.host = seq, task, task.payload, ""
        self.slot = -1  # its staging slot once sent to decode
        self.body = 0  # bytes of its fetched body while it waits to be decoded
        self.future: Future[dict[str, Any]] = Future()


class Pipeline:
    """Ordered parallel fetch + decode with deep lookahead.

    Parameters
    ----------
    decode
        A picklable module-level function ``decode(payload, *task.args)``.
    workers
        Decode processes; 0 decodes in the calling thread.
    fetcher
        Fetches URL payloads; None when the source has no URLs.
    fetch_threads
        Concurrent fetches (not counting stalled ones).
    canary
        A payload that must decode: after a decode process dies, a fresh one
        decodes it before the sample is blamed.
    hosts
        Per-host cap and circuit breaker shared with ``fetcher``.
    lookahead
        Tasks in flight at most past the head.
    stage
        Where decoded media rows wait for their turn (None: in memory). Its
        slots beyond ``lookahead`` are what the consumer may hold (rows it has
        not released); when the consumer holds them all, :meth:`map` raises
        rather than wait for ever.
    """

    def __init__(
        self,
        decode: Callable[..., dict[str, Any]],
        workers: int,
        fetcher: Fetcher | None = None,
        fetch_threads: int = 64,
        canary: Any = None,
        hosts: Hosts | None = None,
        lookahead: int = 1024,
        stage: Stage | None = None,
    ) -> None:
        self.decode = decode
        self.workers = workers
        self.fetcher = fetcher
        self.fetch_threads = fetch_threads
        self.canary = canary
        self.hosts = hosts if hosts is not None else Hosts(trip_after=0)
        self.stage = stage
        self.lookahead = max(8, lookahead) if stage is None else min(max(8, lookahead), stage.depth)
        self.decode_window = max(8, 2 * workers * BATCH)  # samples read ahead to decode: two full batches a process
        self._procs: ProcessPoolExecutor | None = None
        self._solo: ProcessPoolExecutor | None = None  # decodes one sample at a time after a crash
        self._threads: ThreadPoolExecutor | None = None
        self._staged: StagedRows | None = None
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._to_fetch: deque[_Item] = deque()
        self._unparked: deque[_Item] = deque()
        self._parked: dict[str, deque[_Item]] = {}
        self._fetching: OrderedDict[int, float] = OrderedDict()  # seq -> start, oldest first
        self._to_decode: deque[_Item] = deque()
        self._decoding = 0  # samples in batches sent to decode
        self._batches = 0  # those batches
        self._undecoded = 0
        self._undecoded_bytes = 0  # of fetched bodies

    def __enter__(self) -> Pipeline:
        if self.workers > 0:
            self._procs = process_pool(self.workers)
        if self.stage is not None:
            self._staged = self.stage.create()
        if self.fetcher is not None:
            self._threads = ThreadPoolExecutor(STALL_ROOM * self.fetch_threads, thread_name_prefix="tsds-fetch")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._threads is not None:  # a stalled fetch ends by its deadline; do not wait for it
            self._threads.shutdown(wait=exc[0] is None, cancel_futures=True)
        for pool in (self._procs, self._solo):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        if self.fetcher is not None:
            self.fetcher.close()
        if self.stage is not None:
            if self._staged is not None:
                self._staged.close()
                self._staged = None
            self.stage.remove()

    @property
    def fetches_in_flight(self) -> int:
        """URLs being fetched now (stalled ones included)."""
        return len(self._fetching)

    def offload(self, fn: Callable[..., Any], *args: Any) -> Future[Any] | None:
        """Run ``fn(*args)`` in a decode process (None when there are none): work off the converting process."""
        pool = self._procs
        if pool is None:
            return None
        try:
            return pool.submit(fn, *args)
        except RuntimeError:  # broken (BrokenProcessPool) or shut down: the caller does it itself
            return None

    # --- the ordered loop ------------------------------------------------------

    def map(self, tasks: Iterable[Task], idle: Callable[[], None] = lambda: None) -> Iterator[tuple[Task, Outcome]]:
        """Yield ``(task, values or SampleError)`` in the order of ``tasks``; call ``idle()`` before each wait."""
        source, window = iter(tasks), deque[_Item]()
        seq, heavy, exhausted = 0, 0, False  # heavy: tasks in the window that carry their media bytes
        while True:
            while not exhausted and len(window) < self.lookahead and self._room_to_read(heavy):
                task = next(source, None)
                if task is None:
                    exhausted = True
                    break
                window.append(self._admit(_Item(seq, task)))
                heavy += task.kind in HEAVY
                seq += 1
            self._pump(inline=True)
            if window and window[0].future.done():
                head = window.popleft()
                heavy -= head.task.kind in HEAVY
                yield head.task, self._outcome(head)
                continue
            if not window and exhausted:
                return
            self._check_slots()
            idle()
            with self._wake:
                if not (window and window[0].future.done()):
                    self._wake.wait(0.25 if self._fetching else 2.0)

    def _check_slots(self) -> None:
        """Raise when samples wait to decode, none is decoding and the consumer holds every slot."""
        staged = self._staged
        if staged is not None and self._to_decode and not self._decoding and not staged.free:
            raise RuntimeError(
                f"all {staged.stage.depth} staging slots are held by rows not released: "
                "the consumer must release each StagedRow, and the stage must be deeper than the lookahead"
            )

    def _room_to_read(self, heavy: int) -> bool:
        if heavy >= HEAVY_AHEAD * max(1, self.workers):  # embedded media wait in memory, not staged: keep them few
            return False
        bodies_fit = 0 < self._undecoded_bytes < BODY_BUDGET  # fetched bodies wait: fetches may run ahead
        decodes_fit = len(self._to_decode) < self.decode_window or bodies_fit
        return decodes_fit and len(self._to_fetch) < 2 * self.fetch_threads

    def _admit(self, item: _Item) -> _Item:
        task = item.task
        if task.kind == "error":
            item.future.set_exception(task.payload)
        elif task.kind == "done":  # known already (a row a retry keeps)
            item.future.set_result(dict(task.payload))
        elif task.kind == "url":
            if self._threads is None or self.fetcher is None:
                raise RuntimeError("a URL task needs a fetcher")
            item.host = host_of(task.payload)
            with self._lock:
                self._to_fetch.append(item)
        else:
            with self._lock:
                self._to_decode.append(item)
                self._undecoded += 1
        return item

    # --- scheduling --------------------------------------------------------------

    def _pump(self, inline: bool = False) -> None:
        """Start the fetches and decodes that the limits allow (inline decodes only from map())."""
        with self._lock:
            starts = self._fetches_to_start()
            decodes = self._decodes_to_start(inline)
        for item in starts:
            self._start_fetch(item)
        for batch in decodes:
            self._start_batch(batch)

    def _fetches_to_start(self) -> list[_Item]:
        starts: list[_Item] = []
        cutoff = time.monotonic() - SLOW_AFTER
        stalled = 0
        for start in self._fetching.values():
            if start > cutoff:
                break
            stalled += 1
        while self._unparked or self._to_fetch:
            running = len(self._fetching) + len(starts)
            if running >= STALL_ROOM * self.fetch_threads or running - stalled >= self.fetch_threads:
                break
            if self._undecoded >= self.fetch_threads and self._undecoded_bytes >= BODY_BUDGET:
                break  # bodies wait for the decoders: fetch no more
            item = self._unparked.popleft() if self._unparked else self._to_fetch.popleft()
            if self.hosts.is_open(item.task.payload):
                self._unparked.extend(self._parked.pop(item.host, ()))
                self._fail_circuit(item)
            elif not self.hosts.try_acquire(item.host):
                self._parked.setdefault(item.host, deque()).append(item)
            else:
                self._fetching[item.seq] = time.monotonic()
                starts.append(item)
        return starts

    def _fail_circuit(self, item: _Item) -> None:
        """Fail a URL of a host whose circuit is open, without a fetch (the lock is held)."""
        try:
            self.hosts.check(item.task.payload)
        except SampleError as exc:
            item.future.set_exception(exc)
        self._wake.notify()

    def _decodes_to_start(self, inline: bool) -> list[list[_Item]]:
        """Batches to send now: at most two per decode process in flight, what waits spread over them.

        While every process is busy, samples (fetched bodies) wait here and
        leave together in the next free batch, up to :data:`BATCH`: so when
        decoding is the bottleneck, batches are large and cost little per
        sample; when it is not, a sample leaves at once.
        """
        if self.workers == 0 and not inline:
            return []
        batches: list[list[_Item]] = []
        room = 2 * max(1, self.workers) - self._batches
        while room > 0 and self._to_decode:
            size = min(BATCH, -(-len(self._to_decode) // room))
            batch: list[_Item] = []
            while len(batch) < size and self._to_decode:
                if self._staged is not None:
                    slot = self._staged.take()
                    if slot is None:  # the consumer holds them: wait for it to release some
                        break
                    self._to_decode[0].slot = slot
                batch.append(self._to_decode.popleft())
            if not batch:
                break
            batches.append(batch)
            self._batches += 1
            self._decoding += len(batch)
            room -= 1
        return batches

    def _start_fetch(self, item: _Item) -> None:
        assert self._threads is not None
        self._threads.submit(self._fetch, item)

    def _fetch(self, item: _Item) -> None:
        """In a fetch thread: download, then hand the body to the decoders."""
        assert self.fetcher is not None
        error: BaseException | None = None
        try:
            item.payload = self.fetcher.fetch(item.task.payload)
        except BaseException as exc:  # handed to map(), which raises anything but a SampleError
            error = exc
        if error is not None:
            item.future.set_exception(error)
        with self._wake:
            del self._fetching[item.seq]
            self.hosts.release(item.host)
            parked = self._parked.get(item.host)
            if parked:
                self._unparked.append(parked.popleft())
            if error is None:
                self._to_decode.append(item)
                self._undecoded += 1
                item.body = len(item.payload)
                self._undecoded_bytes += item.body
            self._wake.notify()
        self._pump()

    def _start_batch(self, items: list[_Item]) -> None:
        pool, stage = self._procs, self.stage
        jobs = [(item.slot, item.payload, item.task.args) for item in items]
        future: Future[Any] = Future()
        try:
            if pool is not None:
                future = pool.submit(decode_batch, stage, self.decode, jobs)
            else:  # workers == 0: here, in map()'s thread
                future.set_result(decode_batch(stage, self.decode, jobs))
        except BaseException as exc:  # a broken pool: map() decodes them alone; else raised by map()
            future.set_exception(exc)
        future.add_done_callback(lambda f: self._batch_decoded(items, f, pool))

    def _batch_decoded(self, items: list[_Item], future: Future[Any], pool: ProcessPoolExecutor | None) -> None:
        error = future.exception()
        results = future.result() if error is None else [error] * len(items)
        for item, result in zip(items, results):
            item.future.pool = pool  # type: ignore[attr-defined]
            if not isinstance(result, BrokenProcessPool):
                item.payload = None  # the body is no longer needed: memory stays bounded
            if isinstance(result, BaseException):
                item.future.set_exception(result)
            else:
                item.future.set_result(result)
        with self._wake:
            self._batches -= 1
            self._decoding -= len(items)
            self._undecoded -= len(items)
            self._undecoded_bytes -= sum(item.body for item in items)
            self._wake.notify()

    def _submit_alone(self, pool: ProcessPoolExecutor, item: _Item) -> Future[dict[str, Any]]:
        args = (item.payload, *item.task.args)
        if self.stage is not None:
            return pool.submit(decode_staged, self.stage, item.slot, self.decode, *args)
        return pool.submit(self.decode, *args)

    # --- results -----------------------------------------------------------------

    def _outcome(self, item: _Item) -> Outcome:
        try:
            values = item.future.result()
        except SampleError as exc:
            return self._unstage(item, exc)
        except BrokenProcessPool:
            self._replace(getattr(item.future, "pool", None))
            return self._unstage(item, self._alone(item))
        return self._unstage(item, values)

    def _unstage(self, item: _Item, outcome: Outcome) -> Outcome:
        """Put the staged media row (a :class:`StagedRow`, holding its slot) into a result; free a failure's slot."""
        if self._staged is None or item.slot < 0:
            return outcome
        if isinstance(outcome, SampleError):
            self._staged.give_back(item.slot)
        else:
            assert self.stage is not None
            outcome[self.stage.field] = self._staged.row(item.slot)
        item.slot = -1
        return outcome

    def _replace(self, broken: ProcessPoolExecutor | None) -> None:
        """Swap in a new pool for the broken one (once, however many of its futures report it)."""
        with self._lock:
            if broken is not None and broken is self._procs:
                self._procs = process_pool(self.workers)
                broken.shutdown(wait=False, cancel_futures=True)

    def _alone(self, item: _Item) -> Outcome:
        """Decode one sample in a pool of its own: a sample that kills its decoder fails alone."""
        if self._solo is None:
            self._solo = process_pool(1)
        try:
            return self._submit_alone(self._solo, item).result()
        except SampleError as exc:
            return exc
        except BrokenProcessPool:
            self._solo.shutdown(wait=False, cancel_futures=True)
            self._solo = None
            check_decoders_run(self.decode, self.canary, item.task.args)
            return SampleError(
                "decoder-crashed",
                "the decoding process died on this sample (a decoder crash or "
                "the out-of-memory killer); the other samples were decoded",
            )
