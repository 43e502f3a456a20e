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

``--stall`` measures whole conversions instead (``convert`` of a Parquet file
of image URLs, ``--workers`` decode processes): ``--n`` URLs spread over
``--hosts`` loopback addresses (127.0.0.1, 127.0.0.2, ...), each answering
after ``--delay`` with one of a few photo-like JPEGs, converted once as they
are and once with ``--stall-fraction`` of them stalling (never answering, so
they fail at the deadline). The two conditions alternate, ``--repeats`` times
each; the median throughputs and their ratio are printed (target >= 0.8x):
``.venv/bin/python tools/bench_fetch.py --stall``.
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
from tests.httpserver import Request, Response, TestServer  # noqa: E402

STALL = "/stall/"


class LoopbackWeb:
    """Servers on ``hosts`` loopback addresses answering ``/img/<i>.jpg`` after ``delay`` s; ``/stall/`` never.

    Parameters
    ----------
    hosts
        Servers, on 127.0.0.1, 127.0.0.2, ... (all loopback on Linux).
    delay
        Seconds before each answer.
    photos
        Distinct photo-like JPEGs served in turn (``(width, height)`` each).
    """

    def __init__(self, hosts: int, delay: float, photos: int = 16, size: tuple[int, int] = (640, 480)) -> None:
        import io

        import numpy as np
        from PIL import Image

        from tensorstore_ds.demo.samples import photo

        rng = np.random.default_rng(0)
        self.photos = []
        for _ in range(photos):
            buf = io.BytesIO()
            Image.fromarray(photo(rng, *size)).save(buf, "JPEG", quality=90)
            self.photos.append(buf.getvalue())
        self.servers = [TestServer(delay=delay, host=f"127.0.0.{i + 1}") for i in range(hosts)]
        for server in self.servers:
            server.route("/img/", self._photo, prefix=True)
            server.route(STALL, Response.never(), prefix=True)

    def _photo(self, request: Request) -> Response:
        i = int(request.path.rsplit("/", 1)[1].split(".")[0])
        return Response(200, self.photos[i % len(self.photos)], {"Content-Type": "image/jpeg"})

    def urls(self, n: int, stall_fraction: float = 0.0) -> list[str]:
        """``n`` URLs, row i on host i % hosts; every ``1/stall_fraction``-th one (from a third in) stalls."""
        every = round(1 / stall_fraction) if stall_fraction > 0 else 0
        out = []
        for i in range(n):
            server = self.servers[i % len(self.servers)]
            stalls = every and i % every == every // 3
            out.append(f"{server.url}{STALL if stalls else '/img/'}{i}.jpg")
        return out

    def __enter__(self) -> LoopbackWeb:
        return self

    def __exit__(self, *exc: object) -> None:
        for server in self.servers:
            server.close()


def write_url_table(path: Path, urls: list[str]) -> Path:
    """A Parquet file with ``url`` and ``caption`` columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"url": urls, "caption": [f"photo {i}" for i in range(len(urls))]}), path)
    return path


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


def convert_seconds(source: Path, out: Path, **options: object) -> tuple[float, int]:
    """Seconds for one ``convert`` of ``source`` into a fresh ``out``, and the samples it converted."""
    from tensorstore_ds.conversion.api import convert

    start = time.perf_counter()
    manifest = convert(source, out, image_column="url", overwrite=True, progress=False, **options)  # type: ignore[arg-type]
    return time.perf_counter() - start, manifest.num_samples


def run_stall(args: argparse.Namespace) -> int:
    """Conversions with and without stalled URLs, alternating; the median rates and their ratio."""
    import tempfile

    options = {"workers": args.workers, "fetch_concurrency": args.concurrency, "timeout": args.timeout}
    options |= {"deadline": args.deadline, "retries": args.retries}
    with tempfile.TemporaryDirectory() as tmp, LoopbackWeb(args.hosts, args.delay) as web:
        sources = {
            "no stalls": write_url_table(Path(tmp) / "plain.parquet", web.urls(args.n)),
            f"{args.stall_fraction:.0%} stalling": write_url_table(
                Path(tmp) / "stall.parquet", web.urls(args.n, args.stall_fraction)
            ),
        }
        print(
            f"bench_fetch --stall: convert {args.n} URLs over {args.hosts} loopback hosts, {args.delay * 1000:.0f} ms "
            f"per answer, {len(web.photos[0]) // 1000} KB 640x480 JPEGs, workers={args.workers}, "
            f"fetch_concurrency={args.concurrency}, timeout={args.timeout}s deadline={args.deadline}s "
            f"retries={args.retries}; median of {args.repeats}, {os.cpu_count()} CPUs"
        )
        seconds: dict[str, list[float]] = {name: [] for name in sources}
        for _ in range(args.repeats):
            for name, source in sources.items():
                elapsed, done = convert_seconds(source, Path(tmp) / "out", **options)
                seconds[name].append(elapsed)
                print(f"    {name:14s} {elapsed:6.2f} s  ({done} converted)", flush=True)
    rates = {name: args.n / statistics.median(values) for name, values in seconds.items()}
    for name, rate in rates.items():
        print(f"  {name:14s} {rate:8.1f} rows/s  (median {statistics.median(seconds[name]):.2f} s)")
    plain, stalled = rates.values()
    ratio = stalled / plain
    verdict = "ok" if ratio >= args.stall_target else "BELOW TARGET"
    print(f"  ratio stalls/no stalls: {ratio:.2f}x (target >= {args.stall_target:g}x: {verdict})")
    return 0 if ratio >= args.stall_target else 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400, help="URLs per run (default 400)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per approach (median)")
    parser.add_argument("--delay", type=float, default=0.1, help="server delay per request, s")
    parser.add_argument("--size", type=int, default=30_000, help="payload bytes (default 30000)")
    parser.add_argument("--concurrency", type=int, default=64, help="Fetcher threads (default 64)")
    parser.add_argument("--target", type=float, default=10.0, help="minimum ours/seed ratio")
    stall = parser.add_argument_group("--stall: whole conversions with and without stalled URLs")
    stall.add_argument("--stall", action="store_true", help="run the stall benchmark instead")
    stall.add_argument("--stall-fraction", type=float, default=0.01, help="URLs that never answer (default 0.01)")
    stall.add_argument("--hosts", type=int, default=8, help="loopback hosts the URLs are spread over")
    stall.add_argument("--workers", type=int, default=2, help="decode processes (default 2)")
    stall.add_argument("--timeout", type=float, default=2.0, help="convert --timeout (default 2)")
    stall.add_argument("--deadline", type=float, default=3.0, help="convert --deadline (default 3)")
    stall.add_argument("--retries", type=int, default=1, help="convert --retries (default 1)")
    stall.add_argument("--stall-target", type=float, default=0.8, help="minimum stalls/no-stalls ratio")
    args = parser.parse_args(argv)
    if args.stall and "--n" not in (argv if argv is not None else sys.argv):
        args.n = 4000
    return args


def main(argv: list[str] | None = None) -> int:
    """Run both approaches and print URLs/s and the speed-up; 1 if below target."""
    args = parse_args(argv)
    if args.stall:
        return run_stall(args)
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
