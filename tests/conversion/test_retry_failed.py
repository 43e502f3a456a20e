"""``retry_failed``: rows that failed transiently are fetched again; the result equals a clean run.

The source is pixmo-cap-like: over two loopback hosts, rows that stall, drop
the connection mid-body, answer 5xx or 429 (all until the servers "come
back"), answer 404 or garbage (always), redirect or answer slowly (and
succeed), and one on a host where nothing listens.

Also SIGKILL during a stalled run and during a retry: the rerun finishes the
store a run without kills would have made.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tensorstore_ds import open_store
from tensorstore_ds.conversion import retry as retry_module
from tensorstore_ds.conversion.api import convert
from tensorstore_ds.conversion.retry import is_transient, retry_root
from tensorstore_ds.errors import OptionsError, OptionsMismatchError
from tensorstore_ds.format.manifest import MANIFEST, WORK_DIR
from tests.httpserver import Request, Response, TestServer
from tests.media import image_bytes
from tests.stores import store_bytes

ROOT = Path(__file__).resolve().parents[2]
SIZE = 16
CHUNK_MB = 8 * SIZE * SIZE * 3 / 2**20  # 8 rows a chunk
N = 60
TRANSIENT = {3: 503, 17: 429, 18: 500, 44: "stall", 50: "drop"}  # fail in the first run, succeed later
LASTING = {7: 404, 30: "garbage"}  # fail every time
ALWAYS = {25: "redirect", 33: "slow"}  # succeed every time
DEAD = 55  # on a host where nothing listens: fails every time, retried every time
OPTS = {"image_column": "url", "image_size": SIZE, "chunk_mb": CHUNK_MB, "progress": False}
WEB = {"timeout": 2.0, "deadline": 4.0, "retries": 0}  # 20x the slow row: outcomes must not depend on load


class Web:
    """Two loopback hosts serving N image URLs; the transient rows fail until ``recover()``."""

    def __init__(self) -> None:
        self.servers = [TestServer(host="127.0.0.6"), TestServer(host="127.0.0.7")]
        self.down = True
        for server in self.servers:
            server.route("/img/", self.answer, prefix=True)
        self.urls = [f"{self.servers[i % 2].url}/img/{i}.png" for i in range(N)]
        self.urls[DEAD] = f"http://127.0.0.8:9/img/{DEAD}.png"

    def answer(self, request: Request) -> Response:
        name = request.path.rsplit("/", 1)[1].split(".")[0]
        row = int(name.lstrip("r"))  # r<row>: where a redirect leads
        how = ALWAYS.get(row) or LASTING.get(row, TRANSIENT.get(row) if self.down else None)
        image = Response(200, image_bytes(12, 12, seed=row), {"Content-Type": "image/png"})
        if how == "redirect" and not name.startswith("r"):
            return Response.redirect(f"/img/r{row}.png")
        if how == "slow":
            return dataclasses.replace(image, delay=0.1)
        if how == "drop":
            return dataclasses.replace(image, drop_after=20)
        if how == "stall":
            return Response.never()
        if how == "garbage":
            return Response(200, b"not an image", {"Content-Type": "image/png"})
        if isinstance(how, int):
            return Response(how, b"no")
        return image

    def recover(self) -> None:
        self.down = False

    def close(self) -> None:
        for server in self.servers:
            server.close()


@pytest.fixture
def web() -> Iterator[Web]:
    w = Web()
    try:
        yield w
    finally:
        w.close()


def source(tmp_path: Path, web: Web) -> str:
    path = tmp_path / "urls.parquet"
    pq.write_table(pa.table({"url": web.urls, "caption": [f"caption {i}" for i in range(N)]}), path)
    return str(path)


def clean_run(tmp_path: Path, src: str, web: Web) -> Path:
    """The store a first run makes when the transient rows succeed."""
    web.recover()
    out = tmp_path / "clean"
    convert(src, out, workers=0, **OPTS, **WEB)
    web.down = True
    return out


def reasons(out: Path) -> dict[int, str]:
    store = open_store(out)
    try:
        return {f["row"]: f["reason"] for f in store.failures()}
    finally:
        store.close()


def test_transient_reasons() -> None:
    for reason in ("timeout", "connection-error", "http-500", "http-503", "http-429", "host-circuit-open"):
        assert is_transient(reason), reason
    for reason in ("http-404", "http-403", "undecodable-image", "not-media", "too-large", "http-5"):
        assert not is_transient(reason), reason


def test_retry_failed_equals_a_clean_run(tmp_path: Path, web: Web) -> None:
    src = source(tmp_path, web)
    clean = clean_run(tmp_path, src, web)
    out = tmp_path / "out"
    convert(src, out, workers=2, **OPTS, **WEB)
    first = reasons(out)
    assert set(first) == set(TRANSIENT) | set(LASTING) | {DEAD}
    assert first[44] == "timeout" and first[3] == "http-503" and first[50] == first[DEAD] == "connection-error"

    web.recover()
    manifest = convert(src, out, workers=2, retry_failed=True, **OPTS, **WEB)
    assert reasons(out) == reasons(clean) and set(reasons(out)) == set(LASTING) | {DEAD}
    assert manifest.counts["converted"] == N - len(LASTING) - 1
    assert store_bytes(out) == store_bytes(clean)
    assert not (out / WORK_DIR).exists()
    hits = sum(s.hits.total() for s in web.servers)
    convert(src, out, workers=0, retry_failed=True, **OPTS, **WEB)  # nothing transient left: nothing fetched
    assert sum(s.hits.total() for s in web.servers) == hits


def test_retry_failed_refuses_other_options_and_shards(tmp_path: Path, web: Web) -> None:
    src = source(tmp_path, web)
    out = tmp_path / "out"
    convert(src, out, workers=0, **OPTS, **WEB)
    with pytest.raises(OptionsMismatchError, match="image_size"):
        convert(src, out, workers=0, retry_failed=True, **{**OPTS, "image_size": 8}, **WEB)
    with pytest.raises(OptionsError, match="cannot be combined with overwrite"):
        convert(src, out, retry_failed=True, overwrite=True, **OPTS)
    with pytest.raises(OptionsError, match="retry_failed works on a whole store"):
        convert(src, out, retry_failed=True, shard="0/2", **OPTS)
    with pytest.raises(OptionsError, match=r"retry_failed rebuilds a store in a local directory, not at s3://b/s"):
        convert(src, "s3://b/s", retry_failed=True, **OPTS)


def test_a_crash_while_moving_the_retried_store_in_is_finished_by_the_rerun(
    tmp_path: Path, web: Web, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = source(tmp_path, web)
    clean = clean_run(tmp_path, src, web)
    out = tmp_path / "out"
    convert(src, out, workers=0, **OPTS, **WEB)
    web.recover()
    real_replace, moves = os.replace, []

    def crashing_replace(a: object, b: object) -> None:
        if WORK_DIR not in str(b):  # a move into the store, not a write of the retried store
            moves.append(a)
        if len(moves) == 5:
            raise KeyboardInterrupt  # stands for a kill in the middle of the move
        real_replace(a, b)  # type: ignore[arg-type]

    monkeypatch.setattr(retry_module.os, "replace", crashing_replace)
    with pytest.raises(KeyboardInterrupt):
        convert(src, out, workers=0, retry_failed=True, **OPTS, **WEB)
    monkeypatch.setattr(retry_module.os, "replace", real_replace)
    assert not (out / MANIFEST).exists() and (retry_root(out) / MANIFEST).exists()
    web.down = True  # the rerun only moves files: it fetches nothing
    convert(src, out, workers=0, retry_failed=True, **OPTS, **WEB)
    assert store_bytes(out) == store_bytes(clean)


# --- SIGKILL ----------------------------------------------------------------------------------------------------


def cli(src: str, out: Path, *extra: str) -> list[str]:
    args = [sys.executable, "-m", "tensorstore_ds", "convert", src, str(out), "--image-column", "url"]
    args += ["--image-size", str(SIZE), "--chunk-mb", str(CHUNK_MB), "--no-progress", "--workers", "1"]
    return [*args, "--timeout", str(WEB["timeout"]), "--deadline", str(WEB["deadline"]), "--retries", "0", *extra]


def kill_when(args: list[str], ready: Callable[[], bool]) -> None:
    """Start the CLI, SIGKILL it once ``ready()``; fail if it ended first."""
    err = tempfile.TemporaryFile()
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + 120
    while proc.poll() is None and not ready() and time.monotonic() < deadline:
        time.sleep(0.002)
    ended = proc.poll() is not None
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    err.seek(0)
    assert not ended, f"the converter ended before the kill: {err.read().decode()[-1000:]}"


def committed(root: Path) -> int:
    try:
        return int(json.loads((root / WORK_DIR / "state.json").read_bytes())["chunks"])
    except (OSError, ValueError, KeyError):
        return 0


def test_sigkill_during_a_stalled_run_then_rerun(tmp_path: Path, web: Web) -> None:
    """Killed while row 44 stalls and the rows behind it wait staged; the rerun gives the uninterrupted store."""
    src = source(tmp_path, web)
    reference = tmp_path / "reference"
    convert(src, reference, workers=0, **OPTS, **WEB)
    stalled_url = "/img/44.png"
    server = web.servers[0]
    web_timeout = "30"  # the kill comes while row 44 is stalled, long before this
    out = tmp_path / "out"
    args = cli(src, out)
    args[args.index("--timeout") + 1] = args[args.index("--deadline") + 1] = web_timeout
    before = (44 - sum(r < 44 for r in [*TRANSIENT, *LASTING, DEAD])) // 8  # chunks full before row 44
    every_url_asked = lambda: sum(s.hits.total() for s in web.servers) >= N  # noqa: E731
    started = time.monotonic()
    kill_when(args, lambda: server.hits[stalled_url] > 0 and every_url_asked() and committed(out) >= before)
    # The chunks before the stalled row are committed while it stalls (the writer settles the chunk files
    # written meanwhile), long before its 30 s are up; none after it.
    assert time.monotonic() - started < int(web_timeout)
    time.sleep(0.2)
    assert committed(out) == before
    subprocess.run(cli(src, out), cwd=ROOT, check=True, capture_output=True, timeout=300)
    assert store_bytes(out) == store_bytes(reference)


def test_sigkill_during_a_retry_then_rerun(tmp_path: Path, web: Web) -> None:
    src = source(tmp_path, web)
    clean = clean_run(tmp_path, src, web)
    out = tmp_path / "out"
    convert(src, out, workers=0, **OPTS, **WEB)
    web.recover()
    web.servers[0].delay = 0.05  # slow enough to be caught in the middle
    kill_when(cli(src, out, "--retry-failed"), lambda: committed(retry_root(out)) >= 2)
    assert (out / MANIFEST).exists()  # the old store is intact meanwhile
    assert set(reasons(out)) == set(TRANSIENT) | set(LASTING) | {DEAD}
    subprocess.run(cli(src, out, "--retry-failed"), cwd=ROOT, check=True, capture_output=True, timeout=300)
    assert store_bytes(out) == store_bytes(clean)
