"""A real threaded HTTP/1.1 server on 127.0.0.1 for tests and benchmarks.

:class:`TestServer` listens on a random loopback port and answers from

* scripted routes (:meth:`TestServer.route`): a handler, one
  :class:`Response`, or a list of them played in turn (the last repeats).
  A :class:`Response` can set status, headers and body, and misbehave: wait
  before answering (or never answer), stall or drop the connection part-way
  through the body, trickle it slowly, or send more than it advertises;
* directories (:meth:`TestServer.serve_dir`): static files for GET and HEAD
  with single-range ``Range`` support (206, 416).

For example ``server.route("/flaky", [500, 500, b"payload"])`` answers two
500s, then the payload; ``server.url + "/flaky"`` is its URL.
"""

from __future__ import annotations

import email.utils
import itertools
import mimetypes
import socket
import sys
import threading
import traceback
import urllib.parse
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from socketserver import TCPServer
from typing import Literal

__all__ = ["Request", "Response", "TestServer", "parse_range", "static_response"]

AUTO: Literal["auto"] = "auto"


@dataclass(frozen=True)
class Request:
    """One request as the server received it.

    Parameters
    ----------
    method, path, query
        ``"GET"``, ``"HEAD"``...; the path (still percent-encoded) and the
        query string, split at ``?``.
    headers
        Request headers, names lower-cased.
    body, client
        The request body; the client's ``(host, port)``, one per connection.
    """

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes = b""
    client: tuple[str, int] = ("", 0)


@dataclass(frozen=True)
class Response:
    """A scripted answer, possibly misbehaving.

    Parameters
    ----------
    status, body
        HTTP status code; the bytes to send (not sent for HEAD).
    headers
        Extra headers; Content-Type defaults to ``application/octet-stream``.
    content_length
        ``"auto"`` sends ``len(body)``; an int advertises that length (one
        different from the body makes the server close the connection after
        it); ``None`` sends no Content-Length (chunked if ``chunked``, else
        the body ends when the connection closes).
    chunked
        Send the body with ``Transfer-Encoding: chunked``.
    delay
        Seconds to wait before answering; :meth:`never` waits until close.
    stall_after, stall
        After ``stall_after`` body bytes, sleep ``stall`` seconds.
    drop_after
        Close the connection after this many body bytes.
    trickle, chunk_size
        Send the body in pieces of ``chunk_size`` bytes, sleeping ``trickle``
        seconds after each one.
    """

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_length: int | Literal["auto"] | None = AUTO
    chunked: bool = False
    delay: float = 0.0
    stall_after: int | None = None
    stall: float = 0.0
    drop_after: int | None = None
    trickle: float = 0.0
    chunk_size: int = 64 * 1024

    @classmethod
    def redirect(cls, location: str, status: int = 302) -> Response:
        """A redirect to ``location`` (absolute or relative)."""
        return cls(status, b"", {"Location": location})

    @classmethod
    def never(cls) -> Response:
        """A response that never comes (the handler waits until close)."""
        return cls(delay=24 * 3600.0)


Handler = Callable[[Request], Response]
Script = Handler | Response | bytes | int | Sequence[Response | bytes | int]


def _as_response(item: Response | bytes | int) -> Response:
    if isinstance(item, Response):
        return item
    if isinstance(item, (bytes, bytearray)):
        return Response(200, bytes(item))
    return Response(int(item))


def _handler(script: Script) -> Handler:
    """Turn any route script into a handler; lists play in turn, last repeats."""
    if callable(script):
        return script
    if isinstance(script, (Response, bytes, bytearray, int)):
        fixed = _as_response(script)
        return lambda request: fixed
    items = [_as_response(item) for item in script]
    if not items:
        raise ValueError("a route script needs at least one response")
    counter = itertools.count()  # next() on it is atomic under the GIL
    return lambda request: items[min(next(counter), len(items) - 1)]


def parse_range(header: str | None, size: int) -> tuple[int, int] | Literal["unsatisfiable"] | None:
    """Interpret a single ``Range: bytes=...`` header for a file of ``size`` bytes.

    Returns
    -------
    tuple[int, int] | None | str
        The inclusive ``(first, last)`` byte positions, ``None`` to ignore the
        header (absent, malformed or multi-range: send the whole file), or
        ``"unsatisfiable"`` (answer 416).
    """
    if not header:
        return None
    unit, _, spec = header.partition("=")
    first, dash, last = spec.strip().partition("-")
    if unit.strip().lower() != "bytes" or "," in spec or not dash:
        return None
    try:
        if not first.strip():
            suffix = int(last)
            if suffix <= 0 or size == 0:
                return "unsatisfiable"
            return max(0, size - suffix), size - 1
        start, end = int(first), (int(last) if last.strip() else None)
    except ValueError:
        return None
    if start < 0 or (end is not None and end < start):
        return None
    if start >= size:
        return "unsatisfiable"
    return start, size - 1 if end is None else min(end, size - 1)


def static_response(root: Path, relpath: str, request: Request) -> Response:
    """Serve ``root/relpath`` honouring ``Range``; a 404 outside ``root``.

    Custom handlers can alter the result, e.g.
    ``dataclasses.replace(static_response(root, name, req), drop_after=1000)``.
    """
    base = Path(root).resolve()
    target = (base / urllib.parse.unquote(relpath).lstrip("/")).resolve()
    if not target.is_relative_to(base) or not target.is_file():
        return Response(404, b"not found", {"Content-Type": "text/plain"})
    data, stat = target.read_bytes(), target.stat()
    headers = {
        "Content-Type": mimetypes.guess_type(target.name)[0] or "application/octet-stream",
        "Accept-Ranges": "bytes",
        "ETag": f'"{stat.st_size:x}-{stat.st_mtime_ns:x}"',
        "Last-Modified": email.utils.formatdate(stat.st_mtime, usegmt=True),
    }
    wanted = parse_range(request.headers.get("range"), len(data))
    if wanted is None:
        return Response(200, data, headers)
    if wanted == "unsatisfiable":
        return Response(416, b"", {**headers, "Content-Range": f"bytes */{len(data)}"})
    first, last = wanted
    headers["Content-Range"] = f"bytes {first}-{last}/{len(data)}"
    return Response(206, data[first : last + 1], headers)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512
    owner: TestServer

    def server_bind(self) -> None:
        TCPServer.server_bind(self)  # skip HTTPServer's reverse DNS lookup (getfqdn)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # a client hanging up is no error
            super().handle_error(request, client_address)  # type: ignore[arg-type]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    timeout = 60.0  # idle keep-alive connections end eventually

    def setup(self) -> None:
        super().setup()
        self.server.owner._track(self.connection, True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.owner._track(self.connection, False)

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        owner = self.server.owner
        length = int(self.headers.get("Content-Length") or 0)
        path, _, query = self.path.partition("?")
        headers = {name.lower(): value for name, value in self.headers.items()}
        body = self.rfile.read(length)
        request = Request(self.command, path, query, headers, body, self.client_address[:2])
        owner._record(request)
        try:
            response = owner._dispatch(request)
        except Exception as exc:  # a bug in a test's handler: report it, answer 500
            owner.errors.append(exc)
            traceback.print_exc(file=sys.stderr)
            response = Response(500, b"handler error", {"Content-Type": "text/plain"})
        if owner._sleep(owner.delay + response.delay):
            self.close_connection = True
            return
        try:
            self._send(response)
        except OSError:  # the client went away
            self.close_connection = True

    do_HEAD = do_POST = do_PUT = do_DELETE = do_GET

    def _send(self, response: Response) -> None:
        body = response.body
        advertised = len(body) if response.content_length == AUTO else response.content_length
        self.send_response(response.status)
        given = {name.lower() for name in response.headers}
        for name, value in response.headers.items():
            self.send_header(name, value)
        if "content-type" not in given:
            self.send_header("Content-Type", "application/octet-stream")
        if response.chunked:
            self.send_header("Transfer-Encoding", "chunked")
        elif advertised is not None and "content-length" not in given:
            self.send_header("Content-Length", str(advertised))
        lies = advertised is not None and advertised != len(body) and not response.chunked
        unframed = advertised is None and not response.chunked
        if lies or unframed or response.drop_after is not None:
            self.send_header("Connection", "close")  # also sets close_connection
        self.end_headers()
        if self.command != "HEAD":
            self._write_body(response)

    def _write_body(self, response: Response) -> None:
        body, pos, stalled = response.body, 0, False
        cuts = [c for c in (response.stall_after, response.drop_after) if c is not None]
        while True:
            if response.drop_after is not None and pos >= response.drop_after:
                self._drop()
                return
            if not stalled and response.stall_after is not None and pos >= response.stall_after:
                stalled = True
                if self.server.owner._sleep(response.stall):
                    return self._drop()
            if pos >= len(body):
                break
            end = min([len(body), pos + max(1, response.chunk_size)] + [c for c in cuts if c > pos])
            self._write(body[pos:end], response.chunked)
            pos = end
            if response.trickle and pos < len(body) and self.server.owner._sleep(response.trickle):
                return self._drop()
        if response.chunked:
            self.wfile.write(b"0\r\n\r\n")

    def _write(self, data: bytes, chunked: bool) -> None:
        if chunked:
            data = b"%x\r\n%s\r\n" % (len(data), data)
        self.wfile.write(data)
        self.wfile.flush()

    def _drop(self) -> None:
        self.close_connection = True
        _shutdown(self.connection)


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class TestServer:
    """A threaded HTTP/1.1 server on ``127.0.0.1`` with a random port.

    Parameters
    ----------
    delay
        Seconds every request waits before being answered (settable later).
    host
        The loopback address to listen on: ``127.0.0.1`` to ``127.0.0.16``
        are all loopback on Linux, so one test can play several hosts.

    Attributes
    ----------
    url
        ``"http://HOST:PORT"``, without a trailing slash.
    hits
        Requests received per path (a Counter: unknown paths give 0).
    requests
        Every request received, in order.
    errors
        Exceptions raised by route handlers (they were answered with 500).
    """

    __test__ = False  # not a pytest test class

    def __init__(self, delay: float = 0.0, host: str = "127.0.0.1") -> None:
        self.delay = delay
        self.hits: Counter[str] = Counter()
        self.requests: list[Request] = []
        self.errors: list[Exception] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._routes: dict[str, Handler] = {}
        self._prefixes: list[tuple[str, Handler]] = []
        self._sockets: set[socket.socket] = set()
        self._server = _Server((host, 0), _Handler)
        self._server.owner = self
        self.port: int = self._server.server_address[1]
        self.url = f"http://{host}:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"TestServer:{self.port}",
            daemon=True,
        )
        self._thread.start()

    def url_for(self, path: str) -> str:
        """The absolute URL of ``path`` (which starts with ``/``)."""
        return self.url + path

    def route(self, path: str, script: Script, *, prefix: bool = False) -> None:
        """Answer requests for ``path`` (or, with ``prefix``, every path under it).

        Parameters
        ----------
        path
            The request path, without query string.
        script
            A handler ``f(Request) -> Response``, a :class:`Response`, bytes
            (a 200 with that body), an int (that status, empty body), or a
            list of those answering successive requests, the last repeating.
        prefix
            Match every path starting with ``path``; the longest prefix wins,
            exact routes win over prefixes.
        """
        handler = _handler(script)
        with self._lock:
            if prefix:
                self._prefixes = [(p, h) for p, h in self._prefixes if p != path]
                self._prefixes.append((path, handler))
                self._prefixes.sort(key=lambda item: len(item[0]), reverse=True)
            else:
                self._routes[path] = handler

    def serve_dir(self, root: Path, prefix: str = "/") -> None:
        """Serve the files under ``root`` at ``prefix`` (GET, HEAD, Range)."""
        root = Path(root)
        handler = lambda req: static_response(root, req.path[len(prefix) :], req)  # noqa: E731
        self.route(prefix, handler, prefix=True)

    def reset(self) -> None:
        """Forget recorded hits and requests (routes stay)."""
        with self._lock:
            self.hits.clear()
            self.requests.clear()

    def close(self) -> None:
        """Stop serving, wake sleeping handlers and close open connections."""
        self._closing.set()
        self._server.shutdown()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            _shutdown(sock)
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> TestServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- used by the handler -------------------------------------------------

    def _record(self, request: Request) -> None:
        with self._lock:
            self.hits[request.path] += 1
            self.requests.append(request)

    def _dispatch(self, request: Request) -> Response:
        with self._lock:
            handler = self._routes.get(request.path)
            if handler is None:
                handler = next((h for p, h in self._prefixes if request.path.startswith(p)), None)
        if handler is None:
            return Response(404, b"no route", {"Content-Type": "text/plain"})
        return handler(request)

    def _sleep(self, seconds: float) -> bool:
        """Sleep unless closing; True when the server is closing."""
        if seconds > 0:
            return self._closing.wait(seconds)
        return self._closing.is_set()

    def _track(self, sock: socket.socket, alive: bool) -> None:
        with self._lock:
            (self._sockets.add if alive else self._sockets.discard)(sock)
