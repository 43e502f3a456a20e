"""Train a tiny CLIP-style image-text model from a tensorstore_ds store, on CPU.

The part to copy is :func:`make_loader` (how a store feeds a training loop) and
the loop in :func:`train`. Without ``--store`` it makes a small sample image
folder, converts it once (later runs reuse the store) and trains on that::

    python tools/train_example.py                      # sample data, 30 steps
    python tools/train_example.py --store stores/pixmo --steps 200
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

import tensorstore_ds as tsds

BUCKETS = 2**14  # hashed vocabulary: no tokenizer to build or ship
DIM = 64


class ImageEncoder(nn.Module):
    """A tiny CNN: uint8 (B, 3, H, W) in, one unit-length embedding per image out."""

    def __init__(self, dim: int = DIM) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.AvgPool2d(4),  # 224 -> 56: cheap enough for a CPU example
            nn.Conv2d(3, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(64, dim),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().div_(127.5).sub_(1.0)  # the store keeps raw uint8 pixels
        return F.normalize(self.net(x), dim=-1)


class TextEncoder(nn.Module):
    """Mean of hashed word embeddings: captions in, one unit-length embedding each out."""

    def __init__(self, dim: int = DIM) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(BUCKETS, dim, mode="mean")
        self.proj = nn.Linear(dim, dim)

    def forward(self, captions: list[str]) -> torch.Tensor:
        ids, offsets = [], []
        for caption in captions:
            offsets.append(len(ids))  # crc32, not hash(): the same ids in every process
            ids += [zlib.crc32(w.encode()) % BUCKETS for w in re.findall(r"\w+", caption.lower())] or [0]
        return F.normalize(self.proj(self.bag(torch.tensor(ids), torch.tensor(offsets))), dim=-1)


def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE: image i should pick caption i out of the batch, and back."""
    logits = logit_scale.exp() * image_emb @ text_emb.T
    target = torch.arange(len(logits))
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def make_loader(store: Path, batch_size: int, workers: int) -> DataLoader:
    """The integration: a store served from shared memory, shuffled chunk by chunk."""
    ds = tsds.TensorStoreDataset(store, fields=["image", "caption"], progress=False)
    return DataLoader(
        ds,
        batch_size=batch_size,
        sampler=tsds.ChunkShuffleSampler(ds),
        collate_fn=tsds.collate,  # one gather per batch, no per-item copies
        num_workers=workers,
        persistent_workers=workers > 0,
        drop_last=True,
    )


def sample_store(workdir: Path, count: int) -> Path:
    """Make ``count`` sample photos with captions and convert them (once) into a store."""
    from tensorstore_ds.demo.samples import make_image_folder

    folder, store = workdir / f"images-{count}", workdir / f"store-{count}"
    if not (folder / "metadata.jsonl").is_file():
        make_image_folder(folder, count, sizes=((320, 240), (240, 320)))
        recaption(folder)
    tsds.convert(str(folder), store, image_column="file_name")  # returns at once when already done
    return store


def recaption(folder: Path) -> None:
    """Give the sample photos captions their pixels support (which colour dominates each half)."""
    from PIL import Image

    colours, lines = ("reddish", "greenish", "bluish"), []
    for line in (folder / "metadata.jsonl").read_text().splitlines():
        row = json.loads(line)
        rgb = np.asarray(Image.open(folder / row["file_name"]).convert("RGB").resize((32, 32)), np.float32)
        left, right = (colours[int(half.mean((0, 1)).argmax())] for half in (rgb[:, :16], rgb[:, 16:]))
        tone = "bright" if rgb.mean() > 127 else "dark"
        lines.append(json.dumps({**row, "caption": f"a {tone} photo, {left} on the left, {right} on the right"}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")


def train(loader: DataLoader, steps: int, lr: float) -> None:
    """Run ``steps`` optimiser steps, printing the loss and samples/s now and then."""
    images, texts = ImageEncoder(), TextEncoder()
    logit_scale = nn.Parameter(torch.tensor(2.66))  # log(1/0.07), as CLIP
    params = [*images.parameters(), *texts.parameters(), logit_scale]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    step, seen, start = 0, 0, time.perf_counter()
    for epoch in itertools.count():
        loader.sampler.set_epoch(epoch)  # a new chunk order every epoch
        for batch in loader:
            loss = clip_loss(images(batch["image"]), texts(batch["caption"]), logit_scale)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step, seen = step + 1, seen + len(batch["caption"])
            if step % 5 == 0 or step == 1:
                rate = seen / (time.perf_counter() - start)
                print(f"step {step:3d}  epoch {epoch}  loss {loss.item():.3f}  {rate:6.0f} samples/s")
            if step == steps:
                return


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", type=Path, help="an image-text store (default: make sample data)")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "tensorstore_ds_train_example")
    parser.add_argument("--samples", type=int, default=384, help="sample photos to make without --store")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--lr", type=float, default=3e-3)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) - args.workers))  # a core per loader worker
    store = args.store or sample_store(args.workdir, args.samples)
    train(make_loader(store, args.batch_size, args.workers), args.steps, args.lr)


if __name__ == "__main__":
    main()
