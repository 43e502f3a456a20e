"""One conversion: the rows of a source (or of one shard of it) into one store.

Rows are opened by ``sources``, described by ``columns``, fetched and decoded by
the ``pipeline`` in source order, and committed by the ``writer``; a failed
sample is recorded, never replaced.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from ..errors import OptionsError, SampleError, SampleFailedError
from ..format.layout import chunk_rows_for
from ..format.manifest import Manifest
from ..options import progress_disabled
from .columns import ColumnPlan, captions_of, cast_media_features, clip_of, kept_of, media_of, plan_columns
from .decode import decode_sample
from .fetch import Fetcher
from .options import ConvertOptions
from .pipeline import Pipeline, Task
from .shards import shard_ranges
from .sources import Source, open_source
from .writer import Column, Plan, StoreWriter


def convert_rows(
    source: Any, out: str | os.PathLike[str], opts: ConvertOptions, shard: tuple[int, int] | None = None
) -> Manifest:
    """Convert all rows of ``source``, or only shard ``(K, N)`` of them, into ``out``."""
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
    writer = StoreWriter.open(out, plan, overwrite=opts.overwrite)
    try:
        if not writer.finished:
            _run(src, columns, opts, writer)
        return writer.finish({"rows_read": writer.next_row}, progress=opts.progress)
    finally:
        writer.close()


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


def _run(src: Source, columns: ColumnPlan, opts: ConvertOptions, writer: StoreWriter) -> None:
    from tqdm.auto import tqdm

    stop = opts.limit
    total = src.num_rows if stop is None else (min(stop, src.num_rows) if src.num_rows is not None else stop)
    workers = (os.cpu_count() or 1) if opts.workers is None else opts.workers
    fetcher = Fetcher(opts.fetch_options(), concurrency=opts.fetch_concurrency)
    bar = tqdm(
        total=total,
        initial=writer.next_row,
        unit="sample",
        disable=progress_disabled(opts.progress),
        desc=f"converting {src.spec}"[:60],
        dynamic_ncols=True,
    )
    with bar, Pipeline(decode_sample, workers, fetcher, opts.fetch_concurrency, _canary(columns.media)) as pipe:
        for task, outcome in pipe.map(_tasks(src, columns, opts, writer)):
            _record(writer, task, outcome, opts)
            bar.update(1)
            bar.set_postfix(failed=writer.failed, refresh=False)


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


def _tasks(src: Source, columns: ColumnPlan, opts: ConvertOptions, writer: StoreWriter) -> Iterator[Task]:
    image, audio = opts.image_options(), opts.audio_options()
    for row, values in src.rows(writer.next_row, opts.limit):
        key = "?"
        try:
            ref = media_of(values, columns, src.base_dir)
            key = ref.key
            text = {"caption": None, "captions": captions_of(values, columns), **kept_of(values, columns)}
            clip = clip_of(values, columns)
        except SampleError as exc:
            yield Task(row, key, "error", exc, (), None)
            continue
        text["caption"] = text["captions"][0]
        yield Task(row, key, ref.kind, ref.value, (columns.media, clip, image, audio), text)


def _record(writer: StoreWriter, task: Task, outcome: Any, opts: ConvertOptions) -> None:
    if isinstance(outcome, SampleError):
        if opts.on_error == "fail":
            raise SampleFailedError(task.row, task.key, outcome)
        writer.add_failure(task.row, task.key, outcome.reason, outcome.detail)
        return
    values = dict(outcome, source_row=task.row)
    writer.add(task.row, values, task.extra)
