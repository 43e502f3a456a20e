"""A real Dask cluster on loopback for the tests: 2 worker processes of 1 thread each."""

from __future__ import annotations

import logging
from typing import Any

import pytest


def local_cluster(**options: Any) -> Any:
    """A ``distributed.LocalCluster`` on 127.0.0.1, quiet, without a dashboard (use it with ``with``).

    ``options`` add to or override the defaults (e.g. ``local_directory``). The test is skipped
    when distributed is not installed.
    """
    distributed = pytest.importorskip("distributed")
    defaults: dict[str, Any] = {
        "n_workers": 2,
        "threads_per_worker": 1,
        "processes": True,
        "host": "127.0.0.1",
        "dashboard_address": None,
        "silence_logs": logging.WARNING,
    }
    return distributed.LocalCluster(**{**defaults, **options})
