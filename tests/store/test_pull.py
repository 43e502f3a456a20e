"""``pull``: copying a store from a loopback HTTP server, verified, resumable, with dropped connections."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

import tensorstore_ds.store.transfer
from tensorstore_ds import open_store, verify
from tensorstore_ds.cli import main
from tensorstore_ds.errors import StoreError, StoreFormatError
from tensorstore_ds.store.pull import PULL_DIR, pull
from tests.httpserver import Request, Response, TestServer, static_response
from tests.stores import CHUNK_BYTES, assert_same_values, build_image_store, chunk_file, copy_tree, snapshot, tree_bytes

TARGET = "images/c/2/0/0/0"


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_image_store(tmp_path_factory.mktemp("pull") / "store")


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tensorstore_ds.store.transfer, "BACKOFF", 0.01)


@pytest.fixture
def url(local: Path, http_server: TestServer) -> str:
    http_server.serve_dir(local, "/store/")
    return http_server.url_for("/store")


def assert_pulled(dest: Path, local: Path) -> None:
    assert tree_bytes(dest) == tree_bytes(local)  # every file, the manifest included, byte for byte
    assert verify(dest, progress=False).ok
    assert_same_values(snapshot(open_store(dest)), snapshot(open_store(local)))


def test_pull_copies_and_verifies(url: str, local: Path, tmp_path: Path, http_server: TestServer) -> None:
    manifest = pull(url, tmp_path / "copy", workers=4, progress=False)
    assert manifest.num_samples == len(open_store(local))
    assert_pulled(tmp_path / "copy", local)
    assert all(n == 1 for path, n in http_server.hits.items() if not path.endswith("manifest.json"))
    http_server.reset()
    pull(url, tmp_path / "copy", progress=False)  # up to date: only the manifest is read
    assert set(http_server.hits) == {"/store/manifest.json"}


def test_pull_command(url: str, local: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pull", url, str(tmp_path / "copy"), "--quiet", "--workers", "2"]) == 0
    assert "all verified" in capsys.readouterr().out
    assert_pulled(tmp_path / "copy", local)
    assert main(["pull", url + "/nowhere", str(tmp_path / "other"), "--quiet"]) == 2
    assert "no tensorstore_ds store" in capsys.readouterr().err


def dropping(root: Path, prefix: str, plan: dict[str, Any]) -> Any:
    """Serve ``root``; the requests for TARGET numbered in ``plan["drop"]`` (from 1) drop after 500 bytes."""

    def handler(request: Request) -> Response:
        response = static_response(root, request.path[len(prefix) :], request)
        if request.path.endswith(TARGET):
            plan["seen"] += 1
            plan["ranges"].append(request.headers.get("range"))
            if plan["seen"] in plan["drop"]:
                return Response(response.status, response.body, response.headers, drop_after=500)
        return response

    return handler


def test_interrupted_pull_resumes(
    local: Path, tmp_path: Path, http_server: TestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tensorstore_ds.store.transfer, "BLOCK", 1024)  # three requests per image chunk
    plan: dict[str, Any] = {"seen": 0, "drop": range(2, 10), "ranges": []}
    http_server.route("/store/", dropping(local, "/store/", plan), prefix=True)
    url, dest = http_server.url_for("/store"), tmp_path / "copy"
    with pytest.raises(StoreError, match=re.escape(f"{url}/{TARGET}") + ".*1024 of 3072 bytes arrived, 4 attempts"):
        pull(url, dest, workers=2, progress=False, retries=3)
    assert not (dest / "manifest.json").exists()  # never mistaken for a finished store
    assert (dest / PULL_DIR / TARGET).stat().st_size == 1024  # the first block arrived and was kept
    with pytest.raises(StoreError):
        open_store(dest)
    done = [name for name in tree_bytes(dest) if not name.startswith(PULL_DIR)]
    assert any("/c/" in name for name in done)
    plan.update(seen=0, ranges=[], drop=())  # the server is healthy again
    http_server.reset()
    pull(url, dest, workers=2, progress=False)
    assert plan["ranges"] == ["bytes=1024-2047", "bytes=2048-3071"]  # resumed where it stopped
    assert all(http_server.hits[f"/store/{name}"] == 0 for name in done)  # nothing was fetched again
    assert_pulled(dest, local)
    assert not (dest / PULL_DIR).exists()


def test_one_dropped_connection_is_retried(local: Path, tmp_path: Path, http_server: TestServer) -> None:
    plan: dict[str, Any] = {"seen": 0, "drop": {1}, "ranges": []}
    http_server.route("/store/", dropping(local, "/store/", plan), prefix=True)
    pull(http_server.url_for("/store"), tmp_path / "copy", progress=False)
    assert plan["ranges"] == [f"bytes=0-{CHUNK_BYTES - 1}"] * 2  # dropped, then asked again
    assert_pulled(tmp_path / "copy", local)


def test_garbage_partial_file_is_downloaded_afresh(url: str, local: Path, tmp_path: Path) -> None:
    dest = tmp_path / "copy"
    (dest / PULL_DIR / "images" / "c" / "0" / "0" / "0").mkdir(parents=True)
    (dest / PULL_DIR / "images" / "c" / "0" / "0" / "0" / "0").write_bytes(b"garbage" * 10)
    pull(url, dest, progress=False)
    assert_pulled(dest, local)


def test_damaged_copy_is_repaired(url: str, local: Path, tmp_path: Path, http_server: TestServer) -> None:
    dest = tmp_path / "copy"
    pull(url, dest, progress=False)
    chunk_file(dest, 1).unlink()
    data = bytearray(chunk_file(dest, 3).read_bytes())
    data[7] ^= 0xFF
    chunk_file(dest, 3).write_bytes(bytes(data))  # same size: only the checksum tells
    http_server.reset()
    pull(url, dest, progress=False)  # a missing file: the copy is checked and repaired
    assert sorted(p for p in http_server.hits if "/c/" in p) == [f"/store/images/c/{k}/0/0/0" for k in (1, 3)]
    assert_pulled(dest, local)


def test_altered_file_on_the_server(local: Path, tmp_path: Path, http_server: TestServer) -> None:
    served = copy_tree(local, tmp_path / "served")
    data = bytearray(chunk_file(served, 2).read_bytes())
    data[0] ^= 1
    chunk_file(served, 2).write_bytes(bytes(data))
    http_server.serve_dir(served, "/s/")
    url = http_server.url_for("/s")
    with pytest.raises(StoreFormatError, match=re.escape(f"{url}/{TARGET}") + ".*sha256"):
        pull(url, tmp_path / "copy", progress=False)
    assert not (tmp_path / "copy" / "manifest.json").exists()
    assert not (tmp_path / "copy" / TARGET).exists() and not (tmp_path / "copy" / PULL_DIR / TARGET).exists()


def test_pull_refuses_a_foreign_directory(url: str, local: Path, tmp_path: Path) -> None:
    dest = tmp_path / "mine"
    dest.mkdir()
    (dest / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match=re.escape(str(dest)) + ".*not empty"):
        pull(url, dest, progress=False)
    other = build_image_store(tmp_path / "other", seed=2)
    with pytest.raises(StoreError, match="holds another store"):
        pull(url, other, progress=False)


def test_pull_from_any_fsspec_url(local: Path, tmp_path: Path) -> None:
    pull(f"file://{local}", tmp_path / "copy", progress=False)
    assert_pulled(tmp_path / "copy", local)
