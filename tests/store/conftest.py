"""Fixtures for object-storage tests: one moto S3 server per session, a fresh bucket per test."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.s3server import FaultProxy, S3Server


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 server on a free loopback port, for the whole session."""
    server = S3Server()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def s3(s3_server: S3Server) -> tuple[str, dict[str, Any]]:
    """``("s3://<new bucket>", storage_options)``: an empty bucket of the session's server."""
    return f"s3://{s3_server.bucket()}", dict(s3_server.storage_options)


@pytest.fixture
def fault_proxy(s3_server: S3Server) -> Iterator[FaultProxy]:
    """A proxy in front of the S3 server that injects faults (see tests/s3server.py)."""
    proxy = FaultProxy(s3_server.port)
    try:
        yield proxy
    finally:
        proxy.close()
