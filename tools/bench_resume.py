"""Benchmark: restoring a mid-epoch checkpoint against starting the epoch, measured in the same run.

    .venv/bin/python tools/bench_resume.py [--samples 20000] [--batch 256] [--at 0.9] [--repeats 11]

Builds (once, cached in --workdir) a store of N random 224x224 images with the real store
writer (tools/bench_dataset.py's builder), then measures, as medians of --repeats runs:

- the sampler alone: time to the first index of a fresh epoch, against the first index after
  ``load_state_dict`` of a checkpoint at --at of the epoch (RAM-mode window: all chunks, and
  paged windows), and what skipping by iterating (torchdata's fallback) costs for comparison;
- a resize: a RAM-mode checkpoint (one window) of one rank restored on two ranks in paged
  windows, which re-splits the unseen samples (against a fresh paged epoch on two ranks);
- a torchdata StatefulDataLoader in paged mode with 0 and 2 workers: time to the first batch
  of a fresh epoch against the first batch after ``load_state_dict`` at --at, and the time of
  one batch in steady state (O(1) restore means the difference is well under one batch).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_dataset import build_store  # noqa: E402

from tensorstore_ds import ChunkShuffleSampler, TensorStoreDataset, collate  # noqa: E402
from tensorstore_ds.units import format_bytes  # noqa: E402


def seconds(run: Callable[[], Any]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def paired(fresh: Callable[[], Any], restored: Callable[[], Any], repeats: int) -> dict[str, float]:
    """Medians of both, run alternately (the machine's drift hits both alike), and of their paired difference."""
    a, b = [], []
    for _ in range(repeats):
        a.append(seconds(fresh))
        b.append(seconds(restored))
    return {
        "fresh_s": statistics.median(a),
        "restored_s": statistics.median(b),
        "extra_s": statistics.median(y - x for x, y in zip(a, b)),
    }


def bench_sampler(ds: Any, args: argparse.Namespace, window: int | None, out: dict[str, Any], name: str) -> None:
    """First index of a fresh epoch, after a restore at --at, and after skipping by iteration."""
    sampler = ChunkShuffleSampler(ds, seed=0, window_chunks=window)
    sampler.set_epoch(1)
    position = int(len(sampler) * args.at)
    state = sampler.state_at(position, 1)

    def fresh() -> int:
        s = ChunkShuffleSampler(ds, seed=0, window_chunks=window)
        s.set_epoch(1)
        return next(iter(s))

    def restored() -> int:
        s = ChunkShuffleSampler(ds, seed=0, window_chunks=window)
        s.load_state_dict(state)
        return next(iter(s))

    def skipped() -> int:
        s = ChunkShuffleSampler(ds, seed=0, window_chunks=window)
        s.set_epoch(1)
        return next(itertools.islice(iter(s), position, None))

    assert restored() == skipped()
    read_ahead = {}
    for label, run in (("restored", restored), ("skip_by_iterating", skipped)):
        calls: list[int] = []
        original = ds.prefetch_chunks
        ds.prefetch_chunks = lambda chunks: calls.append(len(chunks))
        try:
            run()
        finally:
            ds.prefetch_chunks = original
        read_ahead[f"{label}_chunks_read_ahead"] = sum(calls)
    out[name] = {
        **read_ahead,
        "window_chunks": sampler.window,
        **paired(fresh, restored, args.repeats),
        "skip_by_iterating_s": statistics.median(seconds(skipped) for _ in range(args.repeats)),
    }


def bench_resize(ds: Any, args: argparse.Namespace, chunks: int, out: dict[str, Any]) -> None:
    """A RAM-mode checkpoint (one window) of one rank restored on two ranks in paged windows (a re-split)."""
    saved = ChunkShuffleSampler(ds, seed=0, window_chunks=chunks)
    saved.set_epoch(1)
    state = saved.state_at(int(len(saved) * args.at), 1)

    def fresh() -> int:
        s = ChunkShuffleSampler(ds, seed=0, rank=1, world_size=2)
        s.set_epoch(1)
        return next(iter(s))

    def restored() -> int:
        s = ChunkShuffleSampler(ds, seed=0, rank=1, world_size=2)
        s.load_state_dict(state)
        return next(iter(s))

    out["sampler_resize_ram_to_paged"] = {"window_chunks": chunks, **paired(fresh, restored, args.repeats)}


def bench_loader(ds: Any, args: argparse.Namespace, workers: int, out: dict[str, Any]) -> None:
    """Time to the first batch, fresh and restored, with a StatefulDataLoader; and one steady batch."""
    from torchdata.stateful_dataloader import StatefulDataLoader

    def loader() -> tuple[ChunkShuffleSampler, Any]:
        sampler = ChunkShuffleSampler(ds, seed=0)
        sampler.set_epoch(1)
        kw: dict[str, Any] = {"num_workers": workers, "multiprocessing_context": "fork" if workers else None}
        return sampler, StatefulDataLoader(ds, batch_size=args.batch, sampler=sampler, collate_fn=collate, **kw)

    sampler, first = loader()
    batches = len(sampler) // args.batch
    it = iter(first)
    steady = []
    for k in range(int(batches * args.at)):
        start = time.perf_counter()
        next(it)
        if k >= 3:
            steady.append(time.perf_counter() - start)
    state = first.state_dict()
    del it, first

    def fresh() -> None:
        next(iter(loader()[1]))

    def restored() -> None:
        _, resumed = loader()
        resumed.load_state_dict(state)
        next(iter(resumed))

    out[f"loader_{workers}_workers"] = {
        "batches_before_checkpoint": int(batches * args.at),
        "one_batch_s": statistics.median(steady),
        **paired(fresh, restored, args.repeats),
    }


def report(out: dict[str, Any]) -> None:
    print(f"store: {out['samples']} samples, {format_bytes(out['bytes'])}; checkpoint at {out['at']:.0%}")
    r = out["sampler_resize_ram_to_paged"]
    print(
        f"sampler_resize_ram_to_paged (1 rank, {r['window_chunks']} chunks -> 2 ranks, paged windows): first index "
        f"fresh {r['fresh_s'] * 1e3:.2f} ms, restored {r['restored_s'] * 1e3:.2f} ms "
        f"(x{r['restored_s'] / r['fresh_s']:.2f})"
    )
    for name in ("sampler_ram_window", "sampler_paged_window"):
        r = out[name]
        print(
            f"{name} ({r['window_chunks']} chunks): first index fresh {r['fresh_s'] * 1e3:.2f} ms, "
            f"restored {r['restored_s'] * 1e3:.2f} ms (x{r['restored_s'] / r['fresh_s']:.2f}, "
            f"paired difference {r['extra_s'] * 1e3:+.2f} ms); "
            f"skipping by iteration {r['skip_by_iterating_s'] * 1e3:.2f} ms; chunks read ahead to reach the "
            f"position: {r['restored_chunks_read_ahead']} restored, {r['skip_by_iterating_chunks_read_ahead']} skipping"
        )
    for name in ("loader_0_workers", "loader_2_workers"):
        r = out[name]
        print(
            f"{name} (paged): first batch fresh {r['fresh_s'] * 1e3:.1f} ms, restored {r['restored_s'] * 1e3:.1f} ms "
            f"(x{r['restored_s'] / r['fresh_s']:.2f}); one batch {r['one_batch_s'] * 1e3:.1f} ms; "
            f"restore extra (median paired difference) {r['extra_s'] * 1e3:+.1f} ms = "
            f"{r['extra_s'] / r['one_batch_s']:+.2f} batches"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--at", type=float, default=0.9, help="the checkpoint's position, a fraction of the epoch")
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--budget", default="512MiB", help="paged mode's memory budget (sets the window)")
    parser.add_argument("--workdir", default=str(ROOT / "bench-out" / "resume"))
    args = parser.parse_args()
    warnings.filterwarnings("ignore", "'set_vital' is deprecated")  # torchdata 0.11 on torch >= 2.9
    work = Path(args.workdir)
    store = work / f"store-{args.samples}"
    work.mkdir(parents=True, exist_ok=True)
    build_store(store, args.samples)
    ds = TensorStoreDataset(store, fields=["image"], mode="paged", memory_budget=args.budget, progress=False)
    out: dict[str, Any] = {"samples": len(ds), "bytes": ds.nbytes, "at": args.at}
    chunks = -(-len(ds) // ds.chunk_rows)
    bench_sampler(ds, args, chunks, out, "sampler_ram_window")
    bench_sampler(ds, args, None, out, "sampler_paged_window")
    bench_resize(ds, args, chunks, out)
    for workers in (0, 2):
        bench_loader(ds, args, workers, out)
    report(out)
    (work / "bench_resume.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
