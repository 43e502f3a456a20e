"""Download media bytes over HTTP(S) from many threads at once.

:class:`Fetcher` wraps one :class:`urllib3.PoolManager` shared by every thread,
so ``concurrency`` worker threads reuse keep-alive connections instead of
paying a TCP/TLS handshake per URL. :meth:`Fetcher.fetch` follows redirects
itself, streams the body under a size limit and a deadline, retries transient
failures with exponential backoff (honouring ``Retry-After``) and reports each
failure as a :class:`~tensorstore_ds.errors.FetchError` whose ``reason`` is
one of ``http-<status>``, ``timeout``, ``connection-error``, ``too-large``,
``too-many-redirects``, ``scheme-refused``, ``bad-url``, ``empty-body``,
``not-media`` and, for ``file://`` URLs, ``file-error``.
"""

from __future__ import annotations

import email.utils
import math
import os
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NoReturn

import urllib3
from urllib3 import exceptions as u3

from .._version import __version__
from ..errors import FetchError, OptionsError

__all__ = ["DEFAULT_USER_AGENT", "FetchOptions", "Fetcher"]

DEFAULT_USER_AGENT = f"tensorstore_ds/{__version__}"

_SUPPORTED_SCHEMES = ("http", "https", "file")
_NOT_MEDIA_TYPES = frozenset({"text/html", "application/xhtml+xml", "text/plain"})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CHUNK = 256 * 1024
_DRAIN_LIMIT = 64 * 1024  # drain redirect/error bodies up to this size to reuse the connection
_MIN_POOLS = 32
_Response = urllib3.BaseHTTPResponse


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
        for name, low in (("retries", 0), ("max_bytes", 1), ("max_redirects", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                _invalid(name, f"an integer >= {low}", value)
        schemes = self.allowed_schemes
        if isinstance(schemes, str) or not all(isinstance(s, str) for s in schemes):
            _invalid("allowed_schemes", "a tuple of strings", schemes)
        normalized = tuple(s.lower() for s in schemes)
        if not normalized or not set(normalized) <= set(_SUPPORTED_SCHEMES):
            _invalid("allowed_schemes", f"a non-empty subset of {_SUPPORTED_SCHEMES}", schemes)
        object.__setattr__(self, "allowed_schemes", normalized)
        if not isinstance(self.reject_html, bool):
            _invalid("reject_html", "a bool", self.reject_html)
        if not isinstance(self.user_agent, str) or not self.user_agent.strip():
            _invalid("user_agent", "a non-empty string", self.user_agent)


def _invalid(name: str, expected: str, value: object) -> NoReturn:
    raise OptionsError(f"FetchOptions.{name} must be {expected}, got {value!r}")


class _Retry(Exception):
    """Internal: an attempt failed in a way worth retrying, maybe after ``wait`` s."""

    def __init__(self, error: FetchError, wait: float | None = None) -> None:
        super().__init__(error)
        self.error = error
        self.wait = wait


class Fetcher:
    """Thread-safe downloader with a shared keep-alive connection pool.

    Parameters
    ----------
    options
        Timeouts, retries and limits applied to every URL.
    concurrency
        How many threads are expected to call :meth:`fetch` at once; it sizes
        the per-host connection pool.

    Notes
    -----
    The pool is created on first use, so a fresh or unpickled Fetcher is
    cheap; pickling drops the pool and the copy opens its own connections.
    :meth:`close` releases the connections; a closed Fetcher reopens on use.
    """

    def __init__(self, options: FetchOptions = FetchOptions(), concurrency: int = 64) -> None:
        if not isinstance(options, FetchOptions):
            raise OptionsError(f"options must be a FetchOptions, got {type(options).__name__}")
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise OptionsError(f"concurrency must be an integer >= 1, got {concurrency!r}")
        self.options = options
        self.concurrency = concurrency
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
        return {"options": self.options, "concurrency": self.concurrency}

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
        scheme = _check_url(url, self.options.allowed_schemes)
        url = url.strip()
        if scheme == "file":
            return _read_file(url, self.options.max_bytes)
        attempt = 0
        while True:
            try:
                return self._attempt(url)
            except _Retry as retry:
                if attempt >= self.options.retries:
                    _give_up(retry.error, attempt + 1)
                wait = self.options.backoff * 2.0**attempt if retry.wait is None else retry.wait
                time.sleep(min(wait, self.options.max_backoff))
                attempt += 1

    def _attempt(self, url: str) -> bytes:
        deadline = time.monotonic() + self.options.total_timeout
        current = url
        http_only = tuple(s for s in self.options.allowed_schemes if s != "file")
        for _ in range(self.options.max_redirects + 1):
            response = self._request(url, current, deadline)
            location = response.headers.get("Location")
            if response.status not in _REDIRECTS or not location:
                return self._read(_where(url, current), response, deadline)
            _discard(response)
            current = urllib.parse.urljoin(current, location.strip())
            try:
                _check_url(current, http_only)
            except FetchError as exc:
                raise FetchError(exc.reason, f"{url}: redirect refused: {exc.detail}") from None
        detail = f"{url}: more than {self.options.max_redirects} redirects (last to {current})"
        raise FetchError("too-many-redirects", detail)

    def _request(self, url: str, current: str, deadline: float) -> _Response:
        where = _where(url, current)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            limit = self.options.total_timeout
            raise _Retry(FetchError("timeout", f"{where}: total_timeout={limit}s exceeded"))
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
            raise _map_error(where, exc, self.options) from None

    def _read(self, where: str, response: _Response, deadline: float) -> bytes:
        try:
            self._check_headers(where, response)
        except BaseException:
            _discard(response)
            raise
        try:
            body = self._stream(where, response, deadline)
        except BaseException:
            response.close()  # never reuse a connection left mid-body
            response.release_conn()
            raise
        response.release_conn()
        if not body:
            raise FetchError("empty-body", f"{where}: HTTP {response.status} with an empty body")
        return body

    def _check_headers(self, where: str, response: _Response) -> None:
        status = response.status
        if not 200 <= status < 300:
            detail = f"{where}: HTTP {status} {response.reason or ''}".strip()
            error = FetchError(f"http-{status}", detail)
            if status < 500 and status not in (408, 429):
                raise error
            retry_after = response.headers.get("Retry-After") if status in (429, 503) else None
            raise _Retry(error, _retry_after(retry_after))
        media_type = (response.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if self.options.reject_html and media_type in _NOT_MEDIA_TYPES:
            raise FetchError("not-media", f"{where}: HTTP {status} is {media_type}, not media")
        declared = _content_length(response)
        if declared is not None and declared > self.options.max_bytes:
            limit = self.options.max_bytes
            raise FetchError("too-large", f"{where}: Content-Length {declared} > max_bytes={limit}")

    def _stream(self, where: str, response: _Response, deadline: float) -> bytes:
        chunks: list[bytes] = []
        total = 0
        try:
            while True:
                if time.monotonic() > deadline:
                    limit = self.options.total_timeout
                    detail = f"{where}: body not complete within total_timeout={limit}s"
                    raise _Retry(FetchError("timeout", detail))
                chunk = response.read1(_CHUNK)
                if not chunk:
                    return b"".join(chunks)
                total += len(chunk)
                if total > self.options.max_bytes:
                    limit = self.options.max_bytes
                    raise FetchError("too-large", f"{where}: body exceeds max_bytes={limit}")
                chunks.append(chunk)
        except (_Retry, FetchError):
            raise
        except Exception as exc:
            raise _map_error(where, exc, self.options) from None


# --- helpers ---------------------------------------------------------------


def _where(url: str, current: str) -> str:
    return url if current == url else f"{url} (redirected to {current})"


def _give_up(error: FetchError, attempts: int) -> NoReturn:
    cause = error.__cause__
    if attempts > 1:
        error = FetchError(error.reason, f"{error.detail} (after {attempts} attempts)")
    raise error from cause


def _check_url(url: object, allowed: tuple[str, ...]) -> str:
    """Return the lower-case scheme of ``url``; raise bad-url or scheme-refused."""
    if not isinstance(url, str) or not url.strip():
        raise FetchError("bad-url", f"{url!r}: not a URL")
    try:
        parts = urllib.parse.urlsplit(url.strip())
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise FetchError("bad-url", f"{url!r}: {exc}") from exc
    scheme = parts.scheme.lower()
    if not scheme:
        raise FetchError("bad-url", f"{url!r}: no scheme")
    if scheme not in allowed:
        detail = f"{url}: scheme {scheme!r} not in allowed_schemes {allowed}"
        raise FetchError("scheme-refused", detail)
    if scheme != "file" and (not parts.hostname or any(c.isspace() for c in parts.netloc)):
        raise FetchError("bad-url", f"{url!r}: no valid host")
    return scheme


def _map_error(where: str, exc: Exception, options: FetchOptions) -> _Retry | FetchError:
    """Translate a urllib3 or socket exception into a (retryable) FetchError."""
    text = getattr(exc, "_message", None)  # NewConnectionError, without the connection repr
    if not isinstance(text, str):
        text = exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)
    if isinstance(exc, u3.NewConnectionError):  # a subclass of ConnectTimeoutError
        reason, text = "connection-error", f"cannot connect: {text}"
    elif isinstance(exc, u3.ConnectTimeoutError):
        reason, text = "timeout", f"no connection within connect_timeout={options.connect_timeout}s"
    elif isinstance(exc, (u3.ReadTimeoutError, TimeoutError)):
        reason, text = "timeout", f"no data within read_timeout={options.read_timeout}s"
    elif isinstance(exc, (u3.HTTPError, OSError)) and not isinstance(exc, u3.LocationValueError):
        reason = "connection-error"
    elif isinstance(exc, ValueError):  # LocationValueError, http.client.InvalidURL
        reason = "bad-url"
    else:
        raise exc
    error = FetchError(reason, f"{where}: {text or type(exc).__name__}")
    error.__cause__ = exc
    return error if reason == "bad-url" else _Retry(error)


def _content_length(response: _Response) -> int | None:
    value = response.headers.get("Content-Length")
    try:
        return int(value.split(",")[0]) if value else None
    except ValueError:
        return None


def _retry_after(value: str | None) -> float | None:
    """Seconds asked for by a ``Retry-After`` header (a delay or an HTTP date)."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return None if math.isnan(seconds) else max(seconds, 0.0)


def _discard(response: _Response) -> None:
    """Give a response's connection back: drain a small body, else close it."""
    length = _content_length(response)
    if length is not None and length <= _DRAIN_LIMIT:
        response.drain_conn()
    else:
        response.close()
    response.release_conn()


def _read_file(url: str, max_bytes: int) -> bytes:
    parts = urllib.parse.urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise FetchError("bad-url", f"{url}: a file URL must name a local path, not a host")
    try:
        with open(urllib.request.url2pathname(parts.path), "rb") as f:
            size = os.fstat(f.fileno()).st_size
            data = f.read(max_bytes + 1) if size <= max_bytes else b""
    except OSError as exc:
        raise FetchError("file-error", f"{url}: {exc.strerror or exc}") from exc
    if size > max_bytes or len(data) > max_bytes:
        raise FetchError("too-large", f"{url}: file exceeds max_bytes={max_bytes}")
    if not data:
        raise FetchError("empty-body", f"{url}: file is empty")
    return data
