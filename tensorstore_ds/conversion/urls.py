"""URL helpers of the fetcher: checking URLs, mapping transport errors, reading headers.

Every failure becomes a :class:`~tensorstore_ds.errors.FetchError` with a
reason code (see :mod:`tensorstore_ds.conversion.fetch`); a failure worth
retrying is wrapped in :class:`Retry`.
"""

from __future__ import annotations

import email.utils
import math
import os
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from typing import Protocol

import urllib3
from urllib3 import exceptions as u3

from ..errors import FetchError

SUPPORTED_SCHEMES = ("http", "https", "file")
DRAIN_LIMIT = 64 * 1024  # drain redirect/error bodies up to this size to reuse the connection
Response = urllib3.BaseHTTPResponse


class Timeouts(Protocol):
    """The timeouts an error message names (a FetchOptions)."""

    @property
    def connect_timeout(self) -> float: ...

    @property
    def read_timeout(self) -> float: ...


class Retry(Exception):
    """An attempt failed in a way worth retrying, maybe after ``wait`` s."""

    def __init__(self, error: FetchError, wait: float | None = None) -> None:
        super().__init__(error)
        self.error = error
        self.wait = wait


def check_url(url: object, allowed: tuple[str, ...]) -> str:
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


def map_error(where: str, exc: Exception, options: Timeouts) -> Retry | FetchError:
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
    return error if reason == "bad-url" else Retry(error)


def content_length(response: Response) -> int | None:
    value = response.headers.get("Content-Length")
    try:
        return int(value.split(",")[0]) if value else None
    except ValueError:
        return None


def retry_after(value: str | None) -> float | None:
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


def discard(response: Response) -> None:
    """Give a response's connection back: drain a small body, else close it."""
    length = content_length(response)
    if length is not None and length <= DRAIN_LIMIT:
        response.drain_conn()
    else:
        response.close()
    response.release_conn()


def read_file(url: str, max_bytes: int) -> bytes:
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
