"""A real S3-compatible server on 127.0.0.1 for tests and benchmarks, and a proxy that injects faults.

:class:`S3Server` runs moto's standalone server (``ThreadedMotoServer``) on a
free loopback port; :meth:`S3Server.bucket` makes a fresh bucket and
:attr:`S3Server.storage_options` are what s3fs needs to reach it.

:class:`FaultProxy` is a small reverse proxy on another loopback port that
forwards every request to the server, except those a rule matches: a rule
answers ``503 SlowDown`` (what S3 says when throttling), answers ``403``, or
reads part of a request body and drops the connection, a set number of times.
Point s3fs at :attr:`FaultProxy.storage_options` to go through it.
"""

from __future__ import annotations

import http.client
import socket
import threading
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

KEY, SECRET, REGION = "testing", "testing", "us-east-1"
SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def s3_options(endpoint: str, key: str = KEY, secret: str = SECRET) -> dict[str, Any]:
    """s3fs storage options for an endpoint (no instance cache: each test sees the server as it is)."""
    return {
        "key": key,
        "secret": secret,
        "endpoint_url": endpoint,
        "client_kwargs": {"region_name": REGION},
        "skip_instance_cache": True,
        "use_listings_cache": False,
    }


class S3Server:
    """moto's S3 server on a free loopback port (stop it with :meth:`close`)."""

    def __init__(self) -> None:
        import logging

        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request in test logs
        self.port = free_port()
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.storage_options = s3_options(self.endpoint)

    def bucket(self, name: str | None = None) -> str:
        """Make a new bucket; return its name."""
        import boto3

        name = name or f"b-{uuid.uuid4().hex[:12]}"
        client = boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=KEY, aws_secret_access_key=SECRET, region_name=REGION
        )
        client.create_bucket(Bucket=name)
        return name

    def close(self) -> None:
        self._server.stop()


@dataclass
class Rule:
    """Misbehave on requests whose method and path match, ``times`` times.

    ``action`` is ``"503"`` (SlowDown), ``"403"`` (access denied), or
    ``"drop"`` (read half the body, then close the connection unanswered).
    """

    method: str
    path_contains: str
    action: str
    times: int = 1
    hits: int = 0


class FaultProxy:
    """A loopback reverse proxy in front of an S3 server that applies :class:`Rule`s."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.rules: list[Rule] = []
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _any(self) -> None:
                proxy.handle(self)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.storage_options = s3_options(self.endpoint)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def add(self, method: str, path_contains: str, action: str, times: int = 1) -> Rule:
        rule = Rule(method, path_contains, action, times)
        self.rules.append(rule)
        return rule

    def _rule_for(self, method: str, path: str) -> Rule | None:
        with self._lock:
            self.requests.append((method, path))
            for rule in self.rules:
                if rule.method == method and rule.path_contains in path and rule.hits < rule.times:
                    rule.hits += 1
                    return rule
        return None

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        rule = self._rule_for(h.command, h.path)
        if rule is not None and rule.action == "drop":
            h.rfile.read(length // 2)
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
            return
        body = h.rfile.read(length) if length else b""
        if rule is not None:
            status, text = (503, SLOW_DOWN) if rule.action == "503" else (403, _denied())
            self._answer(h, status, {"Content-Type": "application/xml"}, text)
            return
        conn = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=60)
        try:
            headers = {k: v for k, v in h.headers.items() if k.lower() not in ("host", "connection")}
            headers["Host"] = f"127.0.0.1:{self.upstream_port}"
            conn.request(h.command, h.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            out = {k: v for k, v in resp.getheaders() if k.lower() not in ("transfer-encoding", "connection")}
            self._answer(h, resp.status, out, data, head=h.command == "HEAD")
        finally:
            conn.close()

    @staticmethod
    def _answer(
        h: BaseHTTPRequestHandler, status: int, headers: dict[str, str], body: bytes, head: bool = False
    ) -> None:
        h.send_response(status)
        for k, v in headers.items():
            if k.lower() != "content-length":
                h.send_header(k, v)
        h.send_header("Content-Length", headers.get("Content-Length", str(len(body))) if head else str(len(body)))
        h.end_headers()
        if not head:
            h.wfile.write(body)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _denied() -> bytes:
    return (
        b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InvalidAccessKeyId</Code>'
        b"<Message>The AWS Access Key Id you provided does not exist in our records.</Message></Error>"
    )
