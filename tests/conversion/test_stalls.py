"""Web-scale fetching: stalled URLs do not hold up other rows; per-host caps; the host circuit breaker; deadlines.

URLs are spread over several loopback addresses (127.0.0.1 to 127.0.0.16 are
all loopback on Linux), so each server is a host of its own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tensorstore_ds import open_store
from tensorstore_ds.conversion import pipeline
from tensorstore_ds.conversion.api import convert
from tensorstore_ds.conversion.fetch import Fetcher, FetchOptions
from tensorstore_ds.conversion.hosts import CIRCUIT_OPEN, Hosts
from tensorstore_ds.conversion.pipeline import Pipeline
from tensorstore_ds.conversion.tasks import Task
from tensorstore_ds.errors import FetchError, OptionsError
from tests.httpserver import Request, Response, TestServer
from tests.media import image_bytes
from tests.stores import store_bytes

SIZE = 16
CHUNK_MB = 8 * SIZE * SIZE * 3 / 2**20  # 8 rows a chunk
FAST = {"image_size": SIZE, "chunk_mb": CHUNK_MB, "progress": False}


@pytest.fixture
def servers() -> Iterator[list[TestServer]]:
    """Four servers on four loopback addresses: four hosts."""
    started = [TestServer(host=f"127.0.0.{i}") for i in (2, 3, 4, 5)]
    try:
        yield started
    finally:
        for server in started:
            server.close()


def write_urls(path: Path, urls: list[str]) -> str:
    pq.write_table(pa.table({"url": urls, "caption": [f"c{i}" for i in range(len(urls))]}), path)
    return str(path)


def serve_images(server: TestServer, n: int) -> list[str]:
    """Route ``/img/<i>.png`` to a distinct PNG for each i < n; return the URLs."""
    server.route(
        "/img/",
        lambda req: Response(200, image_bytes(12, 12, seed=_index(req)), {"Content-Type": "image/png"}),
        prefix=True,
    )
    return [f"{server.url}/img/{i}.png" for i in range(n)]


def _index(request: Request) -> int:
    return int(request.path.rsplit("/", 1)[1].split(".")[0])


def spread(servers: list[TestServer], n: int) -> list[str]:
    """``n`` image URLs, row i on server i % len(servers)."""
    per_server = [serve_images(s, n) for s in servers]
    return [per_server[i % len(servers)][i] for i in range(n)]


# --- stalls ---------------------------------------------------------------------------------------------------


def test_a_stalled_url_does_not_hold_up_the_rows_behind_it(tmp_path: Path, servers: list[TestServer]) -> None:
    """Row 0's server answers only once every other row has been requested.

    With head-of-line blocking (results committed through a short window) the
    rows far behind row 0 would never be requested while it stalls, and row 0
    would fail; here it succeeds late and the store equals one made without
    the stall, whatever the number of workers.
    """
    n = 400
    urls = spread(servers, n)
    others_requested = threading.Event()
    seen: set[str] = set()
    lock = threading.Lock()

    def stalled(request: Request) -> Response:
        if not others_requested.wait(60):
            return Response(503, b"the other rows were never requested")
        return Response(200, image_bytes(12, 12, seed=0), {"Content-Type": "image/png"})

    def counting(server: TestServer) -> Callable[[Request], Response]:
        def handler(request: Request) -> Response:
            with lock:
                seen.add(f"{server.url}{request.path}")
                if len(seen) >= n - 1:
                    others_requested.set()
            return Response(200, image_bytes(12, 12, seed=_index(request)), {"Content-Type": "image/png"})

        return handler

    for server in servers:
        server.route("/img/", counting(server), prefix=True)
    servers[0].route("/img/0.png", stalled)
    src = write_urls(tmp_path / "urls.parquet", urls)
    stalled_run = tmp_path / "stalled"
    convert(src, stalled_run, image_column="url", workers=2, timeout=90, deadline=120, **FAST)
    store = open_store(stalled_run)
    assert len(store) == n and store.failures() == []
    store.close()

    servers[0].route(
        "/img/0.png", lambda req: Response(200, image_bytes(12, 12, seed=0), {"Content-Type": "image/png"})
    )
    plain = tmp_path / "plain"
    convert(src, plain, image_column="url", workers=0, **FAST)
    assert store_bytes(stalled_run) == store_bytes(plain)


def test_stalls_past_the_deadline_fail_alone_and_the_store_is_deterministic(
    tmp_path: Path, servers: list[TestServer]
) -> None:
    n = 120
    urls = spread(servers, n)
    stalled_rows = {3, 40, 41, 97}
    for row in stalled_rows:
        servers[row % len(servers)].route(f"/img/{row}.png", Response.never())
    src = write_urls(tmp_path / "urls.parquet", urls)
    opts = {"image_column": "url", "timeout": 1.5, "deadline": 1.8, "retries": 1, **FAST}  # healthy rows never near it
    convert(src, tmp_path / "w2", workers=2, **opts)
    convert(src, tmp_path / "w0", workers=0, fetch_concurrency=7, lookahead=16, **opts)
    store = open_store(tmp_path / "w2")
    assert {f["row"]: f["reason"] for f in store.failures()} == dict.fromkeys(stalled_rows, "timeout")
    assert "deadline=1.8s" in store.failures()[0]["detail"]
    assert len(store) == n - len(stalled_rows)
    store.close()
    assert store_bytes(tmp_path / "w2") == store_bytes(tmp_path / "w0")


# --- per-host cap ---------------------------------------------------------------------------------------------


def test_per_host_cap_limits_one_host_and_not_the_others(tmp_path: Path, servers: list[TestServer]) -> None:
    active = {s.url: 0 for s in servers}
    peak = dict(active)
    lock = threading.Lock()

    def tracking(server: TestServer) -> Callable[[Request], Response]:
        def handler(request: Request) -> Response:
            with lock:
                active[server.url] += 1
                peak[server.url] = max(peak[server.url], active[server.url])
            try:
                threading.Event().wait(0.05)
                return Response(200, image_bytes(12, 12, seed=_index(request)), {"Content-Type": "image/png"})
            finally:
                with lock:
                    active[server.url] -= 1

        return handler

    for server in servers:
        server.route("/img/", tracking(server), prefix=True)
    urls = [f"{servers[i % 4].url}/img/{i}.png" for i in range(160)]
    src = write_urls(tmp_path / "urls.parquet", urls)
    convert(src, tmp_path / "capped", image_column="url", workers=0, per_host_concurrency=3, **FAST)
    assert max(peak.values()) <= 3
    store = open_store(tmp_path / "capped")
    assert len(store) == 160
    store.close()


def test_hosts_cap_counts_slots() -> None:
    hosts = Hosts(cap=2)
    assert hosts.try_acquire("a") and hosts.try_acquire("a") and not hosts.try_acquire("a")
    assert hosts.try_acquire("b")
    hosts.release("a")
    assert hosts.in_flight("a") == 1 and hosts.try_acquire("a")
    with pytest.raises(OptionsError, match="per-host concurrency must be an integer >= 1"):
        Hosts(cap=0)


# --- circuit breaker ------------------------------------------------------------------------------------------


def test_breaker_opens_after_a_run_of_timeouts_and_a_success_resets_it() -> None:
    hosts = Hosts(trip_after=3)
    url = "http://Example.org:81/a.jpg"
    for reason in ("timeout", "connection-error", None, "timeout", "timeout", "http-404"):
        hosts.record(url, reason)  # an HTTP answer (404 or a success) ends the run
    hosts.check(url)
    for _ in range(3):
        hosts.record("http://example.org/b.jpg", "timeout")
    assert hosts.open_hosts == ["example.org"]
    with pytest.raises(FetchError, match="host example.org skipped after 3 timeouts") as caught:
        hosts.check(url)
    assert caught.value.reason == CIRCUIT_OPEN
    hosts.check("http://example.com/ok.jpg")


def test_a_dead_host_trips_its_breaker_and_a_healthy_host_with_stalls_does_not(
    tmp_path: Path, servers: list[TestServer]
) -> None:
    dead, healthy, *_ = servers
    dead.route("/img/", Response.never(), prefix=True)
    ok = serve_images(healthy, 30)
    for row in (4, 9, 14):  # stalls, each between successes
        healthy.route(f"/img/{row}.png", Response.never())
    urls = [f"{dead.url}/img/{i}.png" for i in range(10)] + ok
    src = write_urls(tmp_path / "urls.parquet", urls)
    convert(
        src,
        tmp_path / "out",
        image_column="url",
        workers=0,
        timeout=1.0,  # healthy rows answer at once: only the stalled ones come near it, whatever the load
        deadline=1.5,
        retries=0,
        per_host_concurrency=1,
        host_breaker=2,
        **FAST,
    )
    store = open_store(tmp_path / "out")
    reasons = {f["row"]: f["reason"] for f in store.failures()}
    assert reasons == {0: "timeout", 1: "timeout", **dict.fromkeys(range(2, 10), CIRCUIT_OPEN)} | {
        10 + r: "timeout" for r in (4, 9, 14)
    }
    assert store.manifest.counts["failed_by_reason"][CIRCUIT_OPEN] == 8
    assert dead.hits.total() == 2  # the others failed without a request
    store.close()


# --- deadline -------------------------------------------------------------------------------------------------


def test_deadline_bounds_a_url_over_all_its_attempts(http_server: TestServer) -> None:
    http_server.route("/busy", Response(503, b"busy"))
    options = FetchOptions(retries=20, backoff=0.2, max_backoff=0.2, deadline=1.0)
    with Fetcher(options) as fetcher, pytest.raises(FetchError, match=r"deadline=1.0s reached") as caught:
        fetcher.fetch(http_server.url_for("/busy"))
    assert caught.value.reason == "http-503"
    assert 2 <= http_server.hits["/busy"] <= 7


def test_deadline_cuts_a_trickling_body(http_server: TestServer) -> None:
    body = image_bytes(64, 64)
    http_server.route("/slow", Response(200, body, trickle=0.1, chunk_size=max(1, len(body) // 40)))
    options = FetchOptions(read_timeout=5.0, retries=3, deadline=0.6)
    with Fetcher(options) as fetcher, pytest.raises(FetchError, match=r"within deadline=0.6s") as caught:
        fetcher.fetch(http_server.url_for("/slow"))
    assert caught.value.reason == "timeout"


@pytest.mark.parametrize("bad", [0, -1.0, float("inf"), "5"])
def test_deadline_is_checked(bad: Any) -> None:
    with pytest.raises(OptionsError, match="FetchOptions.deadline must be a finite number > 0 or None"):
        FetchOptions(deadline=bad)


# --- fetched bodies waiting for the decoders ------------------------------------------------------------


def slow_length(payload: bytes) -> dict[str, Any]:
    """A decoder far slower than the fetches (a decode process calls it: module level)."""
    time.sleep(0.01)
    return {"n": len(payload)}


@pytest.mark.parametrize("budget, fewest, most", [(20_000, 5, 22), (0, 1, 4)])
def test_fetches_run_ahead_of_the_decoders_within_the_body_budget(
    budget: int, fewest: int, most: int, http_server: TestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fetched bodies wait for the decoders up to BODY_BUDGET bytes (beyond fetch_threads of them), no more.

    With 1,000-byte bodies, 2 fetch threads and a budget of 20 bodies, fetches run ahead of the decoder
    by more than the 2 fetch threads and the 2 fetches in flight, up to 20 bodies and 2 more from the
    fetches in flight when the budget filled; with no budget, 2 and the 2 in flight.
    """
    monkeypatch.setattr(pipeline, "BODY_BUDGET", budget)
    http_server.route("/b/", Response(200, b"x" * 1000), prefix=True)
    tasks = [Task(i, str(i), "url", http_server.url_for(f"/b/{i}"), (), i) for i in range(100)]
    peak = {"count": 0, "bytes": 0}
    with Pipeline(slow_length, 1, Fetcher(FetchOptions(retries=0)), fetch_threads=2, lookahead=1000) as pipe:
        done = threading.Event()

        def watch() -> None:
            while not done.wait(0.002):
                peak["count"] = max(peak["count"], pipe._undecoded)
                peak["bytes"] = max(peak["bytes"], pipe._undecoded_bytes)

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            results = [outcome for _, outcome in pipe.map(tasks)]
        finally:
            done.set()
            watcher.join()
    assert results == [{"n": 1000}] * 100
    assert fewest <= peak["count"] <= most and peak["bytes"] <= most * 1000


def slow_square(payload: int) -> dict[str, Any]:
    time.sleep(0.005)
    return {"n": payload * payload}


def test_paths_are_read_only_two_batches_per_decoder_ahead() -> None:
    """The body budget lets fetched bodies run ahead; tasks with no body (paths) keep the decode window."""
    pulled: list[int] = []

    def source() -> Iterator[Task]:
        for i in range(400):
            pulled.append(i)
            yield Task(i, str(i), "path", i, (), i)

    fetcher = Fetcher(FetchOptions(retries=0))  # as a conversion has one, whatever its source
    with Pipeline(slow_square, 1, fetcher, fetch_threads=2, lookahead=1000) as pipe:
        results = pipe.map(source())
        first = next(results)
        read_at_first = len(pulled)
        rest = list(results)
    assert first[1] == {"n": 0} and len(rest) == 399
    assert read_at_first <= 2 * pipe.decode_window  # the window waiting, and at most as many sent to decode
