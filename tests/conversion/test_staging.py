"""The staging file's slots and the chunk files gathered from them in a decode process."""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tensorstore_ds.conversion.api import convert
from tensorstore_ds.conversion.chunkio import ChunkBuffers, write_chunk_from
from tensorstore_ds.conversion.pipeline import BATCH, Pipeline, Task
from tensorstore_ds.conversion.staging import Stage, StagedRow
from tensorstore_ds.conversion.tasks import keep_freed_memory, process_pool
from tensorstore_ds.errors import SampleError
from tensorstore_ds.format.hashing import hash_file
from tensorstore_ds.format.layout import ArraySpec, write_chunk
from tests.conversion.test_convert import (
    FAST,
    assert_same_store,
    local_images,
    raised_without_hanging,
    write_parquet,
)

ROW = (4, 3)


def make_stage(tmp_path: Path, depth: int) -> Stage:
    return Stage(str(tmp_path / "staging"), depth, "images", ROW, "uint8")


def fill(seed: int) -> dict[str, Any]:
    """A module-level decode: the row is ``seed`` everywhere; odd seeds over 100 are bad samples."""
    if seed > 100 and seed % 2:
        raise SampleError("undecodable-image", f"sample {seed} is bad")
    return {"images": np.full(ROW, seed % 256, np.uint8), "image_size": [seed, seed]}


def tasks(n: int) -> list[Task]:
    return [Task(i, str(i), "bytes", i, (), None) for i in range(n)]


def test_slots_are_lent_and_the_last_given_back_is_taken_first(tmp_path: Path) -> None:
    rows = make_stage(tmp_path, 3).create()
    try:
        assert [rows.take(), rows.take(), rows.take(), rows.take()] == [0, 1, 2, None]
        rows.give_back(2)
        rows.give_back(0)
        assert rows.free == 2 and rows.take() == 0
        row = rows.row(1)
        row.release()
        row.release()  # once only
        assert rows.free == 2
    finally:
        rows.close()


def test_chunk_gathered_from_slots_and_buffer_equals_the_chunk_written_from_memory(tmp_path: Path) -> None:
    stage = make_stage(tmp_path, 8)
    stage.create().close()
    expected = np.stack([np.full(ROW, 10 + i, np.uint8) for i in range(5)])
    slots = {0: 3, 1: 4, 3: 7, 4: 0}  # rows 0-1 in consecutive slots (one read), row 2 in the buffer
    for i, slot in slots.items():
        stage.write(slot, expected[i])
    buffers = ChunkBuffers(tmp_path / "chunks.buf", [("images", ROW, "uint8")], 6)
    buffers.arrays(1)["images"][2] = expected[2]
    spec = ArraySpec("images", (5, *ROW), "uint8", 6)
    offset = buffers.regions[1]["images"][0]
    digest = write_chunk_from(str(buffers.path), offset, tmp_path / "gathered", spec, 0, (stage, list(slots.items())))
    write_chunk(tmp_path / "memory", spec, 0, expected)
    key = spec.chunk_key(0)
    assert (tmp_path / "gathered" / key).read_bytes() == (tmp_path / "memory" / key).read_bytes()
    assert digest == hash_file(tmp_path / "memory" / key)
    buffers.close()


def test_a_consumer_that_releases_rows_uses_few_slots_however_deep_the_stage(tmp_path: Path) -> None:
    used: set[int] = set()
    with Pipeline(fill, 0, lookahead=8, stage=make_stage(tmp_path, 1000)) as pipe:
        for task, outcome in pipe.map(tasks(300)):
            if isinstance(outcome, SampleError):
                continue
            row = outcome["images"]
            assert isinstance(row, StagedRow)
            used.add(row.slot)
            assert np.asarray(row)[0, 0] == task.row % 256
            row.release()
    assert len(used) <= 16, sorted(used)


def test_a_consumer_that_keeps_every_slot_gets_an_error_not_a_hang(tmp_path: Path) -> None:
    kept: list[Any] = []

    def run() -> None:
        with Pipeline(fill, 0, lookahead=8, stage=make_stage(tmp_path, 12)) as pipe:
            kept.extend(outcome for _, outcome in pipe.map(tasks(40)))

    caught = raised_without_hanging(run, "Pipeline.map hung with every staging slot held")
    assert len(kept) == 12
    assert len(caught) == 1 and isinstance(caught[0], RuntimeError)
    assert caught[0].args[0].startswith("all 12 staging slots are held by rows not released")


def test_failed_samples_give_their_slots_back(tmp_path: Path) -> None:
    stage = make_stage(tmp_path, 10)
    with Pipeline(fill, 0, lookahead=8, stage=stage) as pipe:
        outcomes = [
            outcome for _, outcome in pipe.map([Task(i, str(i), "bytes", 101 + 2 * i, (), None) for i in range(50)])
        ]
    assert all(isinstance(o, SampleError) for o in outcomes)


def test_chunks_are_written_here_from_the_slots_when_the_writing_process_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = local_images(tmp_path, 11, bad={5: "img/nope.png"})
    src = write_parquet(tmp_path / "src.parquet", {"image": names, "caption": [f"c{i}" for i in range(11)]})
    convert(src, tmp_path / "w0", **FAST)

    def failing(self: Pipeline, fn: Any, *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        future.set_exception(RuntimeError("the writing process died"))
        return future

    monkeypatch.setattr(Pipeline, "offload", failing)
    convert(src, tmp_path / "w2", **{**FAST, "workers": 2})
    assert_same_store(tmp_path / "w0", tmp_path / "w2")


def faults_per_image(count: int) -> float:
    """In a decode process: minor page faults per decode of a 640x480 JPEG, after a first one."""
    import io
    import resource

    from PIL import Image

    from tensorstore_ds.conversion.decode.image import ImageOptions, decode_image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (480, 640, 3), np.uint8)).save(buf, "JPEG")
    options = ImageOptions(224, "center-crop")
    decode_image(buf.getvalue(), options)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(count):
        decode_image(buf.getvalue(), options)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / count


def test_decode_processes_reuse_freed_image_buffers() -> None:
    pool = process_pool(1)
    try:
        assert pool.submit(keep_freed_memory).result(timeout=120) is True  # glibc: the initializer's call works
        faults = pool.submit(faults_per_image, 20).result(timeout=120)
    finally:
        pool.shutdown()
    assert faults < 100  # 4 KiB pages: under 400 KiB faulted in per image (about 2,100 without)


def slow_fill(seed: int) -> dict[str, Any]:
    """A decode that takes a few milliseconds, in a decode process."""
    import time

    time.sleep(0.003)
    return fill(seed)


def test_samples_waiting_for_busy_decoders_leave_together(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sizes: list[int] = []
    in_flight: list[int] = []
    start_batch = Pipeline._start_batch

    def spy(self: Pipeline, items: list[Any]) -> None:
        sizes.append(len(items))
        in_flight.append(self._batches)
        start_batch(self, items)

    monkeypatch.setattr(Pipeline, "_start_batch", spy)
    with Pipeline(slow_fill, 1, lookahead=400, stage=make_stage(tmp_path, 500)) as pipe:
        rows = 0
        for _, outcome in pipe.map(tasks(300)):
            if not isinstance(outcome, SampleError):
                outcome["images"].release()
            rows += 1
    assert rows == 300 and sum(sizes) == 300
    assert max(in_flight) <= 2  # one batch decoding and one queued, per process
    assert max(sizes) == BATCH and len(sizes) <= 2 * 300 // BATCH
