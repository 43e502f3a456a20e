"""Sharded conversion: job-array shards + commit, and shards on a real Dask LocalCluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from tensorstore_ds import convert, open_store, verify
from tensorstore_ds.cli import main
from tensorstore_ds.conversion.shards import commit, shard_dir, shard_ranges
from tensorstore_ds.errors import OptionsError, StoreError
from tests.clusters import local_cluster
from tests.media import write_image
from tests.stores import store_bytes

ROWS = 29
OPTIONS = {"image_column": "image", "image_size": 8, "chunk_mb": 0.001, "workers": 0, "progress": False}


@pytest.fixture
def source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A Parquet of local image paths with a few broken rows."""
    import pandas as pd

    images = tmp_path / "images"
    images.mkdir()
    rows = []
    for i in range(ROWS):
        name = f"{i:03d}.png"
        if i % 7 == 3:
            (images / name).write_bytes(b"not an image")
        else:
            write_image(images / name, 12 + i % 5, 10, seed=i)
        rows.append({"image": f"images/{name}", "caption": f"picture {i}" if i != 11 else ""})
    pd.DataFrame(rows).to_parquet(tmp_path / "data.parquet")
    return tmp_path / "data.parquet"


def test_shard_ranges_are_chunk_aligned_and_cover_every_row() -> None:
    ranges = shard_ranges(1000, 3, 64)
    assert ranges == [(0, 384), (384, 768), (768, 1000)]
    assert shard_ranges(10, 4, 8) == [(0, 8), (8, 10), (10, 10), (10, 10)]


def test_job_array_then_commit_equals_one_conversion(source: Path, tmp_path: Path) -> None:
    whole = convert(str(source), tmp_path / "whole", **OPTIONS)
    assert whole.counts["failed"] == 5 and whole.options["chunk_rows"] < ROWS // 3
    out = tmp_path / "sharded"
    for k in (2, 0, 1):  # any order, any machine
        part = convert(str(source), out, shard=f"{k}/3", **OPTIONS)
        assert (shard_dir(out, k, 3) / "manifest.json").exists() and part.source["shard"] == [k, 3]
    merged = commit(out, progress=False)
    assert merged.num_samples == whole.num_samples and merged.source == whole.source
    assert store_bytes(out) == store_bytes(tmp_path / "whole")
    assert verify(out, progress=False).ok and not (out / ".shards").exists()


def test_commit_names_missing_shards(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "sharded"
    convert(str(source), out, shard="1/3", **OPTIONS)
    with pytest.raises(StoreError, match=r"shards \[0, 2\] of 3 are missing or unfinished"):
        commit(out, progress=False)
    with pytest.raises(OptionsError, match=r"shard 3/3: K must be in \[0, N\)"):
        convert(str(source), out, shard="3/3", **OPTIONS)


def test_cli_shard_and_commit(source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    flags = ["--image-column", "image", "--image-size", "8", "--chunk-mb", "0.001", "--workers", "0", "--no-progress"]
    for k in range(2):
        assert main(["convert", str(source), str(out), "--shard", f"{k}/2", *flags]) == 0
        assert f"{k:05d}-of-00002" in capsys.readouterr().out
    assert main(["commit", str(out), "--quiet"]) == 0
    assert f"store {out}: {ROWS - 5} samples converted, 5 failed" in capsys.readouterr().out
    assert len(open_store(out)) == ROWS - 5


def test_dask_local_cluster_equals_one_conversion(source: Path, tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    whole = tmp_path / "whole"
    convert(str(source), whole, **OPTIONS)
    with (
        local_cluster() as cluster,
        distributed.Client(cluster) as client,
    ):
        manifest = convert(str(source), tmp_path / "dask", client=client, shards=4, **OPTIONS)
    assert manifest.counts == open_store(whole).manifest.counts
    assert store_bytes(tmp_path / "dask") == store_bytes(whole)


def test_dask_command_line_equals_one_conversion(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's scale-out command, through main(), against a real scheduler address."""
    whole = tmp_path / "whole"
    convert(str(source), whole, **OPTIONS)
    flags = ["--image-column", "image", "--image-size", "8", "--chunk-mb", "0.001", "--no-progress"]
    with local_cluster() as cluster:
        argv = [
            "convert",
            str(source),
            str(tmp_path / "dask"),
            "--engine",
            "dask",
            "--scheduler",
            cluster.scheduler_address,
        ]
        assert main([*argv, "--shards", "3", *flags]) == 0
    assert f"{ROWS - 5} samples converted, 5 failed" in capsys.readouterr().out
    assert store_bytes(tmp_path / "dask") == store_bytes(whole)
