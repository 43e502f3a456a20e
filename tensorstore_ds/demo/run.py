"""The main job on a built-in sample dataset: convert, load, iterate as training would."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from ..options import cache_root
from ..units import format_bytes


def default_workdir() -> Path:
    """Where the demo puts its sample data and store: ``demo/`` in the cache directory."""
    return cache_root() / "demo"


def run_demo(
    workdir: str | os.PathLike[str] | None = None,
    samples: int = 1000,
    epochs: int = 3,
    memory_budget: Any = "auto",
    batch_size: int = 128,
    num_workers: int = 2,
) -> dict[str, Any]:
    """Convert a sample image-text dataset, then train-iterate over it; print figures.

    Returns
    -------
    dict
        The figures printed: conversion and loading rates, memory, paths.
    """
    from ..conversion.api import convert

    root = Path(workdir) if workdir is not None else default_workdir()
    source, store = root / f"images-{samples}", root / f"store-{samples}"
    if not (source / "metadata.jsonl").exists():
        from .samples import make_image_folder

        print(f"making {samples} sample photos (640x480 to 1024x768 JPEG) in {source} ...")
        make_image_folder(source, samples)
    t0 = time.perf_counter()
    manifest = convert(str(source), store, image_column="file_name")
    convert_s = time.perf_counter() - t0
    print(
        f"converted {manifest.num_samples} samples in {convert_s:.1f} s "
        f"({manifest.counts['failed']} failed) into {store}"
    )
    figures = {"store": str(store), "convert_seconds": convert_s, "samples": manifest.num_samples}
    figures["ram"] = _train(store, memory_budget, epochs, batch_size, num_workers)
    paged_budget = max(1, manifest.arrays["images"].nbytes // 3)
    figures["paged"] = _train(store, paged_budget, 1, batch_size, num_workers)
    print(
        f"store: {store}  (inspect it: tensorstore-ds info {store}; look at it: tensorstore-ds preview {store} -o sheet.png)"
    )
    return figures


def _train(store: Path, budget: Any, epochs: int, batch_size: int, num_workers: int) -> dict[str, Any]:
    import torch
    from torch.utils.data import DataLoader

    from .. import ChunkShuffleSampler, TensorStoreDataset, collate
    from .memory import tree_pss_bytes

    ds = TensorStoreDataset(store, memory_budget=budget, progress=False)
    print(f"opened in {ds.mode} mode: {ds.mode_reason}")
    sampler = ChunkShuffleSampler(ds, seed=0)
    loader = DataLoader(
        ds,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collate,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )
    rates, pss = [], 0
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        t0, seen = time.perf_counter(), 0
        for batch in loader:
            images = batch["image"].float().div_(255)  # what a model's input step does
            seen += len(batch["caption"])
            _ = images.mean()
        rates.append(seen / (time.perf_counter() - t0))
        pss = tree_pss_bytes()
        print(
            f"  epoch {epoch}: {seen} samples, {rates[-1]:,.0f} samples/s, "
            f"PSS of parent + {num_workers} workers {format_bytes(pss)} (data {format_bytes(ds.nbytes)})"
        )
    del loader
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return {"mode": ds.mode, "samples_per_s": rates, "pss": pss, "data_bytes": ds.nbytes}
