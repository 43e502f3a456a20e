"""tensorstore_ds.conversion.fetch against a real loopback HTTP server."""

from __future__ import annotations

import os
import pickle
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import urllib3

from tensorstore_ds.conversion.fetch import DEFAULT_USER_AGENT, Fetcher, FetchOptions
from tensorstore_ds.errors import FetchError
from tests.httpserver import Request, Response, TestServer

PAYLOAD = os.urandom(100_000)


def fast(**overrides: object) -> FetchOptions:
    """Options with small timeouts and backoffs so failures are quick."""
    values: dict[str, object] = {
        "connect_timeout": 2.0,
        "read_timeout": 2.0,
        "total_timeout": 10.0,
        "retries": 2,
        "backoff": 0.01,
        "max_backoff": 2.0,
    }
    values.update(overrides)
    return FetchOptions(**values)  # type: ignore[arg-type]


def fetch(url: str, **overrides: object) -> bytes:
    with Fetcher(fast(**overrides), concurrency=4) as fetcher:
        return fetcher.fetch(url)


# --- success ---------------------------------------------------------------


def test_200_returns_exact_bytes(http_server: TestServer) -> None:
    http_server.route("/img.jpg", Response(200, PAYLOAD, {"Content-Type": "image/jpeg"}))
    assert fetch(http_server.url + "/img.jpg") == PAYLOAD
    assert http_server.requests[0].headers["user-agent"] == DEFAULT_USER_AGENT


@pytest.mark.parametrize("chunked", [False, True])
def test_body_without_content_length(http_server: TestServer, chunked: bool) -> None:
    http_server.route("/x", Response(body=PAYLOAD, content_length=None, chunked=chunked))
    assert fetch(http_server.url + "/x") == PAYLOAD


def test_connections_are_reused(http_server: TestServer) -> None:
    http_server.route("/x", PAYLOAD)
    with Fetcher(fast(), concurrency=1) as fetcher:
        for _ in range(5):
            assert fetcher.fetch(http_server.url + "/x") == PAYLOAD
    ports = {request.client for request in http_server.requests}
    assert http_server.hits["/x"] == 5 and len(ports) == 1


def test_body_longer_than_advertised_is_cut_and_connection_not_reused(
    http_server: TestServer,
) -> None:
    http_server.route("/liar", Response(body=b"a" * 100, content_length=10))
    http_server.route("/ok", b"fine")
    with Fetcher(fast(retries=0), concurrency=1) as fetcher:
        assert fetcher.fetch(http_server.url + "/liar") == b"a" * 10
        assert fetcher.fetch(http_server.url + "/ok") == b"fine"


# --- HTTP errors and retries -----------------------------------------------


def test_404_is_not_retried(http_server: TestServer) -> None:
    url = http_server.url + "/missing"
    with pytest.raises(FetchError, match="http-404") as info:
        fetch(url)
    assert info.value.reason == "http-404" and url in info.value.detail
    assert http_server.hits["/missing"] == 1


@pytest.mark.parametrize("status, retried", [(403, False), (410, False), (408, True), (502, True)])
def test_which_statuses_are_retried(http_server: TestServer, status: int, retried: bool) -> None:
    http_server.route("/s", status)
    with pytest.raises(FetchError, match=f"http-{status}"):
        fetch(http_server.url + "/s", retries=2)
    assert http_server.hits["/s"] == (3 if retried else 1)


def test_500_twice_then_success(http_server: TestServer) -> None:
    http_server.route("/flaky", [500, 500, PAYLOAD])
    assert fetch(http_server.url + "/flaky", retries=3) == PAYLOAD
    assert http_server.hits["/flaky"] == 3


def test_500_always_exhausts_retries(http_server: TestServer) -> None:
    http_server.route("/down", 500)
    with pytest.raises(FetchError, match="http-500") as info:
        fetch(http_server.url + "/down", retries=3)
    assert http_server.hits["/down"] == 4 and "after 4 attempts" in info.value.detail


def test_429_waits_for_retry_after(http_server: TestServer) -> None:
    http_server.route("/busy", [Response(429, headers={"Retry-After": "1"}), PAYLOAD])
    start = time.monotonic()
    assert fetch(http_server.url + "/busy", backoff=0.0) == PAYLOAD
    assert time.monotonic() - start >= 0.9
    assert http_server.hits["/busy"] == 2


@pytest.mark.parametrize("value", ["Thu, 01 Jan 2015 00:00:00 GMT", "3600", "garbage"])
def test_503_retry_after_date_past_or_capped(http_server: TestServer, value: str) -> None:
    http_server.route("/busy", [Response(503, headers={"Retry-After": value}), PAYLOAD])
    assert fetch(http_server.url + "/busy", max_backoff=0.05) == PAYLOAD
    assert http_server.hits["/busy"] == 2


# --- timeouts and broken connections ---------------------------------------


def test_timeout_when_server_never_answers(http_server: TestServer) -> None:
    http_server.route("/never", Response.never())
    with pytest.raises(FetchError, match="timeout") as info:
        fetch(http_server.url + "/never", read_timeout=0.3, retries=1)
    assert info.value.reason == "timeout" and http_server.hits["/never"] == 2


def test_timeout_when_body_stalls(http_server: TestServer) -> None:
    http_server.route("/stall", Response(body=PAYLOAD, stall_after=1000, stall=30.0))
    with pytest.raises(FetchError, match="timeout"):
        fetch(http_server.url + "/stall", read_timeout=0.3, retries=0)


def test_total_timeout_stops_a_trickling_server(http_server: TestServer) -> None:
    http_server.route("/slow", Response(body=b"x" * 100, chunk_size=1, trickle=0.05))
    with pytest.raises(FetchError, match="total_timeout") as info:
        fetch(http_server.url + "/slow", read_timeout=1.0, total_timeout=0.4, retries=0)
    assert info.value.reason == "timeout"


def test_dropped_connection_mid_body(http_server: TestServer) -> None:
    http_server.route("/drop", [Response(body=PAYLOAD, drop_after=5000), PAYLOAD])
    with pytest.raises(FetchError, match="connection-error"):
        fetch(http_server.url + "/drop", retries=0)
    assert fetch(http_server.url + "/drop", retries=0) == PAYLOAD


def test_dropped_connection_is_retried(http_server: TestServer) -> None:
    http_server.route("/drop", [Response(body=PAYLOAD, chunked=True, drop_after=5000), PAYLOAD])
    assert fetch(http_server.url + "/drop", retries=1) == PAYLOAD
    assert http_server.hits["/drop"] == 2


def test_connection_refused() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(FetchError, match="connection-error") as info:
        fetch(f"http://127.0.0.1:{port}/x", retries=1)
    assert f"127.0.0.1:{port}" in info.value.detail


# --- redirects -------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirect_is_followed(http_server: TestServer, status: int) -> None:
    http_server.route("/old", Response.redirect("/new", status))
    http_server.route("/new", PAYLOAD)
    assert fetch(http_server.url + "/old") == PAYLOAD


def test_absolute_redirect_chain(http_server: TestServer) -> None:
    http_server.route("/a", Response.redirect(http_server.url + "/b"))
    http_server.route("/b", Response.redirect("c"))
    http_server.route("/c", PAYLOAD)
    assert fetch(http_server.url + "/a", max_redirects=2) == PAYLOAD


def test_redirect_loop(http_server: TestServer) -> None:
    http_server.route("/a", Response.redirect("/b"))
    http_server.route("/b", Response.redirect("/a"))
    with pytest.raises(FetchError, match="too-many-redirects"):
        fetch(http_server.url + "/a", max_redirects=3)
    assert http_server.hits["/a"] + http_server.hits["/b"] == 4


def test_redirect_to_file_is_refused(http_server: TestServer, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"secret")
    http_server.route("/evil", Response.redirect(secret.as_uri()))
    with pytest.raises(FetchError, match="scheme-refused"):
        fetch(http_server.url + "/evil", allowed_schemes=("http", "https", "file"))


# --- limits and content checks ---------------------------------------------


def test_content_length_above_max_bytes(http_server: TestServer) -> None:
    http_server.route("/big", PAYLOAD)
    with pytest.raises(FetchError, match="too-large"):
        fetch(http_server.url + "/big", max_bytes=1000)
    assert http_server.hits["/big"] == 1


@pytest.mark.parametrize("chunked", [True, False])
def test_streamed_body_above_max_bytes(http_server: TestServer, chunked: bool) -> None:
    http_server.route("/big", Response(body=PAYLOAD, content_length=None, chunked=chunked))
    with pytest.raises(FetchError, match="too-large"):
        fetch(http_server.url + "/big", max_bytes=1000)


@pytest.mark.parametrize("content_type", ["text/html", "text/html; charset=utf-8", "text/plain"])
def test_html_is_not_media(http_server: TestServer, content_type: str) -> None:
    page = b"<html>gone</html>"
    http_server.route("/page", Response(200, page, {"Content-Type": content_type}))
    with pytest.raises(FetchError, match="not-media"):
        fetch(http_server.url + "/page")
    assert fetch(http_server.url + "/page", reject_html=False) == page


@pytest.mark.parametrize("response", [Response(200), Response(204)])
def test_empty_body(http_server: TestServer, response: Response) -> None:
    http_server.route("/empty", response)
    with pytest.raises(FetchError, match="empty-body"):
        fetch(http_server.url + "/empty")


# --- URLs and schemes ------------------------------------------------------


@pytest.mark.parametrize("url", ["file:///etc/hostname", "ftp://example.com/a.jpg", "data:,x"])
def test_scheme_refused(url: str) -> None:
    with pytest.raises(FetchError, match="scheme-refused"):
        fetch(url)


def test_file_scheme_when_allowed(tmp_path: Path) -> None:
    image = tmp_path / "a b.jpg"
    image.write_bytes(PAYLOAD)
    schemes = ("http", "https", "file")
    assert fetch(image.as_uri(), allowed_schemes=schemes) == PAYLOAD
    with pytest.raises(FetchError, match="too-large"):
        fetch(image.as_uri(), allowed_schemes=schemes, max_bytes=10)
    with pytest.raises(FetchError, match="file-error"):
        fetch((tmp_path / "missing.jpg").as_uri(), allowed_schemes=schemes)


@pytest.mark.parametrize(
    "url", ["", "   ", "not a url", "http://", "http://:80/x", "http://host:99999/x", "http://a b/c"]
)
def test_bad_url(url: str) -> None:
    with pytest.raises(FetchError, match="bad-url"):
        fetch(url)


# --- concurrency, pickling, options ----------------------------------------


def test_many_threads_get_the_right_bodies() -> None:
    def answer(request: Request) -> Response:
        return Response(body=request.path.encode() * 100, headers={"Content-Type": "image/jpeg"})

    with TestServer(delay=0.05) as server:
        server.route("/img/", answer, prefix=True)
        urls = [f"{server.url}/img/{i}" for i in range(200)]
        with Fetcher(fast(), concurrency=64) as fetcher, ThreadPoolExecutor(64) as pool:
            bodies = list(pool.map(fetcher.fetch, urls))
    assert bodies == [f"/img/{i}".encode() * 100 for i in range(200)]


def test_fetch_error_pickles() -> None:
    error = FetchError("http-404", "http://x/y: HTTP 404 Not Found")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is FetchError and isinstance(copy, OSError)
    assert (copy.reason, copy.detail, str(copy)) == (error.reason, error.detail, str(error))


def test_fetcher_pickles_without_its_pool(http_server: TestServer) -> None:
    http_server.route("/x", PAYLOAD)
    fetcher = Fetcher(fast(), concurrency=8)
    assert fetcher.fetch(http_server.url + "/x") == PAYLOAD
    copy = pickle.loads(pickle.dumps(fetcher))
    assert copy._pool is None and copy.options == fetcher.options and copy.concurrency == 8
    assert copy.fetch(http_server.url + "/x") == PAYLOAD
    fetcher.close()
    copy.close()
    assert fetcher.fetch(http_server.url + "/x") == PAYLOAD  # reopens after close
    fetcher.close()


@pytest.mark.parametrize(
    "overrides",
    [
        {"read_timeout": 0},
        {"connect_timeout": -1},
        {"total_timeout": float("inf")},
        {"backoff": -0.1},
        {"retries": -1},
        {"retries": 1.5},
        {"max_bytes": 0},
        {"max_redirects": True},
        {"allowed_schemes": ()},
        {"allowed_schemes": "http"},
        {"allowed_schemes": ("http", "ftp")},
        {"reject_html": "yes"},
        {"user_agent": ""},
    ],
)
def test_invalid_options(overrides: dict[str, object]) -> None:
    name = next(iter(overrides))
    with pytest.raises(ValueError, match=name):
        FetchOptions(**overrides)  # type: ignore[arg-type]


def test_options_normalize_schemes_and_fetcher_validates() -> None:
    assert FetchOptions(allowed_schemes=("HTTP",)).allowed_schemes == ("http",)
    with pytest.raises(ValueError, match="concurrency"):
        Fetcher(concurrency=0)
    with pytest.raises(ValueError, match="FetchOptions"):
        Fetcher(options={"retries": 1})  # type: ignore[arg-type]


# --- the test server itself ------------------------------------------------


@pytest.mark.parametrize(
    "range_header, status, body, content_range",
    [
        (None, 200, b"0123456789", None),
        ("bytes=2-5", 206, b"2345", "bytes 2-5/10"),
        ("bytes=7-", 206, b"789", "bytes 7-9/10"),
        ("bytes=-3", 206, b"789", "bytes 7-9/10"),
        ("bytes=5-100", 206, b"56789", "bytes 5-9/10"),
        ("bytes=10-", 416, b"", "bytes */10"),
        ("bytes=0-1,4-5", 200, b"0123456789", None),
    ],
)
def test_server_serves_ranges(
    http_server: TestServer,
    tmp_path: Path,
    range_header: str | None,
    status: int,
    body: bytes,
    content_range: str | None,
) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.bin").write_bytes(b"0123456789")
    http_server.serve_dir(tmp_path, prefix="/static/")
    headers = {"Range": range_header} if range_header else {}
    with urllib3.PoolManager() as pool:
        response = pool.request("GET", http_server.url + "/static/sub/d.bin", headers=headers)
        head = pool.request("HEAD", http_server.url + "/static/sub/d.bin")
        outside = pool.request("GET", http_server.url + "/static/../../etc/passwd")
    assert (response.status, response.data) == (status, body)
    assert response.headers.get("Content-Range") == content_range
    assert head.status == 200 and head.headers["Content-Length"] == "10" and head.data == b""
    assert outside.status == 404
