"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.httpserver import TestServer


@pytest.fixture
def http_server() -> Iterator[TestServer]:
    """A loopback HTTP server (see tests/httpserver.py), closed after the test."""
    server = TestServer()
    try:
        yield server
    finally:
        server.close()
