"""Shared copies, one per machine: attach, count users, remove with the last, reap after kills,
and what a shared-memory directory that is too small does."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tensorstore_ds.serve.dataset
from tensorstore_ds import TensorStoreDataset
from tensorstore_ds.errors import SharedMemoryError
from tensorstore_ds.serve.copies import LOADING, LOCK, attach_or_load, copy_path, in_use
from tensorstore_ds.serve.shm import SharedBuffer
from tests.stores import build_image_store

ROOT = Path(__file__).resolve().parents[2]


def filler(value: int, calls: list[int]) -> object:
    def fill(buffer: SharedBuffer) -> None:
        calls.append(value)
        buffer.array("uint8", (buffer.size,))[:] = value

    return fill


@pytest.fixture
def shm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TENSORSTORE_DS_SHM_DIR", str(tmp_path))
    return tmp_path


def test_the_first_loads_the_others_attach_the_last_removes(shm: Path) -> None:
    calls: list[int] = []
    first = attach_or_load("k1", 8192, filler(7, calls))  # type: ignore[arg-type]
    second = attach_or_load("k1", 8192, filler(9, calls))  # type: ignore[arg-type]
    assert calls == [7] and first.path == second.path == copy_path("k1")
    assert np.all(second.array("uint8", (8192,)) == 7) and in_use("k1")
    assert sorted(os.listdir(shm)) == sorted([os.path.basename(first.path), os.path.basename(first.path) + LOCK])
    del first
    gc.collect()
    assert Path(copy_path("k1")).exists()  # the second still uses it
    del second
    gc.collect()
    assert os.listdir(shm) == [] and not in_use("k1")


def test_a_failed_load_leaves_nothing(shm: Path) -> None:
    def broken(buffer: SharedBuffer) -> None:
        raise ValueError("the store is damaged")

    with pytest.raises(ValueError, match="damaged"):
        attach_or_load("k2", 4096, broken)
    assert os.listdir(shm) == []


def run(code: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)


def test_copies_whose_users_were_all_killed_are_reaped(shm: Path) -> None:
    killed = run(
        "import os, signal; from tensorstore_ds.serve.copies import attach_or_load\n"
        "b = attach_or_load('k3', 4096, lambda b: None); os.kill(os.getpid(), signal.SIGKILL)"
    )
    assert killed.returncode == -signal.SIGKILL
    assert Path(copy_path("k3")).exists() and not in_use("k3")  # left behind, used by nobody
    mine = attach_or_load("k4", 4096, lambda b: None)
    assert not Path(copy_path("k3")).exists() and not Path(copy_path("k3") + LOCK).exists()
    del mine


def test_a_loader_killed_mid_load_is_replaced(shm: Path) -> None:
    killed = run(
        "import os, signal; from tensorstore_ds.serve.copies import attach_or_load\n"
        "attach_or_load('k5', 4096, lambda b: os.kill(os.getpid(), signal.SIGKILL))"
    )
    assert killed.returncode == -signal.SIGKILL and Path(copy_path("k5") + LOADING).exists()
    calls: list[int] = []
    copy = attach_or_load("k5", 4096, filler(3, calls))  # type: ignore[arg-type]
    assert calls == [3] and np.all(copy.array("uint8", (4096,)) == 3)
    assert not Path(copy_path("k5") + LOADING).exists()
    del copy
    gc.collect()
    assert os.listdir(shm) == []


def test_a_small_shared_memory_directory(shm: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As in a Docker container (64 MB /dev/shm): auto falls back to paged and says why; ram fails with the fix."""
    store = build_image_store(tmp_path / "store")
    monkeypatch.setattr(tensorstore_ds.serve.dataset, "free_bytes", lambda directory: 1000)
    auto = TensorStoreDataset(store, memory_budget="1GiB", progress=False)
    assert auto.mode == "paged" and f"{shm} has only 1000 B free" in auto.mode_reason
    assert "--shm-size" in auto.mode_reason and "TENSORSTORE_DS_SHM_DIR" in auto.mode_reason
    with pytest.raises(SharedMemoryError, match="shared memory.*--shm-size.*TENSORSTORE_DS_SHM_DIR") as info:
        TensorStoreDataset(store, mode="ram", memory_budget="1GiB", progress=False)
    assert isinstance(info.value, OSError) and info.value.free == 1000
