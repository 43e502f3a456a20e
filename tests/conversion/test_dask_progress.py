"""The Dask engine's progress bar over shards and samples, on a real LocalCluster."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tensorstore_ds import convert
from tensorstore_ds.cli import main
from tensorstore_ds.errors import ColumnNotFoundError
from tests.clusters import local_cluster
from tests.media import write_image
from tests.stores import store_bytes

ROWS = 13
BROKEN = 3  # rows 2, 6 and 10
OPTIONS = {"image_column": "image", "image_size": 8, "chunk_mb": 0.001, "workers": 0}


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A Parquet of local image paths, every fourth one broken."""
    import pandas as pd

    rows = []
    for i in range(ROWS):
        path = tmp_path / "images" / f"{i:03d}.png"
        if i % 4 == 2:
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(b"not an image")
        else:
            write_image(path, 10 + i % 3, 9, seed=i)
        rows.append({"image": str(path), "caption": f"picture {i}"})
    pd.DataFrame(rows).to_parquet(tmp_path / "data.parquet")
    return tmp_path / "data.parquet"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    with local_cluster() as local:
        yield local


def test_bar_counts_shards_and_samples(
    source: Path, tmp_path: Path, cluster: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    import distributed

    whole = tmp_path / "whole"
    convert(str(source), whole, progress=False, **OPTIONS)
    capsys.readouterr()
    with distributed.Client(cluster) as client:
        manifest = convert(str(source), tmp_path / "dask", client=client, shards=3, progress=True, **OPTIONS)
    err = capsys.readouterr().err
    assert "converting shards" in err
    assert "3/3" in err
    assert f"samples={ROWS - BROKEN}, failed={BROKEN}" in err
    assert manifest.num_samples == ROWS - BROKEN
    assert store_bytes(tmp_path / "dask") == store_bytes(whole)


def test_bar_is_off_when_not_a_terminal(
    source: Path, tmp_path: Path, cluster: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """progress=None (the command line's default) shows bars only on a terminal; pytest's stderr is not one."""
    argv = ["convert", str(source), str(tmp_path / "dask"), "--engine", "dask", "--scheduler"]
    flags = ["--image-column", "image", "--image-size", "8", "--chunk-mb", "0.001", "--shards", "2"]
    assert main([*argv, cluster.scheduler_address, *flags]) == 0
    captured = capsys.readouterr()
    assert "converting shards" not in captured.err
    assert f"{ROWS - BROKEN} samples converted, {BROKEN} failed" in captured.out


def test_a_failing_shard_still_raises(source: Path, tmp_path: Path, cluster: Any) -> None:
    """The bar waits in completion order, but a shard that fails still fails the conversion."""
    import distributed

    with (
        distributed.Client(cluster) as client,
        pytest.raises(ColumnNotFoundError, match="image column 'nope' is not in the source"),
    ):
        convert(
            str(source),
            tmp_path / "dask",
            client=client,
            shards=2,
            progress=True,
            **{**OPTIONS, "image_column": "nope"},
        )
