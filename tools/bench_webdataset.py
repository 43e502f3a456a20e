"""Reading WebDataset shards: our streamed reader against plain ``tarfile`` and ``datasets``' builder.

Writes ``--shards`` img2dataset-style shards (``key.jpg`` of noise, so it does
not compress, ``key.txt``, ``key.json``) into a temporary directory, then reads
every sample ``--runs`` times with

- ``tarfile``: the baseline, ``tarfile.open(mode="r|*")`` reading every member's
  bytes, no grouping (the least any tar reader must do);
- ``ours (file)``: :func:`tensorstore_ds.conversion.webdataset.iter_rows` on the
  local shards (grouping, JSON parsing, the end-of-archive check);
- ``ours (http)``: the same shards from a loopback HTTP server, one streamed GET each;
- ``datasets``: ``load_dataset("webdataset", data_files=..., streaming=True)``
  with the image column cast to ``decode=False`` (the peer).

It prints the median seconds, samples/s and MB/s of each, and the ratio to the
``tarfile`` baseline measured in the same run.

Run: ``.venv/bin/python tools/bench_webdataset.py`` (about 30 s).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tensorstore_ds.conversion.webdataset import iter_rows  # noqa: E402
from tests.httpserver import TestServer  # noqa: E402


def write_shards(folder: Path, shards: int, per_shard: int) -> int:
    """img2dataset-style shards of 64x64 noise JPEGs; returns the bytes written."""
    rng = np.random.default_rng(0)
    total = 0
    for shard in range(shards):
        path = folder / f"{shard:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(per_shard):
                key = f"{shard:05d}{i:04d}"
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG", quality=95)
                meta = {"url": f"https://example.com/{key}.jpg", "caption": f"noise {key}", "key": key}
                for ext, data in (("jpg", buf.getvalue()), ("json", json.dumps(meta).encode()), ("txt", meta["caption"].encode())):  # fmt: skip
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        total += path.stat().st_size
    return total


def read_tarfile(shards: list[str]) -> int:
    count = 0
    for shard in shards:
        with open(shard, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            for member in tar:
                tar.extractfile(member).read()  # type: ignore[union-attr]
                count += member.name.endswith(".jpg")
    return count


def read_ours(shards: list[str]) -> int:
    return sum(1 for row in iter_rows(shards) if "jpg" in row)


def read_datasets(shards: list[str]) -> int:
    import datasets

    ds = datasets.load_dataset("webdataset", data_files={"train": shards}, split="train", streaming=True)
    ds = ds.cast_column("jpg", datasets.Image(decode=False))
    return sum(1 for row in ds if row["jpg"])


def median_seconds(read: Callable[[list[str]], int], shards: list[str], expected: int, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        got = read(shards)
        times.append(time.perf_counter() - start)
        assert got == expected, (read.__name__, got, expected)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--per-shard", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp, TestServer() as server:
        folder = Path(tmp)
        size = write_shards(folder, args.shards, args.per_shard)
        server.serve_dir(folder, "/s/")
        local = sorted(str(p) for p in folder.glob("*.tar"))
        urls = [server.url_for(f"/s/{Path(p).name}") for p in local]
        n = args.shards * args.per_shard
        print(f"{args.shards} shards, {n} samples, {size / 2**20:.1f} MiB; medians of {args.runs} runs")
        cases = [
            ("tarfile", read_tarfile, local),
            ("ours (file)", read_ours, local),
            ("ours (http)", read_ours, urls),
            ("datasets", read_datasets, local),
        ]
        base = None
        for name, read, shards in cases:
            seconds = median_seconds(read, shards, n, args.runs)
            base = base or seconds
            print(
                f"{name:12s} {seconds:7.3f} s  {n / seconds:9.0f} samples/s  {size / 2**20 / seconds:7.1f} MB/s  "
                f"x{seconds / base:.2f} of tarfile"
            )


if __name__ == "__main__":
    main()
