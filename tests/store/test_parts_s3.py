"""Sharded conversion into object storage: shards become parts, the commit copies nothing, and the store
made of parts opens, serves, verifies, pulls and merges as one store (moto's S3 server, a real LocalCluster)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pytest

from tensorstore_ds import TensorStoreDataset, open_store
from tensorstore_ds.conversion.api import convert
from tensorstore_ds.conversion.merge import merge
from tensorstore_ds.conversion.shards import commit
from tensorstore_ds.errors import StoreError
from tensorstore_ds.format.manifest import MANIFEST, PARTS_FORMAT_VERSION
from tensorstore_ds.store import objects
from tensorstore_ds.store.pull import pull
from tensorstore_ds.store.push import push
from tensorstore_ds.store.verify import verify
from tests.clusters import local_cluster
from tests.s3server import FaultProxy
from tests.store.test_convert_s3 import options, source
from tests.stores import assert_same_values, snapshot

S3 = tuple[str, dict[str, Any]]
ROWS = 45  # row 7 fails


def main_info(url: str, storage: dict[str, Any]) -> dict[str, Any]:
    from tensorstore_ds.store.info import info

    return info(url, storage_options=storage)


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(objects, "SETTLE", 0.05)


def served(ds: Any) -> tuple[np.ndarray, list[str]]:
    """Every image (as served: channels first) and caption, in the dataset's order."""
    batch = ds.__getitems__(list(range(len(ds)))).tensors()
    return np.asarray(batch["image"]), list(batch["caption"])


def test_job_array_parts_commit_without_copying(s3: S3, tmp_path: Path, fault_proxy: FaultProxy) -> None:
    bucket, storage = s3
    src = source(tmp_path, ROWS)
    url = f"{bucket}/sharded"
    for k in range(3):  # three machines of a job array, each with its own scratch directory
        convert(src, url, **options(shard=f"{k}/3", storage_options=storage, scratch_dir=str(tmp_path / f"m{k}")))
    with pytest.raises(StoreError, match="there is no manifest.json"):
        open_store(url, storage_options=storage)
    fault_proxy.requests.clear()
    manifest = commit(url, storage_options=fault_proxy.storage_options)
    reads = [p for m, p in fault_proxy.requests if m == "GET" and "list-type" not in p]
    writes = [p for m, p in fault_proxy.requests if m == "PUT"]
    assert all(p.endswith(MANIFEST) for p in reads) and len(reads) == 3  # the parts' manifests, nothing else
    assert len(writes) == 1 and writes[0].endswith(f"/sharded/{MANIFEST}")
    assert manifest.format_version == PARTS_FORMAT_VERSION and len(manifest.parts) == 3

    convert(src, tmp_path / "local", **options())
    local = open_store(tmp_path / "local")
    store = open_store(url, cache_dir=tmp_path / "cache", storage_options=storage)
    assert len(store) == len(local) == ROWS - 1 and len(store.parts) == 3
    assert store.manifest.counts["failed"] == 1 and len(store.failures()) == 1
    whole = TensorStoreDataset(url, storage_options=storage, mode="paged", progress=False)
    ram = TensorStoreDataset(url, storage_options=storage, mode="ram", progress=False)
    expected = served(TensorStoreDataset(tmp_path / "local", progress=False))
    for ds in (whole, ram):
        images, captions = served(ds)
        assert captions == expected[1] and np.array_equal(images, expected[0])  # same samples, same order

    assert verify(url, progress=False, storage_options=storage).ok
    fs, root = fsspec.core.url_to_fs(url, **storage)
    chunk = f"{root}/parts/00001-of-00003/images/c/0/0/0/0"
    data = bytearray(fs.cat_file(chunk))
    data[5] ^= 1
    fs.pipe_file(chunk, bytes(data))
    report = verify(url, progress=False, storage_options=storage)
    assert [(n, kind) for n, kind, _ in report.problems] == [("parts/00001-of-00003/images/c/0/0/0/0", "altered")]
    data[5] ^= 1
    fs.pipe_file(chunk, bytes(data))

    import zarr
    from zarr.storage import FsspecStore

    part = FsspecStore.from_url(f"{url}/parts/00000-of-00003", storage_options=storage, read_only=True)
    array = zarr.open_array(store=part, path="images", mode="r")
    assert np.array_equal(array[:3], expected[0][:3].transpose(0, 2, 3, 1))  # stored channels last

    pull(url, tmp_path / "pulled", progress=False, storage_options=storage)
    pulled = open_store(tmp_path / "pulled")
    assert len(pulled.parts) == 3 and len(pulled) == ROWS - 1
    assert verify(tmp_path / "pulled", progress=False).ok
    with open(tmp_path / "pulled/parts/00002-of-00003/images/c/0/0/0/0", "r+b") as f:
        f.write(b"\xff")
    report = verify(tmp_path / "pulled", progress=False)
    assert [(n, kind) for n, kind, _ in report.problems] == [("parts/00002-of-00003/images/c/0/0/0/0", "altered")]
    with open(tmp_path / "pulled/parts/00002-of-00003/images/c/0/0/0/0", "r+b") as f:
        f.write(fs.cat_file(f"{root}/parts/00002-of-00003/images/c/0/0/0/0")[:1])  # repaired
    push(tmp_path / "pulled", f"{bucket}/copy", progress=False, storage_options=storage)
    assert verify(f"{bucket}/copy", progress=False, storage_options=storage).ok
    info = main_info(f"{bucket}/copy", storage)
    assert info["samples"] == ROWS - 1
    merged = merge(tmp_path / "merged", [url], progress=False, storage_options=storage)  # from the bucket
    assert merged.num_samples == ROWS - 1
    assert_same_values(snapshot(open_store(tmp_path / "merged")), snapshot(local))


def test_commit_names_missing_parts(s3: S3, tmp_path: Path) -> None:
    bucket, storage = s3
    url = f"{bucket}/partial"
    convert(source(tmp_path, ROWS), url, **options(shard="1/3", storage_options=storage))
    with pytest.raises(StoreError, match=r"parts \[0, 2\] of 3 are missing or unfinished"):
        commit(url, storage_options=storage)


def test_dask_cluster_without_a_shared_filesystem(s3: S3, tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    bucket, storage = s3
    src = source(tmp_path, ROWS)
    url = f"{bucket}/dask"
    with (
        local_cluster(local_directory=str(tmp_path / "workers")) as cluster,
        distributed.Client(cluster) as client,
    ):
        scratch = client.run(lambda dask_worker: dask_worker.local_directory)
        assert len(set(scratch.values())) == 2  # each worker its own scratch directory
        manifest = convert(src, url, client=client, shards=4, **options(storage_options=storage))
    assert len(manifest.parts) == 4
    convert(src, tmp_path / "local", **options())
    expected = served(TensorStoreDataset(tmp_path / "local", progress=False))
    images, captions = served(TensorStoreDataset(url, storage_options=storage, mode="paged", progress=False))
    assert captions == expected[1] and np.array_equal(images, expected[0])
    assert verify(url, progress=False, storage_options=storage).ok
