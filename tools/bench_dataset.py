"""Benchmark: serving a store to PyTorch, against baselines measured in the same run.

    .venv/bin/python tools/bench_dataset.py [--samples 20000] [--batch 256] [--batches 32] [--repeats 5]

Builds (once, cached in --workdir) a store of N random 224x224 images written through the
real store writer, then measures samples/s for random batches (median of --repeats runs;
an epoch is --batches batches, at least 30 so that the start of each epoch counts as it
does in training):

- numpy fancy indexing of the same data in one in-RAM array (the baseline), and memcpy;
- TensorStoreDataset RAM mode in-process (``__getitems__`` + ``collate``);
- RAM mode through a DataLoader with 2 workers (persistent; whole epochs, each with its
  start), paired with an in-process epoch of the same batches right before it: the ratio
  is the median of the pairs' ratios, so the machine's load changes both alike;
  the same epochs gathered in-process by 2 threads (``gather_threads=2``);
  and a plain numpy Dataset with 2 workers;
- 4 workers whose batch rings grow only when they must (the default) against rings that
  take their 3 slots at once (the previous release), in paired epochs;
- the seed-style loader (a list of PIL images, batch converted to a uint8 tensor);
- Hugging Face datasets with an Array3D column, memory-mapped, ``with_format("numpy")``;
- PSS summed over parent + 4 workers (fork and spawn, batch 64 and --batch) against the
  same loader over a 1-sample store: the largest seen during the second epoch, and after it;
- paged mode on a store 3x the budget, cold cache: chunk-local sampler and pure random
  order, against the disk's sequential read bandwidth, with the peak RSS.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchlib import median_rate  # noqa: E402

from tensorstore_ds import ChunkShuffleSampler, TensorStoreDataset, collate  # noqa: E402
from tensorstore_ds.demo.memory import rss_bytes, tree_pss_bytes  # noqa: E402
from tensorstore_ds.units import format_bytes  # noqa: E402

SIZE = 224


def build_store(path: Path, n: int, seed: int = 0) -> None:
    """A store of ``n`` random images written by the real writer (skipped if present)."""
    from tensorstore_ds.conversion.writer import Column, Plan, StoreWriter
    from tensorstore_ds.format.layout import chunk_rows_for

    if (path / "manifest.json").exists():
        return
    row = (SIZE, SIZE, 3)
    rows = chunk_rows_for(int(np.prod(row)), 16 * 2**20)
    plan = Plan(
        (
            Column("images", row, "uint8", True),
            Column("image_size", (2,), "int32", False),
            Column("source_row", (), "int64", False),
        ),
        {"caption": "utf-8"},
        rows,
        {"media": "image", "image_size": SIZE, "chunk_rows": rows},
        {"kind": "bench", "fingerprint": str(n)},
    )
    writer = StoreWriter.open(path, plan)
    rng = np.random.default_rng(seed)
    block = rng.integers(0, 256, (64, *row), dtype=np.uint8)
    for i in range(n):
        writer.add(
            i,
            {
                "images": block[i % 64] ^ np.uint8(i % 251),
                "image_size": np.array([480, 640], np.int32),
                "source_row": i,
            },
            {"caption": f"a random picture number {i}"},
        )
    writer.finish({"rows_read": n})


def batches(n: int, batch: int, count: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, n, batch) for _ in range(count)]


def bench_baselines(
    ds: TensorStoreDataset, idxs: list[np.ndarray], args: argparse.Namespace, out: dict[str, Any]
) -> None:
    """numpy fancy indexing of the data in one in-RAM array of its own, and memcpy."""
    data = np.array(ds._arrays["images"].data)
    out["numpy_fancy_index"] = median_rate(lambda: sum(len(data[i]) for i in idxs), args.repeats)
    src = data[: args.batch].copy()
    dst = np.empty_like(src)
    out["memcpy"] = median_rate(lambda: sum(np.copyto(dst, src) or len(src) for _ in idxs), args.repeats)


def bench_in_process(store: Path, args: argparse.Namespace, out: dict[str, Any]) -> None:
    ds = TensorStoreDataset(store, mode="ram", progress=False)
    idxs = batches(len(ds), args.batch, args.batches, 1)
    bench_baselines(ds, idxs, args, out)
    out["ram_in_process"] = median_rate(
        lambda: sum(len(collate(ds.__getitems__(i))["index"]) for i in idxs), args.repeats
    )
    out["hf_datasets_array3d"] = bench_hf(ds, args)


class SeedStyleDataset:
    """What the seed's InMemoryImageTextDataset holds after pre-loading: PIL images and captions."""

    def __init__(self, images: list[Any], captions: list[str]) -> None:
        self.images, self.captions = images, captions

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": self.images[i], "caption": self.captions[i]}


def seed_collate(batch: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """The seed's collate_in_memory_images: lists of PIL images and captions."""
    return {"images": [b["image"] for b in batch], "captions": [b["caption"] for b in batch]}


def bench_seed_style(ds: TensorStoreDataset, args: argparse.Namespace) -> float:
    """The seed's loader through a DataLoader, each batch turned into a uint8 tensor for the model."""
    import torch
    from PIL import Image
    from torch.utils.data import DataLoader, RandomSampler

    n = min(len(ds), 2000)
    pixels = ds._arrays["images"].data
    seed = SeedStyleDataset(
        [Image.fromarray(np.array(pixels[i])) for i in range(n)], [ds._text["caption"].take([i])[0] for i in range(n)]
    )
    count = args.batch * max(4, args.batches // 2)
    sampler = RandomSampler(seed, num_samples=count, generator=torch.Generator().manual_seed(0))
    loader = DataLoader(seed, batch_size=args.batch, sampler=sampler, collate_fn=seed_collate)

    def run() -> int:
        served = 0
        for batch in loader:
            tensor = torch.stack([torch.from_numpy(np.array(im)) for im in batch["images"]]).permute(0, 3, 1, 2)
            served += len(tensor)
        return served

    return median_rate(run, args.repeats)


def bench_hf(ds: TensorStoreDataset, args: argparse.Namespace) -> float:
    """Hugging Face datasets holding the same arrays (Array3D, memory-mapped, numpy format)."""
    import datasets

    n = min(len(ds), 4000)
    cache = Path(args.workdir) / f"hf-array3d-{n}"
    if not cache.exists():
        pixels = ds._arrays["images"].data
        features = datasets.Features(
            {"image": datasets.Array3D((SIZE, SIZE, 3), "uint8"), "caption": datasets.Value("string")}
        )

        def gen() -> Any:
            for i in range(n):
                yield {"image": np.array(pixels[i]), "caption": ds._text["caption"].take([i])[0]}

        datasets.Dataset.from_generator(gen, features=features).save_to_disk(str(cache))
    hf = datasets.load_from_disk(str(cache)).with_format("numpy")
    idxs = batches(n, args.batch, max(4, args.batches // 4), 3)
    return median_rate(lambda: sum(len(hf[i.tolist()]["image"]) for i in idxs), args.repeats)


def make_loader(dataset: Any, args: argparse.Namespace, workers: int, context: str, collate_fn: Any = None) -> Any:
    """A loader over epochs of ``args.batches`` random batches (persistent workers), warmed by one epoch."""
    import torch
    from torch.utils.data import DataLoader, RandomSampler

    sampler = RandomSampler(dataset, num_samples=args.batch * args.batches, generator=torch.Generator().manual_seed(0))
    loader = DataLoader(
        dataset,
        batch_size=args.batch,
        sampler=sampler,
        num_workers=workers,
        multiprocessing_context=context if workers else None,
        collate_fn=collate_fn,
        persistent_workers=workers > 0,
        prefetch_factor=2 if workers else None,
    )
    for _ in loader:  # start the workers and fill their rings before timing
        pass
    return loader


def epoch(loader: Any) -> int:
    return sum(len(b["index"] if isinstance(b, dict) else b) for b in loader)


def loader_rate(dataset: Any, args: argparse.Namespace, workers: int, context: str, collate_fn: Any = None) -> float:
    loader = make_loader(dataset, args, workers, context, collate_fn)
    return median_rate(lambda: epoch(loader), args.repeats)


def paired_worker_ratio(ds: TensorStoreDataset, args: argparse.Namespace, out: dict[str, Any]) -> None:
    """Whole loader epochs (2 workers) against in-process epochs of as many batches, back to back."""
    import statistics

    loader = make_loader(ds, args, 2, "fork", collate)
    threaded = TensorStoreDataset(ds.path, mode="ram", progress=False, gather_threads=2)
    idxs = batches(len(ds), args.batch, args.batches, 5)
    ratios, rates, thread_ratios, thread_rates = [], [], [], []
    for _ in range(max(args.repeats, 7)):
        start = time.perf_counter()
        served = sum(len(collate(ds.__getitems__(i))["index"]) for i in idxs)
        alone = served / (time.perf_counter() - start)
        start = time.perf_counter()
        served = epoch(loader)
        rates.append(served / (time.perf_counter() - start))
        ratios.append(rates[-1] / alone)
        start = time.perf_counter()
        served = sum(len(collate(threaded.__getitems__(i))["index"]) for i in idxs)
        thread_rates.append(served / (time.perf_counter() - start))
        thread_ratios.append(thread_rates[-1] / alone)
    out["ram_loader_2_workers"] = statistics.median(rates)
    out["workers_over_in_process_paired"] = statistics.median(ratios)
    out["ram_2_gather_threads"] = statistics.median(thread_rates)
    out["threads_over_in_process_paired"] = statistics.median(thread_ratios)


class NumpyDataset:
    """The plain baseline: a Dataset over an in-RAM numpy array, one item at a time."""

    def __init__(self, data: np.ndarray) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> Any:
        import torch

        return {"index": i, "image": torch.from_numpy(self.data[i])}


def rings_ratio(ds: TensorStoreDataset, args: argparse.Namespace, out: dict[str, Any]) -> None:
    """4 workers: rings at their floors (the default) against rings that take 3 slots at once, paired epochs."""
    import statistics

    from tensorstore_ds.serve import ring

    default_floor = ring.worker_floor
    try:
        ring.worker_floor = lambda worker_id: ring.MAX_SLOTS[True]  # forked workers see it: the old rings
        eager = make_loader(ds, args, 4, "fork", collate)
    finally:
        ring.worker_floor = default_floor
    floors = make_loader(ds, args, 4, "fork", collate)
    ratios = []
    for r in range(max(args.repeats, 7)):
        pair = [(floors, 0), (eager, 1)] if r % 2 == 0 else [(eager, 1), (floors, 0)]
        rates = [0.0, 0.0]
        for loader, k in pair:
            start = time.perf_counter()
            rates[k] = epoch(loader) / (time.perf_counter() - start)
        ratios.append(rates[0] / rates[1])
    out["rings_at_floors_over_3_slots_4_workers"] = statistics.median(ratios)


def bench_workers(store: Path, args: argparse.Namespace, out: dict[str, Any]) -> None:
    ds = TensorStoreDataset(store, mode="ram", progress=False)
    out["ram_loader_0_workers"] = loader_rate(ds, args, 0, "fork", collate)
    paired_worker_ratio(ds, args, out)
    rings_ratio(ds, args, out)
    plain = NumpyDataset(np.array(ds._arrays["images"].data))
    out["numpy_dataset_0_workers"] = loader_rate(plain, args, 0, "fork")
    out["numpy_dataset_2_workers"] = loader_rate(plain, args, 2, "fork")
    out["seed_style"] = bench_seed_style(ds, args)


def pss_child(store: str, context: str, batch: int) -> None:
    """Run in a subprocess: a 4-worker loader over ``store``; print the tree's PSS (peak in epoch 2, and after)."""
    from torch.utils.data import DataLoader

    ds = TensorStoreDataset(store, mode="ram", progress=False)
    loader = DataLoader(
        ds,
        batch_size=batch,
        shuffle=True,
        num_workers=4,
        collate_fn=collate,
        multiprocessing_context=context,
        persistent_workers=True,
    )
    for _b in loader:
        pass
    peak = 0
    for i, _b in enumerate(loader):
        if i % 8 == 4:
            peak = max(peak, tree_pss_bytes())
    del _b
    gc.collect()
    end = tree_pss_bytes()
    print(json.dumps({"pss": end, "peak": max(peak, end), "data": ds.nbytes}))


def bench_memory(store: Path, tiny: Path, args: argparse.Namespace, out: dict[str, Any]) -> None:
    """PSS of a 4-worker loader over the store minus over a 1-sample store, at two batch sizes.

    The excess is the data plus the batches in flight (4 workers x prefetch 2, plus those held);
    the small batch size shows how much of it is batch buffers rather than copies of the data.
    """
    for context in ("fork", "spawn"):
        for batch in (args.batch, 64):
            got = {}
            for name, path in (("store", store), ("tiny", tiny)):
                cmd = [sys.executable, __file__, "--pss-child", str(path), context, str(batch)]
                lines = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()
                got[name] = json.loads(lines[-1])
            excess = got["store"]["pss"] - got["tiny"]["pss"]
            out[f"pss_excess_over_data_{context}_b{batch}"] = excess / got["store"]["data"]
            out[f"pss_{context}_b{batch}"] = got["store"]["pss"]
            out[f"pss_peak_excess_over_data_{context}_b{batch}"] = (got["store"]["peak"] - got["tiny"]["peak"]) / got[
                "store"
            ]["data"]


def drop_cache(store: Path) -> None:
    for path in store.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            os.close(fd)


def bench_paged(store: Path, args: argparse.Namespace, out: dict[str, Any]) -> None:
    """Each paged run is a fresh subprocess, so its RSS is the dataset's own."""
    for name in ("chunk_local", "random"):
        cmd = [sys.executable, __file__, "--paged-child", str(store), name, str(args.batch)]
        got = json.loads(
            subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        )
        out["disk_sequential_MBps"] = max(out.get("disk_sequential_MBps", 0), got.pop("disk_sequential_MBps"))
        out.update(got)


def paged_child(store: Path, name: str, batch: int) -> None:
    """Cold-cache paged reading of a store 3x the budget; print rates and RSS growth."""
    from tensorstore_ds import open_store

    spec = open_store(store).manifest.arrays["images"]
    files = [store / spec.chunk_key(k) for k in range(spec.num_chunks)]
    drop_cache(store)
    t0, total = time.perf_counter(), 0
    for path in files:
        with open(path, "rb", buffering=0) as f:
            total += len(f.read())
    disk = total / (time.perf_counter() - t0) / 1e6
    budget = int(total / 3)
    drop_cache(store)
    gc.collect()
    base_rss = rss_bytes()
    ds = TensorStoreDataset(store, mode="paged", memory_budget=budget, progress=False)
    order = (
        list(ChunkShuffleSampler(ds, seed=0))
        if name == "chunk_local"
        else np.random.default_rng(0).permutation(len(ds)).tolist()
    )
    limit = len(order) if name == "chunk_local" else min(len(order), batch * 12)
    t0, peak, served = time.perf_counter(), 0, 0
    for i in range(0, limit, batch):
        served += len(collate(ds.__getitems__(order[i : i + batch]))["index"])
        peak = max(peak, rss_bytes() - base_rss)
    seconds = time.perf_counter() - t0
    row = SIZE * SIZE * 3
    print(
        json.dumps(
            {
                "disk_sequential_MBps": disk,
                "paged_budget": budget,
                f"paged_{name}_samples_per_s": served / seconds,
                f"paged_{name}_MBps": served * row / seconds / 1e6,
                f"paged_{name}_peak_rss": peak,
            }
        )
    )


ROWS = [
    ("numpy fancy index (baseline)", "numpy_fancy_index"),
    ("memcpy of contiguous batches", "memcpy"),
    ("RAM mode, in-process", "ram_in_process"),
    ("RAM mode, DataLoader 0 workers", "ram_loader_0_workers"),
    ("RAM mode, DataLoader 2 workers", "ram_loader_2_workers"),
    ("RAM mode, in-process, 2 gather threads", "ram_2_gather_threads"),
    ("numpy Dataset, DataLoader 0 workers", "numpy_dataset_0_workers"),
    ("numpy Dataset, DataLoader 2 workers", "numpy_dataset_2_workers"),
    ("seed-style loader (PIL list, DataLoader 0 workers)", "seed_style"),
    ("HF datasets Array3D numpy", "hf_datasets_array3d"),
]


def report(out: dict[str, Any]) -> None:
    """Print the rates measured (parts skipped with --skip are left out), then the ratios and memory."""
    base = out["numpy_fancy_index"]
    print(f"\n{'loader':52s} {'samples/s':>12s} {'x baseline':>10s}")
    for name, key in ROWS:
        if key in out:
            print(f"{name:52s} {out[key]:12,.0f} {out[key] / base:10.2f}")
    print(f"\nRAM in-process / memcpy: {out['ram_in_process'] / out['memcpy']:.2f}")
    if "workers_over_in_process_paired" in out:
        print(
            f"RAM 2 workers / RAM in-process, whole epochs of {out['batches']} batches with their start, "
            f"median of back-to-back pairs: {out['workers_over_in_process_paired']:.2f}"
        )
        print(f"RAM 2 gather threads / RAM in-process, same pairs: {out['threads_over_in_process_paired']:.2f}")
        print(
            "4 workers, rings at their floors / rings of 3 slots each, paired epochs: "
            f"{out['rings_at_floors_over_3_slots_4_workers']:.2f}"
        )
        print(
            f"RAM mode / seed-style, both through a DataLoader with 0 workers: "
            f"{out['ram_loader_0_workers'] / out['seed_style']:.1f}x"
        )
    print(f"RAM in-process / HF datasets: {out['ram_in_process'] / out['hf_datasets_array3d']:.1f}x")
    for key in sorted(k for k in out if k.startswith("pss_excess_over_data_")):
        context, batch = key.rsplit("_", 2)[-2:]
        print(
            f"PSS, 4 workers, {context}, batch {batch[1:]}: {format_bytes(out[f'pss_{context}_{batch}'])}; "
            f"excess over a 1-sample store's = {out[key]:.3f}x the data size after the epoch, "
            f"{out[f'pss_peak_excess_over_data_{context}_{batch}']:.3f}x at its peak during it"
        )
    if "disk_sequential_MBps" in out:
        print(
            f"\npaged, budget {format_bytes(out['paged_budget'])}, cold cache; disk sequential "
            f"{out['disk_sequential_MBps']:,.0f} MB/s"
        )
        for name in ("chunk_local", "random"):
            print(
                f"  {name:12s} {out[f'paged_{name}_samples_per_s']:10,.0f} samples/s "
                f"{out[f'paged_{name}_MBps']:8,.0f} MB/s ({out[f'paged_{name}_MBps'] / out['disk_sequential_MBps']:.2f}"
                f" of sequential), peak RSS growth {format_bytes(out[f'paged_{name}_peak_rss'])}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--batches", type=int, default=32, help="batches per epoch (at least 30)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workdir", default=str(ROOT / "bench-out"))
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: workers,memory,paged")
    parser.add_argument("--pss-child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--paged-child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.paged_child:
        paged_child(Path(args.paged_child[0]), args.paged_child[1], int(args.paged_child[2]))
        return
    if args.pss_child:
        pss_child(args.pss_child[0], args.pss_child[1], int(args.pss_child[2]))
        return
    work = Path(args.workdir)
    store, tiny = work / f"store-{args.samples}", work / "store-1"
    build_store(store, args.samples)
    build_store(tiny, 1)
    skip = set(args.skip.split(","))
    out: dict[str, Any] = {"batches": args.batches}
    bench_in_process(store, args, out)
    if "workers" not in skip:
        bench_workers(store, args, out)
    if "memory" not in skip:
        bench_memory(store, tiny, args, out)
    if "paged" not in skip:
        bench_paged(store, args, out)
    report(out)
    (work / "bench_dataset.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
