"""Converting straight into object storage (moto's S3 server on loopback): uploads as chunks complete, the
manifest last, bounded scratch, resume after SIGKILL, one conversion per URL, and reading the result back."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import fsspec
import pytest

from tensorstore_ds import open_store
from tensorstore_ds.conversion import upload
from tensorstore_ds.conversion.api import convert
from tensorstore_ds.errors import StoreError, StoreLeaseError
from tensorstore_ds.format.manifest import MANIFEST
from tensorstore_ds.store import objects
from tensorstore_ds.store.objects import LEASE, Lease
from tensorstore_ds.store.transfer import Remote
from tensorstore_ds.store.verify import verify
from tests.media import noise_png
from tests.s3server import FaultProxy
from tests.stores import assert_same_values, snapshot, tree_bytes

S3 = tuple[str, dict[str, Any]]
SIZE = 16
CHUNK_MB = 4 * SIZE * SIZE * 3 / 2**20  # 4 rows a chunk


def source(tmp_path: Path, n: int = 30) -> Path:
    folder = tmp_path / "src"
    folder.mkdir(exist_ok=True)
    lines = []
    for i in range(n):
        (folder / f"{i:03d}.png").write_bytes(noise_png(i, SIZE) if i != 7 else b"broken")
        lines.append(f'{{"file_name": "{i:03d}.png", "caption": "sample {i}"}}')
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def options(**extra: Any) -> dict[str, Any]:
    return {"image_size": SIZE, "chunk_mb": CHUNK_MB, "workers": 0, "progress": False, **extra}


def objects_of(url: str, storage: dict[str, Any]) -> dict[str, bytes]:
    fs, root = fsspec.core.url_to_fs(url, **storage)
    return {p[len(root) + 1 :]: fs.cat_file(p) for p in fs.find(root)}


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(objects, "SETTLE", 0.05)
    monkeypatch.setattr("tensorstore_ds.store.transfer.BACKOFF", 0.01)


@pytest.mark.parametrize("workers", [0, 2])  # 2: chunk files are written by decode processes, then committed
def test_convert_into_s3_is_the_local_store(s3: S3, tmp_path: Path, fault_proxy: FaultProxy, workers: int) -> None:
    bucket, storage = s3
    src = source(tmp_path)
    convert(src, tmp_path / "local", **options())
    url = f"{bucket}/stores/one"
    manifest = convert(src, url, **options(storage_options=fault_proxy.storage_options, workers=workers))
    stored = objects_of(url, storage)
    local = tree_bytes(tmp_path / "local")
    assert set(stored) == set(local)
    assert {n: b for n, b in stored.items() if n != MANIFEST} == {n: b for n, b in local.items() if n != MANIFEST}
    assert manifest.files == open_store(tmp_path / "local").manifest.files
    puts = [p for m, p in fault_proxy.requests if m == "PUT" and ".convert" not in p]
    assert puts[-1].endswith(f"/one/{MANIFEST}")  # the manifest last
    assert not any(p.rsplit("/", 1)[-1] == LEASE.rsplit("/", 1)[-1] for p in objects_of(url, storage))
    assert not upload.scratch_for(f"{bucket}/stores/one").exists()  # scratch removed
    store = open_store(url, cache_dir=tmp_path / "cache", storage_options=storage)
    assert_same_values(snapshot(store), snapshot(open_store(tmp_path / "local")))
    assert verify(url, progress=False, storage_options=storage).ok
    again = convert(src, url, **options(storage_options=storage))  # finished: nothing to do
    assert again.files == manifest.files


def test_scratch_disk_is_bounded(s3: S3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bucket, storage = s3
    monkeypatch.setattr(upload, "MAX_PENDING", 2)
    peak = [0]
    original = upload.UploadingWriter._commit

    def measured(self: Any, rows: int) -> None:
        original(self, rows)
        peak[0] = max(peak[0], sum(1 for p in (self.root / "images" / "c").rglob("*") if p.is_file()))

    monkeypatch.setattr(upload.UploadingWriter, "_commit", measured)
    convert(source(tmp_path, 60), f"{bucket}/big", **options(storage_options=storage))
    assert peak[0] <= 2 + 1  # pending uploads plus the one just committed, never all 15 chunks


def test_a_second_conversion_into_the_url_is_refused(s3: S3, tmp_path: Path) -> None:
    bucket, storage = s3
    remote = Remote(f"{bucket}/x", storage)
    lease = Lease(remote, settle=0.05).acquire()
    try:
        with pytest.raises(StoreLeaseError, match=rf"store {bucket}/x is being converted by process {os.getpid()}"):
            convert(source(tmp_path), f"{bucket}/x", **options(storage_options=storage))
    finally:
        lease.release()
    assert convert(source(tmp_path), f"{bucket}/x", **options(storage_options=storage)).num_samples == 29


def test_a_lease_taken_over_is_noticed(s3: S3) -> None:
    bucket, storage = s3
    remote = Remote(f"{bucket}/y", storage)
    first = Lease(remote, ttl=0.3, settle=0.05).acquire()
    time.sleep(0.4)  # expired (its renewal thread is slower than this): another may take it
    second = Lease(remote, ttl=30, settle=0.05)
    second._refuse_if_held = lambda: None  # type: ignore[method-assign]
    second.acquire()
    time.sleep(0.3)
    with pytest.raises(StoreLeaseError, match="is being converted by process"):
        first.check()
    second.release()
    first.release()


def test_a_foreign_prefix_is_refused(s3: S3, tmp_path: Path) -> None:
    bucket, storage = s3
    fs, root = fsspec.core.url_to_fs(f"{bucket}/z", **storage)
    fs.pipe_file(f"{root}/holiday.jpg", b"...")
    with pytest.raises(StoreError, match=r"s3://.*/z is not empty and is not a tensorstore_ds store"):
        convert(source(tmp_path), f"{bucket}/z", **options(storage_options=storage))


KILLER = """
import os, signal, sys
import tensorstore_ds.conversion.upload as upload
from tensorstore_ds.conversion.api import convert


def done(self, name, path, original=upload.UploadingWriter._done):
    original(self, name, path)
    if len(self._uploaded) >= int(sys.argv[3]):
        os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":  # decode processes are spawned: they import this file
    upload.UploadingWriter._done = done
    storage = {"key": "testing", "secret": "testing", "endpoint_url": sys.argv[4], "skip_instance_cache": True,
               "client_kwargs": {"region_name": "us-east-1"}}
    convert(sys.argv[1], sys.argv[2], image_size=16, chunk_mb=%r, workers=int(sys.argv[5]), progress=False,
            storage_options=storage)
"""


@pytest.mark.parametrize("workers", [0, 2])  # 2: chunk files written by decode processes
def test_resume_after_sigkill(s3: S3, tmp_path: Path, workers: int) -> None:
    bucket, storage = s3
    src = source(tmp_path, 40)
    url = f"{bucket}/killed"
    script = tmp_path / "kill.py"
    script.write_text(KILLER % CHUNK_MB)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    run = subprocess.run(
        [sys.executable, str(script), str(src), url, "3", storage["endpoint_url"], str(workers)], env=env, timeout=300
    )
    assert run.returncode == -signal.SIGKILL
    fs, root = fsspec.core.url_to_fs(url, **storage)
    assert not fs.exists(f"{root}/{MANIFEST}") and fs.exists(f"{root}/{LEASE}")
    with pytest.raises(StoreError, match="there is no manifest.json"):
        open_store(url, storage_options=storage)
    manifest = convert(src, url, **options(storage_options=storage, workers=workers))  # the dead one's lease is taken
    convert(src, tmp_path / "local", **options())
    stored = {n: b for n, b in objects_of(url, storage).items() if n != MANIFEST}
    assert stored == {n: b for n, b in tree_bytes(tmp_path / "local").items() if n != MANIFEST}
    assert manifest.num_samples == 39
    assert verify(url, progress=False, storage_options=storage).ok


def test_uploads_survive_slow_down_and_dropped_connections(s3: S3, tmp_path: Path, fault_proxy: FaultProxy) -> None:
    bucket, storage = s3
    slow = fault_proxy.add("PUT", "images/c/2", "503", times=3)
    drop = fault_proxy.add("PUT", "images/c/4", "drop", times=3)
    src = source(tmp_path)
    manifest = convert(src, f"{bucket}/f", **options(storage_options=fault_proxy.storage_options))
    assert slow.hits == 3 and drop.hits == 3  # each retried (by the client, then by us) until it went through
    assert verify(f"{bucket}/f", progress=False, storage_options=storage).ok
    assert manifest.num_samples == 29


def test_refused_credentials_and_a_missing_bucket(s3: S3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import moto.settings

    from tensorstore_ds.errors import BucketNotFoundError, StoreAccessError

    bucket, storage = s3
    src = source(tmp_path)
    with pytest.raises(BucketNotFoundError, match=r"the bucket 'missing-bucket' of s3://missing-bucket/s does not"):
        convert(src, "s3://missing-bucket/s", **options(storage_options=storage))
    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # the server now checks keys
    with pytest.raises(StoreAccessError, match=rf"access to {bucket}/s was refused"):
        convert(src, f"{bucket}/s", **options(storage_options=storage))


def test_command_line_convert_info_verify(s3: S3, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tensorstore_ds.cli import main

    bucket, storage = s3
    flags = [
        f"--storage-option=key={storage['key']}",
        f"--storage-option=secret={storage['secret']}",
        f"--storage-option=endpoint_url={storage['endpoint_url']}",
    ]
    url = f"{bucket}/cli"
    argv = ["convert", str(source(tmp_path)), url, "--image-size", "16", "--chunk-mb", str(CHUNK_MB), "--workers", "0"]
    assert main([*argv, "--quiet", *flags]) == 0
    assert "29 samples converted, 1 failed" in capsys.readouterr().out
    assert main(["info", url, "--json", *flags]) == 0
    assert '"samples": 29' in capsys.readouterr().out
    assert main(["verify", url, "--quiet", *flags]) == 0
    assert re.search(r"store s3://.*/cli: all \d+ files verified", capsys.readouterr().out)


def test_a_lease_can_be_waited_for(s3: S3) -> None:
    bucket, storage = s3
    remote = Remote(f"{bucket}/w", storage)
    first = Lease(remote, ttl=0.6, settle=0.05)
    first.acquire()
    first._stop.set()  # a worker that died: its lease is no longer renewed
    with pytest.raises(StoreLeaseError):
        Lease(remote, settle=0.05).acquire()
    start = time.monotonic()
    second = Lease(remote, settle=0.05).acquire(wait=5)  # what a Dask retry does
    assert 0.1 < time.monotonic() - start < 5
    second.release()


def test_overwrite_starts_over_in_the_bucket(s3: S3, tmp_path: Path) -> None:
    bucket, storage = s3
    url = f"{bucket}/o"
    convert(source(tmp_path, 30), url, **options(storage_options=storage))
    other = tmp_path / "other"
    other.mkdir()
    src = source(other, 14)
    manifest = convert(src, url, **options(storage_options=storage, overwrite=True))
    assert manifest.num_samples == 13
    convert(src, tmp_path / "local", **options())
    stored = {n: b for n, b in objects_of(url, storage).items() if n != MANIFEST}
    assert stored == {n: b for n, b in tree_bytes(tmp_path / "local").items() if n != MANIFEST}
    assert verify(url, progress=False, storage_options=storage).ok
