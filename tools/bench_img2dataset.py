"""Side by side with img2dataset on the same URL list and the same loopback servers, without and with stalls.

img2dataset (the tool users know for URL lists) is installed by this script
into its own virtual environment (default ``/work/bench-venvs/img2dataset``;
it is never a dependency of tensorstore_ds). Both tools get the same settings:
2 processes, 64 download threads, a 5 s timeout, 1 retry, center crop to
224 x 224 (img2dataset with 4 shards per process, so that every process works). The URLs are spread over ``--hosts`` loopback servers
(:class:`bench_fetch.LoopbackWeb`) answering after 100 ms with 640x480
photo-like JPEGs; with ``--stall-fraction`` of them never answering in the
second condition. Each tool runs ``--repeats`` times per condition (alternating);
the median wall times, throughputs and ratios are printed (goal >= 2x):

    .venv/bin/python tools/bench_img2dataset.py
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))

from bench_fetch import LoopbackWeb, convert_seconds, write_url_table  # noqa: E402

VERSION = "1.47.0"


def img2dataset_venv(where: Path) -> Path:
    """The ``img2dataset`` executable of a virtualenv at ``where``, made (once) with pip."""
    exe = where / "bin" / "img2dataset"
    if not exe.exists():
        print(f"installing img2dataset {VERSION} into {where} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(where)], check=True)
        subprocess.run([str(where / "bin" / "pip"), "install", "-q", f"img2dataset=={VERSION}"], check=True)
    return exe


def run_img2dataset(exe: Path, urls: Path, out: Path, args: argparse.Namespace) -> tuple[float, int]:
    """Seconds for one img2dataset run over the URL list, and the images it saved."""
    command = [
        str(exe),
        f"--url_list={urls}",
        "--input_format=txt",
        f"--output_folder={out}",
        "--output_format=files",
        f"--processes_count={args.workers}",
        f"--thread_count={args.threads}",
        f"--number_sample_per_shard={max(1, args.n // (4 * args.workers))}",  # 4 shards per process: all busy
        f"--timeout={args.timeout}",
        f"--retries={args.retries}",
        "--image_size=224",
        "--resize_mode=center_crop",
        "--enable_wandb=False",
        "--incremental_mode=incremental",  # "overwrite" deletes its own _tmp folder in 1.47: start afresh instead
        "--disallowed_header_directives=[]",
    ]
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    elapsed = time.perf_counter() - start
    saved = sum(json.loads(p.read_text()).get("successes", 0) for p in out.glob("*_stats.json"))
    return elapsed, saved


def main(argv: list[str] | None = None) -> int:
    """Both tools, both conditions; 1 if ours is below the goal in either."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="URLs (default 1000)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per tool and condition (median)")
    parser.add_argument("--hosts", type=int, default=8, help="loopback hosts (default 8)")
    parser.add_argument("--delay", type=float, default=0.1, help="server delay per answer, s")
    parser.add_argument("--stall-fraction", type=float, default=0.01, help="URLs that never answer")
    parser.add_argument("--workers", type=int, default=2, help="processes of each tool")
    parser.add_argument("--threads", type=int, default=64, help="download threads of each tool")
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--retries", type=int, default=1)
    parser.add_argument("--venv", type=Path, default=Path("/work/bench-venvs/img2dataset"))
    parser.add_argument("--goal", type=float, default=2.0, help="minimum ours/img2dataset throughput ratio")
    args = parser.parse_args(argv)
    exe = img2dataset_venv(args.venv)
    ours_options = {"workers": args.workers, "fetch_concurrency": args.threads, "timeout": args.timeout}
    ours_options |= {"retries": args.retries, "resize": "center-crop", "image_size": 224}
    print(
        f"bench_img2dataset: {args.n} URLs over {args.hosts} loopback hosts, {args.delay * 1000:.0f} ms per answer; "
        f"both tools: {args.workers} processes, {args.threads} threads, timeout {args.timeout}s, "
        f"{args.retries} retry, center crop 224; median of {args.repeats}, {os.cpu_count()} CPUs"
    )
    failed = False
    with tempfile.TemporaryDirectory() as tmp, LoopbackWeb(args.hosts, args.delay) as web:
        root = Path(tmp)
        for label, fraction in (("no stalls", 0.0), (f"{args.stall_fraction:.0%} stalling", args.stall_fraction)):
            urls = web.urls(args.n, fraction)
            table = write_url_table(root / "urls.parquet", urls)
            (root / "urls.txt").write_text("\n".join(urls) + "\n")
            times: dict[str, list[float]] = {"img2dataset": [], "tensorstore_ds": []}
            for _ in range(args.repeats):
                seconds, saved = run_img2dataset(exe, root / "urls.txt", root / "i2d", args)
                times["img2dataset"].append(seconds)
                print(f"    {label}: img2dataset    {seconds:6.2f} s ({saved} saved)", flush=True)
                seconds, saved = convert_seconds(table, root / "ours", **ours_options)
                times["tensorstore_ds"].append(seconds)
                print(f"    {label}: tensorstore_ds {seconds:6.2f} s ({saved} converted)", flush=True)
            theirs, ours = (statistics.median(times[k]) for k in ("img2dataset", "tensorstore_ds"))
            ratio = theirs / ours
            failed |= ratio < args.goal
            print(
                f"  {label:12s} img2dataset {args.n / theirs:7.1f} URLs/s ({theirs:.2f} s)   "
                f"tensorstore_ds {args.n / ours:7.1f} URLs/s ({ours:.2f} s)   ratio {ratio:.2f}x "
                f"(goal >= {args.goal:g}x: {'ok' if ratio >= args.goal else 'BELOW GOAL'})",
                flush=True,
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
