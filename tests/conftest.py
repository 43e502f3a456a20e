"""Shared pytest fixtures: every test runs with its own caches, offline."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.httpserver import TestServer
from tests.media import isolate_hf_cache


@pytest.fixture(autouse=True)
def isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The Hugging Face cache, offline mode and tensorstore_ds's cache, all inside this test's ``tmp_path``.

    No test reads or writes ``~/.cache``, and no environment variable leaks from one test to the next.
    """
    monkeypatch.setenv("TENSORSTORE_DS_CACHE", str(tmp_path / "tensorstore_ds-cache"))
    return isolate_hf_cache(monkeypatch, tmp_path)


@pytest.fixture
def http_server() -> Iterator[TestServer]:
    """A loopback HTTP server (see tests/httpserver.py), closed after the test."""
    server = TestServer()
    try:
        yield server
    finally:
        server.close()
