"""Benchmark URL fetching: the seed's process pool against :class:`Fetcher`.

A loopback :class:`tests.httpserver.TestServer` answers every request after
``--delay`` seconds (100 ms, like a distant image host) with a JPEG-like
payload. Both approaches download the same ``--n`` URLs; each is timed
``--repeats`` times and the median is reported:

* seed: ``multiprocessing.Pool(os.cpu_count())`` mapping a plain
  ``urllib.request.urlopen(url, timeout=10).read()``, one download at a time
  per worker process, a new connection per URL;
* ours: ``Fetcher(concurrency=64)`` called from a ``ThreadPoolExecutor(64)``,
  sharing one keep-alive connection pool.

Run ``.venv/bin/python tools/bench_fetch.py`` from the repository root.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tensorstore_ds.conversion.fetch import Fetcher  # noqa: E402
from tests.httpserver import Response, TestServer  # noqa: E402


def jpeg_like(size: int) -> bytes:
    """Random bytes framed like a JPEG file (SOI/APP0 header, EOI trailer)."""
    header = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    return header + os.urandom(max(0, size - len(header) - 2)) + b"\xff\xd9"


def seed_download(url: str) -> int:
    """The seed's per-URL download, run inside a pool worker process."""
    return len(urllib.request.urlopen(url, timeout=10).read())


def run_seed(urls: list[str], size: int) -> float:
    """Seconds for the seed's ``multiprocessing.Pool(os.cpu_count())`` approach."""
    start = time.perf_counter()
    with multiprocessing.Pool(os.cpu_count()) as pool:
        sizes = pool.map(seed_download, urls)
    elapsed = time.perf_counter() - start
    if sizes != [size] * len(urls):
        raise RuntimeError("seed approach returned wrong body sizes")
    return elapsed


def run_ours(urls: list[str], size: int, concurrency: int) -> float:
    """Seconds for :class:`Fetcher` driven by a thread pool (fresh connections)."""
    start = time.perf_counter()
    with Fetcher(concurrency=concurrency) as fetcher, ThreadPoolExecutor(concurrency) as pool:
        sizes = [len(body) for body in pool.map(fetcher.fetch, urls)]
    elapsed = time.perf_counter() - start
    if sizes != [size] * len(urls):
        raise RuntimeError("Fetcher returned wrong body sizes")
    return elapsed


def median_rate(run: Callable[[], float], n: int, repeats: int) -> tuple[float, float]:
    """Median seconds over ``repeats`` runs, and the matching URLs per second."""
    seconds = statistics.median(run() for _ in range(repeats))
    return seconds, n / seconds


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400, help="URLs per run (default 400)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per approach (median)")
    parser.add_argument("--delay", type=float, default=0.1, help="server delay per request, s")
    parser.add_argument("--size", type=int, default=30_000, help="payload bytes (default 30000)")
    parser.add_argument("--concurrency", type=int, default=64, help="Fetcher threads (default 64)")
    parser.add_argument("--target", type=float, default=10.0, help="minimum ours/seed ratio")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run both approaches and print URLs/s and the speed-up; 1 if below target."""
    args = parse_args(argv)
    payload = jpeg_like(args.size)
    with TestServer(delay=args.delay) as server:
        server.route("/img/", Response(200, payload, {"Content-Type": "image/jpeg"}), prefix=True)
        urls = [f"{server.url}/img/{i:06d}.jpg" for i in range(args.n)]
        print(
            f"bench_fetch: {args.n} URLs of {len(payload)} bytes, server delay "
            f"{args.delay * 1000:.0f} ms, median of {args.repeats} runs, {os.cpu_count()} CPUs"
        )
        seed_s, seed_rate = median_rate(lambda: run_seed(urls, len(payload)), args.n, args.repeats)
        print(f"  seed  Pool({os.cpu_count()}) + urlopen :  {seed_rate:8.1f} URLs/s  ({seed_s:.2f} s)")
        ours_s, ours_rate = median_rate(lambda: run_ours(urls, len(payload), args.concurrency), args.n, args.repeats)
        print(f"  ours  Fetcher + {args.concurrency} threads:  {ours_rate:8.1f} URLs/s  ({ours_s:.2f} s)")
    ratio = ours_rate / seed_rate
    verdict = "ok" if ratio >= args.target else "BELOW TARGET"
    print(f"  ratio ours/seed: {ratio:.1f}x (target >= {args.target:g}x: {verdict})")
    return 0 if ratio >= args.target else 1


if __name__ == "__main__":
    sys.exit(main())
