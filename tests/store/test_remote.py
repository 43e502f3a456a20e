"""Stores at URLs: open_store and TensorStoreDataset over a real loopback HTTP server, the cache, zarr."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from torch.utils.data import DataLoader

from tensorstore_ds import ChunkShuffleSampler, TensorStoreDataset, collate, open_store
from tensorstore_ds.cli import main
from tensorstore_ds.errors import StoreError, StoreFormatError, StoreNotFoundError
from tensorstore_ds.store.chunked import LocalFiles
from tensorstore_ds.store.remote import RemoteFiles, default_cache_dir
from tests.httpserver import Response, TestServer, static_response
from tests.stores import (
    BAD_ROW,
    CHUNK_BYTES,
    SAMPLES,
    assert_same_items,
    assert_same_values,
    batch_items,
    build_image_store,
    chunk_file,
    chunk_files_bytes,
    copy_tree,
    snapshot,
)

MODES = ["ram", "paged"]
BUDGETS = {"ram": "1GiB", "paged": f"{2 * CHUNK_BYTES}"}


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_image_store(tmp_path_factory.mktemp("remote") / "store")


@pytest.fixture(scope="module")
def values(local: Path) -> dict[str, Any]:
    out = snapshot(open_store(local))
    assert out["source_row"].tolist() == [r for r in range(SAMPLES) if r != BAD_ROW]
    return out


@pytest.fixture(autouse=True)
def cache_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TENSORSTORE_DS_CACHE", str(tmp_path / "cache-root"))
    monkeypatch.setenv("TENSORSTORE_DS_SHM_DIR", str(tmp_path / "shm"))
    (tmp_path / "shm").mkdir()
    return tmp_path / "cache-root"


@pytest.fixture
def served(local: Path, http_server: TestServer) -> Iterator[str]:
    http_server.serve_dir(local, "/stores/a/")
    yield http_server.url_for("/stores/a")


def partials(cache: Path) -> list[Path]:
    """Temporary files of downloads in a cache."""
    return sorted((cache / ".partial").iterdir()) if (cache / ".partial").is_dir() else []


def chunk_hits(server: TestServer) -> dict[str, int]:
    return {path: n for path, n in server.hits.items() if "/c/" in path}


def items(ds: Any) -> list[dict[str, Any]]:
    return batch_items(ds, list(range(len(ds))))


# --- reading ------------------------------------------------------------------------------


def test_open_store_url_reads_what_the_local_store_holds(
    served: str, values: dict[str, Any], cache_env: Path, http_server: TestServer
) -> None:
    store = open_store(served)
    assert store.location == served and isinstance(store.files, RemoteFiles)
    assert store.path == default_cache_dir(served) and str(store.path).startswith(str(cache_env / "remote"))
    assert repr(store).startswith(f"Store({served!r}")
    assert chunk_hits(http_server) == {}  # opening fetches metadata only
    assert store.array("images")[7].tobytes() == values["images"][7].tobytes()
    assert list(chunk_hits(http_server)) == ["/stores/a/images/c/1/0/0/0"]
    assert_same_values(snapshot(store), values)
    assert all(n == 1 for n in chunk_hits(http_server).values())  # every file downloaded once


def test_file_url_and_path_are_local(local: Path, values: dict[str, Any]) -> None:
    store = open_store(f"file://{local}")
    assert isinstance(store.files, LocalFiles) and store.path == local
    assert_same_values(snapshot(store), values)


@pytest.mark.parametrize("mode", MODES)
def test_dataset_from_url_equals_local(served: str, local: Path, mode: str, http_server: TestServer) -> None:
    fields = ["image", "caption", "captions", "meta", "image_size", "source_row"]
    remote = TensorStoreDataset(served, fields=fields, mode=mode, memory_budget=BUDGETS[mode], progress=False)
    assert remote.mode == mode and repr(remote).startswith(f"TensorStoreDataset({served!r}")
    if mode == "ram":  # everything was downloaded up front
        assert len(chunk_hits(http_server)) == len(open_store(local).manifest.files) - sum(
            "zarr.json" in n or n == "failures.jsonl" for n in open_store(local).manifest.files
        )
    expected = items(TensorStoreDataset(local, fields=fields, mode="ram", progress=False))
    assert_same_items(items(remote), expected)
    clone = pickle.loads(pickle.dumps(remote))
    assert_same_items(items(clone), expected)


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_workers_share_the_cache(
    served: str, local: Path, tmp_path: Path, http_server: TestServer, context: str
) -> None:
    cache = tmp_path / "shared-cache"
    ds = TensorStoreDataset(served, mode="paged", memory_budget=BUDGETS["paged"], progress=False, cache_dir=cache)
    sampler = ChunkShuffleSampler(ds, seed=1)
    loader = DataLoader(
        ds, batch_size=3, sampler=sampler, collate_fn=collate, num_workers=2, multiprocessing_context=context
    )
    seen = {}
    for batch in loader:
        for i, index in enumerate(batch["index"].tolist()):
            seen[index] = (batch["image"][i].numpy(), batch["caption"][i])
    expected = open_store(local)
    assert sorted(seen) == list(range(len(expected)))
    for index, (image, caption) in seen.items():
        np.testing.assert_array_equal(image, expected.array("images")[index].transpose(2, 0, 1))
        assert caption == expected.captions[index]
    assert partials(cache) == []
    assert chunk_files_bytes(cache) > 0


def test_concurrent_fetches_of_one_file(served: str, local: Path, tmp_path: Path, http_server: TestServer) -> None:
    """Two readers (as two processes would) download the same chunks at once into one cache."""
    cache = tmp_path / "cache"
    http_server.delay = 0.05
    stores = [open_store(served, cache_dir=cache) for _ in range(2)]
    results: list[Any] = [None, None]

    def read(s: int) -> None:
        results[s] = stores[s].array("images")[:]

    threads = [threading.Thread(target=read, args=(s,)) for s in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    expected = open_store(local).array("images")[:]
    for result in results:
        np.testing.assert_array_equal(result, expected)
    assert partials(cache) == []


# --- the cache ------------------------------------------------------------------------------


def test_second_open_downloads_no_chunk(served: str, values: dict[str, Any], http_server: TestServer) -> None:
    assert_same_values(snapshot(open_store(served)), values)
    http_server.reset()
    again = open_store(served)
    assert_same_values(snapshot(again), values)
    ds = TensorStoreDataset(served, fields=["image", "caption", "meta"], mode="ram", progress=False)
    assert len(ds) == len(values["images"])
    assert chunk_hits(http_server) == {}
    assert set(http_server.hits) == {"/stores/a/manifest.json"}  # the manifest is always fetched afresh


@pytest.mark.parametrize("mode", MODES)
def test_cache_limit_keeps_the_cache_small(
    served: str, values: dict[str, Any], tmp_path: Path, mode: str, http_server: TestServer
) -> None:
    cache, limit = tmp_path / "small-cache", int(2.5 * CHUNK_BYTES)
    ds = TensorStoreDataset(
        served,
        fields=["image"],
        mode=mode,
        memory_budget=BUDGETS[mode],
        progress=False,
        cache_dir=cache,
        cache_limit=limit,
    )
    for _epoch in range(2):
        for start in range(0, len(ds), 3):
            batch = collate(ds.__getitems__(list(range(start, min(start + 3, len(ds))))))
            np.testing.assert_array_equal(
                batch["image"].permute(0, 2, 3, 1).numpy(), values["images"][start : start + 3]
            )
            assert chunk_files_bytes(cache) <= limit
    if mode == "paged":  # evicted chunks were downloaded again in the second epoch
        assert max(chunk_hits(http_server).values()) == 2


def test_prefetch_downloads_in_the_background(
    served: str, values: dict[str, Any], tmp_path: Path, http_server: TestServer
) -> None:
    cache = tmp_path / "cache"
    ds = TensorStoreDataset(served, mode="paged", memory_budget=BUDGETS["paged"], progress=False, cache_dir=cache)
    assert chunk_hits(http_server) == {"/stores/a/text/caption/bytes/c/0": 1, "/stores/a/text/caption/offsets/c/0": 1}
    ds.prefetch_chunks([3, 4])
    wanted = [chunk_file(cache, k) for k in (3, 4)]
    deadline = time.monotonic() + 10
    while not all(p.exists() for p in wanted) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert all(p.exists() for p in wanted)
    batch = collate(ds.__getitems__([12, 13, 17]))
    np.testing.assert_array_equal(batch["image"].permute(0, 2, 3, 1).numpy(), values["images"][[12, 13, 17]])
    assert {p: n for p, n in chunk_hits(http_server).items() if "images" in p} == {
        "/stores/a/images/c/3/0/0/0": 1,
        "/stores/a/images/c/4/0/0/0": 1,
    }


def test_partial_files_of_dead_processes_are_removed(served: str, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    open_store(served, cache_dir=cache)
    (cache / ".partial").mkdir(exist_ok=True)
    stale, alive = cache / ".partial" / "images%c%0%0%0%0.999999999-1", cache / ".partial" / f"x.{os.getpid()}-1"
    stale.write_bytes(b"half")
    alive.write_bytes(b"half")
    open_store(served, cache_dir=cache)
    assert partials(cache) == [alive]


def test_cache_limit_as_size_string(served: str, tmp_path: Path) -> None:
    store = open_store(served, cache_dir=tmp_path / "c", cache_limit="8KiB")
    assert store.files.cache_limit == 8192  # type: ignore[attr-defined]


def test_changed_store_replaces_stale_cache_files(local: Path, tmp_path: Path, http_server: TestServer) -> None:
    served = copy_tree(local, tmp_path / "served")
    http_server.serve_dir(served, "/s/")
    url, cache = http_server.url_for("/s"), tmp_path / "cache"
    before = open_store(url, cache_dir=cache).array("images")[:]
    other = build_image_store(tmp_path / "other", seed=3)
    for name in ("images", "text"):
        shutil.rmtree(served / name)
        shutil.copytree(other / name, served / name)
    (served / "manifest.json").write_bytes((other / "manifest.json").read_bytes())
    after = open_store(url, cache_dir=cache)
    np.testing.assert_array_equal(after.array("images")[:], open_store(other).array("images")[:])
    assert not np.array_equal(before, after.array("images")[:])
    assert after.captions[0] == "cap 3-0"


def test_cache_dir_must_be_a_cache(served: str, tmp_path: Path) -> None:
    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match=re.escape(str(foreign)) + ".*not empty"):
        open_store(served, cache_dir=foreign)
    assert (foreign / "notes.txt").read_text() == "mine"


# --- damaged or missing stores on the server ---------------------------------------------------


@pytest.fixture
def damaged(local: Path, tmp_path: Path, http_server: TestServer) -> tuple[Path, str]:
    served = copy_tree(local, tmp_path / "served")
    http_server.serve_dir(served, "/s/")
    return served, http_server.url_for("/s")


def test_altered_chunk_on_the_server(damaged: tuple[Path, str], values: dict[str, Any]) -> None:
    served, url = damaged
    chunk = chunk_file(served, 2)
    data = bytearray(chunk.read_bytes())
    data[100] ^= 1
    chunk.write_bytes(bytes(data))
    store = open_store(url)  # the manifest is intact: opening works
    np.testing.assert_array_equal(store.array("images")[:8], values["images"][:8])
    with pytest.raises(StoreFormatError, match=re.escape(f"{url}/images/c/2/0/0/0") + ".*sha256.*not kept"):
        store.array("images")[9]
    cached = store.path / "images" / "c" / "2"
    assert not cached.exists() or [p for p in cached.rglob("*") if p.is_file()] == []
    assert partials(store.path) == []
    ds = TensorStoreDataset(url, mode="paged", memory_budget=BUDGETS["paged"], progress=False)
    with pytest.raises(StoreFormatError, match=re.escape(f"{url}/images/c/2/0/0/0")):
        ds.__getitems__([8])
    with pytest.raises(StoreFormatError, match=re.escape(f"{url}/images/c/2/0/0/0")):
        TensorStoreDataset(url, mode="ram", progress=False)


def test_truncated_and_missing_chunks_on_the_server(damaged: tuple[Path, str]) -> None:
    served, url = damaged
    chunk_file(served, 1).write_bytes(chunk_file(served, 1).read_bytes()[:1000])
    chunk_file(served, 3).unlink()
    store = open_store(url)
    with pytest.raises(StoreFormatError, match=re.escape(f"{url}/images/c/1/0/0/0") + ".*ends after 1000 bytes"):
        store.array("images")[4]
    with pytest.raises(StoreFormatError, match=re.escape(f"{url}/images/c/3/0/0/0") + ".*missing on the server"):
        store.array("images")[12]


def test_manifest_problems_name_the_url(damaged: tuple[Path, str], http_server: TestServer) -> None:
    served, url = damaged
    manifest = served / "manifest.json"
    doc = json.loads(manifest.read_bytes())
    manifest.write_text(json.dumps({**doc, "format_version": 999}))
    with pytest.raises(StoreFormatError, match=re.escape(f"{url}/manifest.json") + ".*version 999 is newer"):
        open_store(url)
    doc["files"]["images/c/0/0/0/0"]["size"] = 5
    manifest.write_text(json.dumps(doc))
    with pytest.raises(StoreFormatError, match=re.escape(f"{url}/images/c/0/0/0/0") + ".*lists 5 bytes"):
        open_store(url)
    manifest.write_text(json.dumps({**doc, "files": {}}))
    with pytest.raises(StoreFormatError, match="no file checksums"):
        open_store(url)
    manifest.write_bytes(b"{" * 100)
    with pytest.raises(StoreFormatError, match="not valid JSON"):
        open_store(url)
    http_server.route("/huge/manifest.json", Response(200, b" " * (64 * 2**20 + 10)))
    with pytest.raises(StoreFormatError, match=re.escape(http_server.url_for("/huge/manifest.json"))):
        open_store(http_server.url_for("/huge"))
    with pytest.raises(StoreNotFoundError, match=re.escape(http_server.url_for("/nothing/manifest.json"))):
        open_store(http_server.url_for("/nothing"))


def test_a_dropped_connection_is_retried(
    local: Path, values: dict[str, Any], http_server: TestServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tensorstore_ds.store.transfer

    monkeypatch.setattr(tensorstore_ds.store.transfer, "BACKOFF", 0.01)
    drops = {"n": 0}

    def handler(request: Any) -> Response:
        response = static_response(local, request.path[len("/s/") :], request)
        if request.path.endswith("images/c/0/0/0/0") and drops["n"] < 2:
            drops["n"] += 1
            return Response(response.status, response.body, response.headers, drop_after=1000)
        return response

    http_server.route("/s/", handler, prefix=True)
    store = open_store(http_server.url_for("/s"))
    np.testing.assert_array_equal(store.array("images")[0], values["images"][0])
    assert http_server.hits["/s/images/c/0/0/0/0"] == 3


# --- other servers and filesystems ---------------------------------------------------------------


@pytest.fixture
def plain_http(local: Path) -> Iterator[str]:
    """``python -m http.server``: no range requests, a new connection per request."""
    import functools
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(local)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_server_without_range_requests(
    plain_http: str, values: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tensorstore_ds.store.transfer

    monkeypatch.setattr(tensorstore_ds.store.transfer, "BLOCK", 1000)  # a chunk would take several ranged requests
    assert_same_values(snapshot(open_store(plain_http, cache_dir=tmp_path / "cache")), values)


def test_any_fsspec_filesystem(local: Path, values: dict[str, Any], tmp_path: Path) -> None:
    import fsspec

    memory = fsspec.filesystem("memory")
    for path in local.rglob("*"):
        if path.is_file():
            memory.pipe_file(f"/shared/store/{path.relative_to(local).as_posix()}", path.read_bytes())
    try:
        store = open_store("memory://shared/store", cache_dir=tmp_path / "cache")
        assert isinstance(store.files, RemoteFiles)
        assert_same_values(snapshot(store), values)
    finally:
        memory.rm("/shared", recursive=True)


# --- other readers of the same URL --------------------------------------------------------------


def test_zarr_reads_the_url(served: str, values: dict[str, Any]) -> None:
    import zarr

    group = zarr.open_group(served, mode="r")
    np.testing.assert_array_equal(group["images"][7], values["images"][7])
    np.testing.assert_array_equal(group["images"][:], values["images"])
    offsets = group["text/caption/offsets"][:]
    caption = bytes(group["text/caption/bytes"][offsets[3] : offsets[4]]).decode()
    assert caption == values["text:caption"][3]


def test_info_command_on_a_url(served: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["info", served]) == 0
    out = capsys.readouterr().out
    assert f"path: {served}" in out and f"samples: {SAMPLES - 1}" in out
