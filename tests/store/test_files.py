"""One shared test class for the file layer (``StoreFiles``), run against every implementation.

As zarr-python's ``StoreTests`` is subclassed per backend, :class:`FilesTests`
states what every file provider promises (local files, a remote store over
http, and one in object storage) and each subclass only says how to make
its provider for the same store.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest

from tensorstore_ds.format.manifest import MANIFEST, Manifest
from tensorstore_ds.store.chunked import LocalFiles, StoreFiles
from tensorstore_ds.store.push import push
from tensorstore_ds.store.remote import RemoteFiles
from tests.httpserver import TestServer
from tests.s3server import S3Server
from tests.stores import build_image_store


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_image_store(tmp_path_factory.mktemp("files") / "store")


class FilesTests:
    """What every :class:`StoreFiles` does; subclasses provide the ``files`` fixture for the store ``local``."""

    @pytest.fixture
    def files(self, local: Path, tmp_path: Path) -> StoreFiles:
        raise NotImplementedError  # each backend's subclass overrides this fixture

    @pytest.fixture
    def manifest(self, local: Path) -> Manifest:
        return Manifest.read(local)

    def test_location_and_where(self, files: StoreFiles) -> None:
        assert isinstance(files.root, Path) and isinstance(files.location, str)
        where = files.where("images/c/0/0/0/0")
        assert where.startswith(files.location.rstrip("/")) and where.endswith("images/c/0/0/0/0")

    def test_exists(self, files: StoreFiles, manifest: Manifest) -> None:
        assert all(files.exists(name) for name in [*manifest.files, MANIFEST])
        assert not files.exists("images/c/999/0/0/0")

    def test_path_gives_the_bytes(self, files: StoreFiles, manifest: Manifest, local: Path) -> None:
        for name in manifest.files:
            path = files.path(name)
            assert path.is_file() and path.read_bytes() == (local / name).read_bytes()

    def test_open_reads_unbuffered(self, files: StoreFiles, local: Path) -> None:
        with files.open("images/c/1/0/0/0") as f:
            assert f.read() == (local / "images/c/1/0/0/0").read_bytes()

    def test_check_chunks(self, files: StoreFiles, manifest: Manifest) -> None:
        for spec in manifest.arrays.values():
            files.check_chunks(spec)

    def test_prefetch_then_fetch_make_files_local(self, files: StoreFiles, manifest: Manifest, local: Path) -> None:
        keys = [manifest.arrays["images"].chunk_key(k) for k in range(manifest.arrays["images"].num_chunks)]
        files.prefetch(keys[:2])
        files.fetch(keys)
        for key in keys:
            assert (files.root / key).read_bytes() == (local / key).read_bytes()

    def test_survives_pickling(self, files: StoreFiles, local: Path) -> None:
        copy: Any = pickle.loads(pickle.dumps(files))
        assert copy.location == files.location
        assert copy.path(MANIFEST).read_bytes() == (local / MANIFEST).read_bytes()


class TestLocalFiles(FilesTests):
    @pytest.fixture
    def files(self, local: Path, tmp_path: Path) -> StoreFiles:
        return LocalFiles(local)


class TestHttpFiles(FilesTests):
    @pytest.fixture
    def files(self, local: Path, tmp_path: Path, http_server: TestServer) -> StoreFiles:
        http_server.serve_dir(local, "/store/")
        return RemoteFiles.connect(http_server.url_for("/store"), tmp_path / "cache")


class TestS3Files(FilesTests):
    @pytest.fixture
    def files(self, local: Path, tmp_path: Path, s3_server: S3Server) -> StoreFiles:
        url = f"s3://{s3_server.bucket()}/store"
        push(local, url, progress=False, storage_options=s3_server.storage_options)
        return RemoteFiles.connect(url, tmp_path / "cache", storage_options=s3_server.storage_options)
