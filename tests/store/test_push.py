"""``push``: a local store into a real S3 server (moto on loopback): parallel, manifest last, resumable, refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import fsspec
import pytest

import tensorstore_ds.store.objects
import tensorstore_ds.store.transfer
from tensorstore_ds import TensorStoreDataset, open_store
from tensorstore_ds.cli import main
from tensorstore_ds.errors import BucketNotFoundError, StoreAccessError, StoreError
from tensorstore_ds.format.manifest import MANIFEST
from tensorstore_ds.store.pull import pull
from tensorstore_ds.store.push import PUSH_DIR, push
from tests.s3server import FaultProxy, s3_options
from tests.stores import (
    assert_same_items,
    assert_same_values,
    batch_items,
    build_image_store,
    snapshot,
    tree_bytes,
)

S3 = tuple[str, dict[str, Any]]


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_image_store(tmp_path_factory.mktemp("push") / "store")


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tensorstore_ds.store.transfer, "BACKOFF", 0.01)


def objects(url: str, options: dict[str, Any]) -> dict[str, bytes]:
    fs, root = fsspec.core.url_to_fs(url, **options)
    return {p[len(root) + 1 :]: fs.cat_file(p) for p in fs.find(root)}


def test_push_uploads_every_file_and_the_manifest_last(local: Path, s3: S3, tmp_path: Path) -> None:
    bucket, options = s3
    url = f"{bucket}/stores/pixmo"
    manifest = push(local, url, workers=4, progress=False, storage_options=options)
    assert objects(url, options) == tree_bytes(local)  # byte for byte, nothing more (no ledger left)
    assert manifest.num_samples == len(open_store(local))
    store = open_store(url, cache_dir=tmp_path / "cache", storage_options=options)
    assert_same_values(snapshot(store), snapshot(open_store(local)))
    pull(url, tmp_path / "pulled", progress=False, storage_options=options)
    assert tree_bytes(tmp_path / "pulled") == tree_bytes(local)
    expected = batch_items(TensorStoreDataset(local, progress=False), list(range(len(store))))
    for mode in ("ram", "paged"):
        ds = TensorStoreDataset(url, mode=mode, storage_options=options, progress=False)
        assert_same_items(batch_items(ds, list(range(len(store)))), expected)


def test_the_manifest_is_uploaded_last(local: Path, s3: S3, fault_proxy: FaultProxy) -> None:
    bucket, _ = s3
    push(local, f"{bucket}/s", workers=4, progress=False, storage_options=fault_proxy.storage_options)
    puts = [path for method, path in fault_proxy.requests if method == "PUT" and PUSH_DIR not in path]
    assert puts[-1].endswith(f"/s/{MANIFEST}")


def test_rerun_uploads_only_what_is_missing(local: Path, s3: S3, fault_proxy: FaultProxy) -> None:
    bucket, options = s3
    url = f"{bucket}/s"
    fault_proxy.add("PUT", "images/c/3", "403", times=10)  # the first run fails on one chunk
    with pytest.raises(StoreAccessError, match=r"access to s3://.*images/c/3/0/0/0 was refused"):
        push(local, url, workers=1, progress=False, storage_options=fault_proxy.storage_options)
    fs, root = fsspec.core.url_to_fs(url, **options)
    assert not fs.exists(f"{root}/{MANIFEST}")  # unfinished: never looks like a store
    uploaded = {p[len(root) + 1 :] for p in fs.find(root)} - {MANIFEST}
    assert any(n.startswith(PUSH_DIR) for n in uploaded)
    fault_proxy.rules.clear()
    fault_proxy.requests.clear()
    push(local, url, workers=2, progress=False, storage_options=fault_proxy.storage_options)
    again = {p.split("/s/", 1)[1] for m, p in fault_proxy.requests if m == "PUT" and "/s/" in p}
    assert "images/c/3/0/0/0" in again
    assert not (again - {MANIFEST, "images/c/3/0/0/0"}) & uploaded  # nothing verified there is sent twice
    assert objects(url, options) == tree_bytes(local)


def test_a_file_there_without_the_ledger_is_read_back_and_kept(local: Path, s3: S3, fault_proxy: FaultProxy) -> None:
    bucket, options = s3
    url = f"{bucket}/s"
    fs, root = fsspec.core.url_to_fs(url, **options)
    fs.pipe_file(f"{root}/images/c/0/0/0/0", (local / "images/c/0/0/0/0").read_bytes())
    fs.pipe_file(f"{root}/images/c/1/0/0/0", b"x" * (local / "images/c/1/0/0/0").stat().st_size)  # same size, wrong
    push(local, url, progress=False, storage_options=fault_proxy.storage_options)
    sent = {p.split("/s/", 1)[1] for m, p in fault_proxy.requests if m == "PUT" and "/s/" in p}
    assert "images/c/0/0/0/0" not in sent and "images/c/1/0/0/0" in sent
    assert objects(url, options) == tree_bytes(local)


def test_a_destination_holding_another_store_is_refused(local: Path, s3: S3, tmp_path: Path) -> None:
    bucket, options = s3
    other = build_image_store(tmp_path / "other", n=9, seed=3)
    push(other, f"{bucket}/s", progress=False, storage_options=options)
    with pytest.raises(StoreError, match=r"s3://.*/s holds a different store"):
        push(local, f"{bucket}/s", progress=False, storage_options=options)
    fs, root = fsspec.core.url_to_fs(f"{bucket}/t", **options)
    fs.pipe_file(f"{root}/notes.txt", b"hello")
    with pytest.raises(StoreError, match=r"holds 1 file\(s\) that are not part of this store \(notes.txt\)"):
        push(local, f"{bucket}/t", progress=False, storage_options=options)


def test_push_to_a_bucket_that_does_not_exist(local: Path, s3: S3) -> None:
    _, options = s3
    with pytest.raises(BucketNotFoundError, match=r"the bucket 'no-such-bucket' of s3://no-such-bucket/s does not"):
        push(local, "s3://no-such-bucket/s", progress=False, storage_options=options)


def test_refused_credentials_name_the_url(local: Path, s3: S3, monkeypatch: pytest.MonkeyPatch) -> None:
    import moto.settings

    bucket, options = s3
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # the server now checks keys
    with pytest.raises(StoreAccessError, match=rf"access to {bucket}/s was refused .*check the credentials"):
        push(local, f"{bucket}/s", progress=False, storage_options=options)


def test_slow_down_and_dropped_connections_are_retried(local: Path, s3: S3, fault_proxy: FaultProxy) -> None:
    bucket, options = s3
    slow = fault_proxy.add("PUT", "images/c/1", "503", times=2)
    drop = fault_proxy.add("PUT", "images/c/2", "drop", times=2)
    push(local, f"{bucket}/s", workers=2, progress=False, storage_options=fault_proxy.storage_options)
    assert slow.hits == 2 and drop.hits == 2
    assert objects(f"{bucket}/s", options) == tree_bytes(local)


def test_push_command(local: Path, s3: S3, capsys: pytest.CaptureFixture[str]) -> None:
    bucket, options = s3
    flags = [f"--storage-option={k}={v}" for k, v in (("key", options["key"]), ("secret", options["secret"]))]
    flags.append(f"--storage-option=endpoint_url={options['endpoint_url']}")
    assert main(["push", str(local), f"{bucket}/s", "--quiet", *flags]) == 0
    assert f"{bucket}/s" in capsys.readouterr().out
    assert json.loads(objects(f"{bucket}/s", s3_options(options["endpoint_url"]))[MANIFEST])["num_samples"] > 0
