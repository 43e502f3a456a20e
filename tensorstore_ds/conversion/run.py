"""One conversion: the rows of a source (or of one shard of it) into one store.

Rows are opened by ``sources``, described by ``columns``, fetched and decoded by
the ``pipeline`` (out of order, results in source order), and committed by the
``writer``; a failed sample is recorded, never replaced. With
``retry_failed`` the rows of a finished store that failed transiently are
fetched again and the store is rebuilt around them (see ``retry``).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import OptionsError, SampleError, SampleFailedError
from ..format.layout import chunk_rows_for
from ..format.manifest import MANIFEST, Manifest
from ..options import progress_disabled
from ..processes import usable_cores
from ..store.store import is_url
from .columns import ColumnPlan, captions_of, cast_media_features, clip_of, kept_of, media_of, plan_columns
from .decode import decode_sample
from .decode.formats import check_audio_formats
from .fetch import Fetcher
from .hosts import CIRCUIT_OPEN
from .options import ConvertOptions
from .pipeline import Pipeline
from .retry import Previous, retry_root, swap_in
from .shards import shard_ranges
from .sources import Source, open_source
from .staging import Stage
from .tasks import Task
from .writer import Column, Plan, StoreWriter

PROGRESS_EVERY = 0.5  # seconds between updates of the progress bar's counts

log = logging.getLogger("tensorstore_ds")


def convert_rows(
    source: Any, out: str | os.PathLike[str], opts: ConvertOptions, shard: tuple[int, int] | None = None
) -> Manifest:
    """Convert all rows of ``source``, or only shard ``(K, N)`` of them, into ``out``."""
    if opts.retry_failed and is_url(out):
        raise OptionsError(
            f"retry_failed rebuilds a store in a local directory, not at {os.fspath(out)}: "
            "pull it, retry there, then push it back"
        )
    src = open_source(source, split=opts.split)
    columns = plan_columns(
        src,
        opts.image_column,
        opts.audio_column,
        opts.caption_column,
        opts.keep_columns,
        opts.audio_dir,
        opts.audio_template,
        opts.clip_start_column,
        opts.clip_end_column,
    )
    src = cast_media_features(src, columns)
    plan = _plan(opts, columns, src)
    if shard is not None:
        src, plan = _shard_of(src, plan, opts, shard)
    if opts.retry_failed:
        return _retry(src, columns, plan, Path(out), opts, shard)
    if is_url(out):  # object storage: chunk files are uploaded as they are committed
        from .upload import open_url_writer

        writer = open_url_writer(os.fspath(out), plan, opts.overwrite, opts.storage_options, opts.scratch_dir)
    else:
        writer = StoreWriter.open(out, plan, overwrite=opts.overwrite)
    try:
        if not writer.finished:
            _run(src, columns, opts, writer)
        return writer.finish({"rows_read": writer.next_row}, progress=opts.progress)
    finally:
        writer.close()


def _retry(
    src: Source, columns: ColumnPlan, plan: Plan, out: Path, opts: ConvertOptions, shard: tuple[int, int] | None
) -> Manifest:
    """Rebuild the finished store at ``out`` with its transiently failed rows fetched again."""
    if shard is not None or opts.engine is not None:
        raise OptionsError("retry_failed works on a whole store: run it without --shard or --engine")
    if (retry_root(out) / MANIFEST).exists():  # a crash hit while the rebuilt store was moved in
        return swap_in(out)
    previous = Previous(out, plan.options, plan.source)
    try:
        if not previous.retried:
            return previous.store.manifest
        writer = StoreWriter.open(retry_root(out), plan)
        try:
            if not writer.finished:
                _run(src, columns, opts, writer, previous)
            writer.finish({"rows_read": writer.next_row}, progress=opts.progress)
        finally:
            writer.close()
    finally:
        previous.close()
    return swap_in(out)


def _shard_of(src: Source, plan: Plan, opts: ConvertOptions, shard: tuple[int, int]) -> tuple[Source, Plan]:
    """The source rows of one chunk-aligned shard, numbered from 0, and the shard's plan."""
    if src.num_rows is None:
        raise OptionsError(f"sharding needs a source of known length; {src.spec} is a stream")
    total = src.num_rows if opts.limit is None else min(opts.limit, src.num_rows)
    k, n = shard
    start, stop = shard_ranges(total, n, plan.chunk_rows)[k]
    source = {**plan.source, "shard": [k, n], "rows": [start, stop]}
    return src.slice(start, stop), dataclasses.replace(plan, source=source)


def _plan(opts: ConvertOptions, columns: ColumnPlan, src: Source) -> Plan:
    if columns.media == "image":
        s = opts.image_size
        media = (Column("images", (s, s, 3), "uint8", True), Column("image_size", (2,), "int32", False))
    else:
        n = opts.audio_options().num_samples
        media = (Column("audio", (n,), "float16", True), Column("audio_length", (), "int32", False))
    row_bytes = int(np.prod(media[0].row_shape)) * np.dtype(media[0].dtype).itemsize
    chunk_rows = chunk_rows_for(row_bytes, int(opts.chunk_mb * 2**20))
    text = {"caption": "utf-8"}
    if columns.multi_caption:
        text["captions"] = "json"
    text.update(dict.fromkeys(columns.keep_columns, "json"))
    return Plan(
        (*media, Column("source_row", (), "int64", False)),
        text,
        chunk_rows,
        {**opts.content(), "media": columns.media, "media_column": columns.media_column, "chunk_rows": chunk_rows},
        src.describe(),
    )


@functools.cache
def _note_resize_without_extension() -> None:
    """Warn once per process when images resize without the compiled passes: the same bytes, more slowly."""
    from .decode import lanczos

    if not lanczos.compiled():
        log.warning(
            "tensorstore_ds was installed without its compiled resize (tensorstore_ds.conversion.decode._resample; "
            "no C compiler at install time): images convert with numpy's matrix products instead, to the same "
            "bytes, about 1.3x slower per core. Reinstall with a C compiler (gcc or clang) to build it."
        )


def _run(
    src: Source, columns: ColumnPlan, opts: ConvertOptions, writer: StoreWriter, previous: Previous | None = None
) -> None:
    from tqdm.auto import tqdm

    if columns.media == "audio":  # stop before decoding when no decoder here reads the source's audio format
        rows = (values for _, values in src.rows(writer.next_row, opts.limit))
        check_audio_formats(rows, lambda values: media_of(values, columns, src.base_dir))
    else:
        _note_resize_without_extension()
    stop = opts.limit
    total = src.num_rows if stop is None else (min(stop, src.num_rows) if src.num_rows is not None else stop)
    workers = usable_cores() if opts.workers is None else opts.workers  # the cores we may run on, not the machine's
    hosts = opts.hosts()
    fetcher = Fetcher(opts.fetch_options(), concurrency=opts.fetch_concurrency, hosts=hosts)
    media = writer.plan.columns[0]
    depth = opts.lookahead + 2 * writer.plan.chunk_rows  # what the pipeline and the writer hold at most
    stage = Stage(str(writer.work / "staging"), depth, media.name, media.row_shape, media.dtype)
    bar = tqdm(
        total=total,
        initial=writer.next_row,
        unit="sample",
        disable=progress_disabled(opts.progress),
        desc=f"converting {src.spec}"[:60],
        dynamic_ncols=True,
    )
    canary = _canary(columns.media)
    pipe = Pipeline(decode_sample, workers, fetcher, opts.fetch_concurrency, canary, hosts, opts.lookahead, stage)
    failed: Counter[str] = Counter()
    shown = time.monotonic()
    with bar, pipe:
        if workers > 0:
            writer.use_processes(pipe.offload)
        for task, outcome in pipe.map(_tasks(src, columns, opts, writer, previous), idle=writer.settle_written):
            _record(writer, task, outcome, opts, previous, failed)
            bar.update(1)
            if time.monotonic() - shown > PROGRESS_EVERY:
                shown = time.monotonic()
                bar.set_postfix(ok=writer.converted, **failed, fetching=pipe.fetches_in_flight, refresh=False)
        writer.settle()


def _canary(media: str) -> bytes:
    """A small, valid image or audio file: what every working decoder decodes."""
    import io

    buf = io.BytesIO()
    if media == "image":
        from PIL import Image

        Image.new("RGB", (8, 8), (40, 120, 200)).save(buf, "PNG")
    else:
        import soundfile

        soundfile.write(buf, np.zeros(1600, np.float32), 16000, format="WAV")
    return buf.getvalue()


def _tasks(
    src: Source, columns: ColumnPlan, opts: ConvertOptions, writer: StoreWriter, previous: Previous | None
) -> Iterator[Task]:
    image, audio = opts.image_options(), opts.audio_options()
    for row, values in src.rows(writer.next_row, opts.limit):
        before = previous.outcome(row) if previous is not None else None
        if before is not None and before[0] == "failed":
            key, error = before[1]
            yield Task(row, key, "error", error, (), None)
            continue
        key = str(values.get("__url__", "?"))  # a WebDataset row's shard, until its media names the row
        try:
            ref = media_of(values, columns, src.base_dir)
            key = ref.key
            text = {"caption": None, "captions": captions_of(values, columns), **kept_of(values, columns)}
            clip = clip_of(values, columns)
        except SampleError as exc:
            yield Task(row, key, "error", exc, (), None)
            continue
        text["caption"] = text["captions"][0]
        if before is not None:  # kept: its values come from the store, by index
            yield Task(row, key, "done", {KEPT: before[1]}, (), text)
            continue
        yield Task(row, key, ref.kind, ref.value, (columns.media, clip, image, audio), text)


KEPT = "kept-index"


def _record(
    writer: StoreWriter,
    task: Task,
    outcome: Any,
    opts: ConvertOptions,
    previous: Previous | None,
    failed: Counter[str],
) -> None:
    if isinstance(outcome, SampleError):
        if opts.on_error == "fail":
            raise SampleFailedError(task.row, task.key, outcome)
        writer.add_failure(task.row, task.key, outcome.reason, outcome.detail)
        failed[failure_class(outcome.reason)] += 1
        return
    if KEPT in outcome and previous is not None:
        outcome = previous.values(outcome[KEPT])
    values = dict(outcome, source_row=task.row)
    writer.add(task.row, values, task.extra)


def failure_class(reason: str) -> str:
    """The progress bar's group for a failure reason."""
    if reason.startswith("http-"):
        return "http"
    if reason == CIRCUIT_OPEN:
        return "host_open"
    if reason in ("timeout", "connection-error"):
        return reason.replace("connection-error", "conn_err")
    return "bad_media"
