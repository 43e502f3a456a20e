"""Download media bytes over HTTP(S) from many threads at once.

:class:`Fetcher` wraps one :class:`urllib3.PoolManager` shared by every thread,
so ``concurrency`` worker threads reuse keep-alive connections instead of
paying a TCP/TLS handshake per URL. :meth:`Fetcher.fetch` follows redirects
itself, streams the body under a size limit and a deadline, retries transient
failures with exponential backoff (honouring ``Retry-After``) and reports each
failure as a :class:`~tensorstore_ds.errors.FetchError` whose ``reason`` is
one of ``http-<status>``, ``timeout``, ``connection-error``, ``too-large``,
``too-many-redirects``, ``scheme-refused``, ``bad-url``, ``empty-body``,
``not-media``, ``host-circuit-open`` (see :mod:`.hosts`) and, for ``file://``
URLs, ``file-error``. A URL has a deadline over all its attempts
(``FetchOptions.deadline``) besides the per-attempt ``total_timeout``; the
helpers that check URLs and map transport errors live in :mod:`.urls`.
"""

from __future__ import annotations

import math
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, NoReturn

import urllib3

from .._version import __version__
from ..errors import FetchError, OptionsError
from .hosts import Hosts
from .urls import (
    SUPPORTED_SCHEMES,
    Response,
    Retry,
    check_url,
    content_length,
    discard,
    map_error,
    read_file,
    retry_after,
)

__all__ = ["DEFAULT_USER_AGENT", "FetchOptions", "Fetcher"]

DEFAULT_USER_AGENT = f"tensorstore_ds/{__version__}"

_NOT_MEDIA_TYPES = frozenset({"text/html", "application/xhtml+xml", "text/plain"})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CHUNK = 256 * 1024
_MIN_POOLS = 32


@dataclass(frozen=True)
class FetchOptions:
    """How :class:`Fetcher` downloads one URL.

    Parameters
    ----------
    connect_timeout, read_timeout
        Seconds to wait for a TCP/TLS connection, and for each socket read.
    total_timeout
        Deadline in seconds for one attempt (redirects, headers and body), so
        a server trickling bytes cannot hold a worker forever; checked between
        socket reads, so it may be overrun by up to ``read_timeout``.
    deadline
        Deadline in seconds for the whole URL: every attempt, redirect and
        backoff wait. No retry starts once it has passed, and no attempt runs
        past it; None for no deadline beyond ``total_timeout`` per attempt.
    retries
        Retries after connection errors, timeouts, HTTP 5xx, 408 and 429.
    backoff, max_backoff
        Retry ``n`` (0-based) waits ``min(backoff * 2**n, max_backoff)``
        seconds, or ``Retry-After`` (on 429 and 503) capped at max_backoff.
    max_bytes
        Largest accepted body (Content-Length, then bytes streamed).
    max_redirects
        Redirects followed per attempt before ``"too-many-redirects"``.
    allowed_schemes
        Accepted URL schemes among http, https and file (reads local files).
        Redirects only ever go to HTTP(S).
    reject_html
        Fail a 2xx whose Content-Type is HTML or plain text with
        ``"not-media"`` (dead image links often answer with an HTML page).
    user_agent
        The ``User-Agent`` header sent with every request.
    """

    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    total_timeout: float = 120.0
    deadline: float | None = None
    retries: int = 3
    backoff: float = 0.5
    max_backoff: float = 30.0
    max_bytes: int = 64 * 2**20
    max_redirects: int = 5
    allowed_schemes: tuple[str, ...] = ("http", "https")
    reject_html: bool = True
    user_agent: str = DEFAULT_USER_AGENT

    def __post_init__(self) -> None:
        for name in ("connect_timeout", "read_timeout", "total_timeout", "backoff", "max_backoff"):
            value, strict = getattr(self, name), name.endswith("timeout")
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not ok or not math.isfinite(value) or value < 0 or (strict and value == 0):
                _invalid(name, f"a finite number {'> 0' if strict else '>= 0'}", value)
        if self.deadline is not None and (
            isinstance(self.deadline, bool)
            or not isinstance(self.deadline, (int, float))
            or not math.isfinite(self.deadline)
            or self.deadline <= 0
        ):
            _invalid("deadline", "a finite number > 0 or None", self.deadline)
        for name, low in (("retries", 0), ("max_bytes", 1), ("max_redirects", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                _invalid(name, f"an integer >= {low}", value)
        schemes = self.allowed_schemes
        if isinstance(schemes, str) or not all(isinstance(s, str) for s in schemes):
            _invalid("allowed_schemes", "a tuple of strings", schemes)
        normalized = tuple(s.lower() for s in schemes)
        if not normalized or not set(normalized) <= set(SUPPORTED_SCHEMES):
            _invalid("allowed_schemes", f"a non-empty subset of {SUPPORTED_SCHEMES}", schemes)
        object.__setattr__(self, "allowed_schemes", normalized)
        if not isinstance(self.reject_html, bool):
            _invalid("reject_html", "a bool", self.reject_html)
        if not isinstance(self.user_agent, str) or not self.user_agent.strip():
            _invalid("user_agent", "a non-empty string", self.user_agent)


def _invalid(name: str, expected: str, value: object) -> NoReturn:
    raise OptionsError(f"FetchOptions.{name} must be {expected}, got {value!r}")


class Fetcher:
    """Thread-safe downloader with a shared keep-alive connection pool.

    Parameters
    ----------
    options
        Timeouts, retries and limits applied to every URL.
    concurrency
        How many threads are expected to call :meth:`fetch` at once; it sizes
        the per-host connection pool.
    hosts
        Shared per-host state: every attempt is reported to its circuit
        breaker, and a URL of a host whose circuit is open fails at once with
        ``host-circuit-open``. None for no breaker.

    Notes
    -----
    The pool is created on first use, so a fresh or unpickled Fetcher is
    cheap; pickling drops the pool and the copy opens its own connections.
    :meth:`close` releases the connections; a closed Fetcher reopens on use.
    """

    def __init__(
        self, options: FetchOptions = FetchOptions(), concurrency: int = 64, hosts: Hosts | None = None
    ) -> None:
        if not isinstance(options, FetchOptions):
            raise OptionsError(f"options must be a FetchOptions, got {type(options).__name__}")
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise OptionsError(f"concurrency must be an integer >= 1, got {concurrency!r}")
        self.options = options
        self.concurrency = concurrency
        self.hosts = hosts
        self._pool: urllib3.PoolManager | None = None
        self._lock = threading.Lock()

    def _manager(self) -> urllib3.PoolManager:
        pool = self._pool
        if pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = urllib3.PoolManager(
                        num_pools=max(_MIN_POOLS, self.concurrency),
                        maxsize=self.concurrency,
                        block=False,
                        retries=False,
                        headers={"User-Agent": self.options.user_agent, "Accept": "*/*"},
                    )
                pool = self._pool
        return pool

    def close(self) -> None:
        """Close every pooled connection."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.clear()

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        return {"options": self.options, "concurrency": self.concurrency, "hosts": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]  # a fresh lock, no pool

    def fetch(self, url: str) -> bytes:
        """Download one URL and return its body.

        Parameters
        ----------
        url
            An ``http(s)://`` URL, or ``file://`` when the options allow it.

        Returns
        -------
        bytes
            The complete, non-empty body.

        Raises
        ------
        FetchError
            With a reason listed in the module docstring; ``detail`` names the
            URL and the cause.
        """
        scheme = check_url(url, self.options.allowed_schemes)
        url = url.strip()
        if scheme == "file":
            return read_file(url, self.options.max_bytes)
        start, limit = time.monotonic(), self.options.deadline
        url_deadline = math.inf if limit is None else start + limit
        attempt = 0
        while True:
            try:
                return self._attempt_reported(url, url_deadline)
            except Retry as retry:
                wait = self.options.backoff * 2.0**attempt if retry.wait is None else retry.wait
                wait = min(wait, self.options.max_backoff)
                if attempt >= self.options.retries:
                    _give_up(retry.error, attempt + 1)
                if time.monotonic() + wait >= url_deadline:
                    _give_up(retry.error, attempt + 1, f"deadline={limit}s reached")
                time.sleep(wait)
                attempt += 1

    def _attempt_reported(self, url: str, url_deadline: float) -> bytes:
        """One attempt, its outcome reported to the host's circuit breaker."""
        if self.hosts is None:
            return self._attempt(url, url_deadline)
        self.hosts.check(url)
        try:
            body = self._attempt(url, url_deadline)
        except Retry as retry:
            self.hosts.record(url, retry.error.reason)
            raise
        except FetchError as exc:
            self.hosts.record(url, exc.reason)
            raise
        self.hosts.record(url, None)
        return body

    def _attempt(self, url: str, url_deadline: float = math.inf) -> bytes:
        per_attempt = time.monotonic() + self.options.total_timeout
        label = "deadline" if url_deadline < per_attempt else "total_timeout"
        deadline = min(per_attempt, url_deadline)
        current = url
        http_only = tuple(s for s in self.options.allowed_schemes if s != "file")
        for _ in range(self.options.max_redirects + 1):
            response = self._request(url, current, deadline, label)
            location = response.headers.get("Location")
            if response.status not in _REDIRECTS or not location:
                return self._read(_where(url, current), response, deadline, label)
            discard(response)
            current = urllib.parse.urljoin(current, location.strip())
            try:
                check_url(current, http_only)
            except FetchError as exc:
                raise FetchError(exc.reason, f"{url}: redirect refused: {exc.detail}") from None
        detail = f"{url}: more than {self.options.max_redirects} redirects (last to {current})"
        raise FetchError("too-many-redirects", detail)

    def _request(self, url: str, current: str, deadline: float, label: str) -> Response:
        where = _where(url, current)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            limit = self.options.deadline if label == "deadline" else self.options.total_timeout
            raise Retry(FetchError("timeout", f"{where}: {label}={limit}s exceeded"))
        timeout = urllib3.Timeout(
            connect=min(self.options.connect_timeout, remaining),
            read=min(self.options.read_timeout, remaining),
        )
        try:
            return self._manager().request(
                "GET",
                current,
                timeout=timeout,
                retries=False,
                redirect=False,
                preload_content=False,
            )
        except Exception as exc:
            raise map_error(where, exc, self.options) from None

    def _read(self, where: str, response: Response, deadline: float, label: str) -> bytes:
        try:
            self._check_headers(where, response)
        except BaseException:
            discard(response)
            raise
        try:
            body = self._stream(where, response, deadline, label)
        except BaseException:
            response.close()  # never reuse a connection left mid-body
            response.release_conn()
            raise
        response.release_conn()
        if not body:
            raise FetchError("empty-body", f"{where}: HTTP {response.status} with an empty body")
        return body

    def _check_headers(self, where: str, response: Response) -> None:
        status = response.status
        if not 200 <= status < 300:
            detail = f"{where}: HTTP {status} {response.reason or ''}".strip()
            error = FetchError(f"http-{status}", detail)
            if status < 500 and status not in (408, 429):
                raise error
            header = response.headers.get("Retry-After") if status in (429, 503) else None
            raise Retry(error, retry_after(header))
        media_type = (response.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if self.options.reject_html and media_type in _NOT_MEDIA_TYPES:
            raise FetchError("not-media", f"{where}: HTTP {status} is {media_type}, not media")
        declared = content_length(response)
        if declared is not None and declared > self.options.max_bytes:
            limit = self.options.max_bytes
            raise FetchError("too-large", f"{where}: Content-Length {declared} > max_bytes={limit}")

    def _stream(self, where: str, response: Response, deadline: float, label: str) -> bytes:
        chunks: list[bytes] = []
        total = 0
        try:
            while True:
                if time.monotonic() > deadline:
                    limit = self.options.deadline if label == "deadline" else self.options.total_timeout
                    detail = f"{where}: body not complete within {label}={limit}s"
                    raise Retry(FetchError("timeout", detail))
                chunk = response.read1(_CHUNK)
                if not chunk:
                    return b"".join(chunks)
                total += len(chunk)
                if total > self.options.max_bytes:
                    limit = self.options.max_bytes
                    raise FetchError("too-large", f"{where}: body exceeds max_bytes={limit}")
                chunks.append(chunk)
        except (Retry, FetchError):
            raise
        except Exception as exc:
            raise map_error(where, exc, self.options) from None


def _where(url: str, current: str) -> str:
    return url if current == url else f"{url} (redirected to {current})"


def _give_up(error: FetchError, attempts: int, why: str = "") -> NoReturn:
    cause = error.__cause__
    notes = [f"after {attempts} attempts"] if attempts > 1 else []
    notes += [why] if why else []
    if notes:
        error = FetchError(error.reason, f"{error.detail} ({'; '.join(notes)})")
    raise error from cause
