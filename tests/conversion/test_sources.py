"""Every kind of source, converted end to end through ``open_source`` and ``convert``."""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pytest

from tensorstore_ds.conversion.api import convert
from tensorstore_ds.conversion.decode.audio import AudioOptions, decode_audio
from tensorstore_ds.conversion.decode.image import ImageOptions, decode_image
from tensorstore_ds.conversion.sources import open_source
from tensorstore_ds.errors import OptionsError, SourceError
from tensorstore_ds.store.store import open_store
from tests.media import audio_bytes, image_bytes, isolate_hf_cache, pixels, write_audio, write_image, write_table

SIZE = 16
FAST = {"image_size": SIZE, "chunk_mb": 0.002, "workers": 0, "progress": False}
AUDIO = {"sample_rate": 8000, "audio_seconds": 0.25, "chunk_mb": 0.01, "workers": 0, "progress": False}


@pytest.fixture(autouse=True)
def hf_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    return isolate_hf_cache(monkeypatch, tmp_path)


def expected_images(inputs: list[object]) -> np.ndarray:
    options = ImageOptions(SIZE)
    return np.stack([decode_image(x, options)[0] for x in inputs])  # type: ignore[arg-type]


def check_images(out: Path, inputs: list[object], captions: list[str]) -> None:
    store = open_store(out)
    assert len(store) == len(inputs)
    assert store.media == "image"
    np.testing.assert_array_equal(np.asarray(store.array("images")), expected_images(inputs))
    assert store.captions.take(range(len(store))) == captions
    assert store.failures() == []
    store.close()


def image_files(root: Path, n: int, sub: str = "img") -> list[str]:
    """Write ``n`` PNGs under ``root/sub`` and return their paths relative to ``root``."""
    names = []
    for i in range(n):
        write_image(root / sub / f"{i}.png", SIZE, SIZE, seed=i)
        names.append(f"{sub}/{i}.png")
    return names


# --- datasets objects ---------------------------------------------------------------------------


def test_dataset_with_image_feature_bytes(tmp_path: Path) -> None:
    blobs = [image_bytes(SIZE, 24, seed=i) for i in range(3)]
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    ds = datasets.Dataset.from_dict(
        {"image": [{"bytes": b, "path": None} for b in blobs], "caption": ["a", "b", "c"]}, features=features
    )
    src = open_source(ds)
    assert src.kind == "dataset" and src.num_rows == 3 and src.columns == ["image", "caption"]
    manifest = convert(ds, tmp_path / "out", **FAST)
    assert manifest.options["media_column"] == "image"
    check_images(tmp_path / "out", blobs, ["a", "b", "c"])
    sizes = np.asarray(open_store(tmp_path / "out").array("image_size"))
    assert sizes.tolist() == [[SIZE, 24]] * 3


def test_dataset_with_relative_path_column(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    names = image_files(tmp_path, 3)
    monkeypatch.chdir(tmp_path)  # a Dataset object's relative paths are relative to the working directory
    ds = datasets.Dataset.from_dict({"path": names, "caption": ["x", "y", "z"]})
    convert(ds, tmp_path / "out", image_column="path", **FAST)
    check_images(tmp_path / "out", [str(tmp_path / n) for n in names], ["x", "y", "z"])


def test_dataset_with_image_feature_from_paths(tmp_path: Path) -> None:
    paths = [str(tmp_path / n) for n in image_files(tmp_path, 2)]
    ds = datasets.Dataset.from_dict({"img": paths, "caption": ["p", "q"]}).cast_column("img", datasets.Image())
    assert ds.features["img"].decode  # convert must turn datasets' own decoding off
    convert(ds, tmp_path / "out", **FAST)
    check_images(tmp_path / "out", paths, ["p", "q"])


@pytest.mark.parametrize("typed", [True, False], ids=["Array3D", "nested-list"])
def test_dataset_with_array_column(tmp_path: Path, typed: bool) -> None:
    arrays = [pixels(SIZE, SIZE, seed=i) for i in range(3)]
    data = {"image": arrays, "caption": ["r", "s", "t"]}
    if typed:
        features = datasets.Features(
            {"image": datasets.Array3D((SIZE, SIZE, 3), "uint8"), "caption": datasets.Value("string")}
        )
        ds = datasets.Dataset.from_dict(data, features=features)
    else:
        ds = datasets.Dataset.from_dict(data)  # List(List(List(Value('uint8'))))
    # Rows come back as Python lists; the column's uint8 type must survive.
    convert(ds, tmp_path / "out", **FAST)
    check_images(tmp_path / "out", arrays, ["r", "s", "t"])


def test_dataset_dict_object_picks_the_split(tmp_path: Path) -> None:
    blobs = [image_bytes(SIZE, SIZE, seed=i) for i in range(3)]
    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"png": blobs[:1], "caption": ["t"]}),
            "validation": datasets.Dataset.from_dict({"png": blobs[1:], "caption": ["v1", "v2"]}),
        }
    )
    convert(dd, tmp_path / "out", split="validation", **FAST)
    check_images(tmp_path / "out", blobs[1:], ["v1", "v2"])
    with pytest.raises(SourceError, match=r"no split 'test'; splits: \['train', 'validation'\]"):
        open_source(dd, split="test")


def test_iterable_dataset(tmp_path: Path) -> None:
    blobs = [image_bytes(SIZE, SIZE, seed=i) for i in range(3)]
    ds = datasets.Dataset.from_dict({"jpg": blobs, "caption": ["1", "2", "3"]}).to_iterable_dataset()
    src = open_source(ds)
    assert src.num_rows is None
    convert(ds, tmp_path / "out", **FAST)
    check_images(tmp_path / "out", blobs, ["1", "2", "3"])


# --- save_to_disk --------------------------------------------------------------------------------


def test_save_to_disk_dataset(tmp_path: Path) -> None:
    blobs = [image_bytes(SIZE, SIZE, seed=i) for i in range(3)]
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    datasets.Dataset.from_dict({"image": blobs, "caption": ["d0", "d1", "d2"]}, features=features).save_to_disk(
        str(tmp_path / "saved")
    )
    src = open_source(tmp_path / "saved")
    assert src.kind == "disk" and src.num_rows == 3
    convert(str(tmp_path / "saved"), tmp_path / "out", **FAST)
    check_images(tmp_path / "out", blobs, ["d0", "d1", "d2"])


def test_save_to_disk_dataset_dict_picks_split(tmp_path: Path) -> None:
    train = [image_bytes(SIZE, SIZE, seed=i) for i in range(2)]
    test = [image_bytes(SIZE, SIZE, seed=10 + i) for i in range(3)]
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"image": train, "caption": ["t0", "t1"]}, features=features),
            "test": datasets.Dataset.from_dict({"image": test, "caption": ["e0", "e1", "e2"]}, features=features),
        }
    ).save_to_disk(str(tmp_path / "saved"))
    convert(tmp_path / "saved", tmp_path / "out", split="test", **FAST)
    check_images(tmp_path / "out", test, ["e0", "e1", "e2"])
    with pytest.raises(SourceError, match=r"no split 'validation'.*\['test', 'train'\]"):
        open_source(tmp_path / "saved", split="validation")


# --- data files -----------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl", ".csv"])
def test_data_file_with_relative_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str) -> None:
    data = tmp_path / "data"
    names = image_files(data, 3)
    table = write_table(data / f"pairs{suffix}", {"image": names, "caption": ["f0", "f1", "f2"]})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # paths are relative to the file's directory, not the working directory
    src = open_source(str(table))
    assert src.kind == "files" and src.base_dir == data.resolve()
    convert(str(table), tmp_path / "out", **FAST)
    check_images(tmp_path / "out", [str(data / n) for n in names], ["f0", "f1", "f2"])


def test_glob_and_list_of_parquet_files(tmp_path: Path) -> None:
    data = tmp_path / "data"
    names = image_files(data, 4)
    # Written out of order: the files are read sorted by name.
    write_table(data / "part-1.parquet", {"image": names[2:], "caption": ["g2", "g3"]})
    write_table(data / "part-0.parquet", {"image": names[:2], "caption": ["g0", "g1"]})
    inputs = [str(data / n) for n in names]
    convert(str(data / "part-*.parquet"), tmp_path / "glob", **FAST)
    check_images(tmp_path / "glob", inputs, ["g0", "g1", "g2", "g3"])
    convert([data / "part-1.parquet", data / "part-0.parquet"], tmp_path / "list", **FAST)
    check_images(tmp_path / "list", inputs, ["g0", "g1", "g2", "g3"])


def test_missing_and_mixed_files_are_source_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        open_source(str(tmp_path / "nope.parquet"))
    with pytest.raises(SourceError, match="no data files match"):
        open_source(str(tmp_path / "*.parquet"))
    a = write_table(tmp_path / "a.parquet", {"image": ["x.png"], "caption": ["c"]})
    b = write_table(tmp_path / "b.csv", {"image": ["x.png"], "caption": ["c"]})
    with pytest.raises(SourceError, match="must all be one of"):
        open_source([a, b])
    with pytest.raises(SourceError, match="does not exist"):
        convert(str(tmp_path / "missing.jsonl"), tmp_path / "out", **FAST)
    assert not (tmp_path / "out").exists()


# --- imagefolder / audiofolder ---------------------------------------------------------------------


@pytest.mark.parametrize("meta", ["metadata.jsonl", "metadata.csv"])
def test_imagefolder(tmp_path: Path, meta: str) -> None:
    folder = tmp_path / "folder"
    names = image_files(folder, 3, sub="pics")
    write_table(folder / meta, {"file_name": names, "caption": ["i0", "i1", "i2"]})
    src = open_source(folder)
    assert src.kind == "folder"
    assert src.columns == ["file_name", "caption", "image"]  # the media column named as Hugging Face names it
    manifest = convert(folder, tmp_path / "out", **FAST)
    assert manifest.options["media"] == "image" and manifest.options["media_column"] == "image"
    check_images(tmp_path / "out", [str(folder / n) for n in names], ["i0", "i1", "i2"])
    convert(folder, tmp_path / "by-file-name", image_column="file_name", **FAST)  # still accepted
    check_images(tmp_path / "by-file-name", [str(folder / n) for n in names], ["i0", "i1", "i2"])


def test_folder_without_file_name_column(tmp_path: Path) -> None:
    write_table(tmp_path / "folder" / "metadata.jsonl", {"image": ["a.png"], "caption": ["c"]})
    with pytest.raises(SourceError, match="no 'file_name' column"):
        open_source(tmp_path / "folder")


def test_audiofolder(tmp_path: Path) -> None:
    folder = tmp_path / "sounds"
    names = []
    for i in range(3):
        write_audio(folder / f"clip{i}.wav", 8000, 0.2 + 0.05 * i, freq=200.0 * (i + 1))
        names.append(f"clip{i}.wav")
    write_table(folder / "metadata.jsonl", {"file_name": names, "caption": ["s0", "s1", "s2"]})
    manifest = convert(folder, tmp_path / "out", **AUDIO)
    assert manifest.options["media"] == "audio"
    store = open_store(tmp_path / "out")
    assert store.media == "audio" and len(store) == 3
    options = AudioOptions(8000, 0.25)
    want = [decode_audio(str(folder / n), options) for n in names]
    np.testing.assert_array_equal(np.asarray(store.array("audio")), np.stack([w[0] for w in want]))
    assert np.asarray(store.array("audio_length")).tolist() == [1600, 2000, 2000]
    assert store.captions.take(range(3)) == ["s0", "s1", "s2"]


def test_audio_dataset_with_embedded_bytes(tmp_path: Path) -> None:
    from tests.media import audio_struct

    blobs = [audio_bytes(8000, 0.3, freq=300.0 + 100 * i) for i in range(2)]
    table = pa.table({"audio": audio_struct([(b, f"{i}.wav") for i, b in enumerate(blobs)]), "caption": ["u", "v"]})
    ds = datasets.Dataset(table).cast_column("audio", datasets.Audio(decode=False))
    convert(ds, tmp_path / "out", **AUDIO)
    store = open_store(tmp_path / "out")
    want = np.stack([decode_audio(b, AudioOptions(8000, 0.25))[0] for b in blobs])
    np.testing.assert_array_equal(np.asarray(store.array("audio")), want)


# --- dataset names (the datasets.load_dataset path) ---------------------------------------------------


def test_local_directory_as_dataset_name(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    names = image_files(repo, 3)
    write_table(repo / "train.parquet", {"url": names, "caption": ["h0", "h1", "h2"]})
    src = open_source(str(repo), split="train")
    assert src.kind == "hub" and src.spec == f"{repo}:train" and src.base_dir == repo.resolve()
    convert(str(repo), tmp_path / "out", **FAST)
    check_images(tmp_path / "out", [str(repo / n) for n in names], ["h0", "h1", "h2"])
    with pytest.raises(SourceError, match=r"split 'validation'.*train"):
        open_source(str(repo), split="validation")


def test_local_directory_of_data_files_with_splits(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    names = image_files(repo, 4)
    write_table(repo / "data" / "train-00000-of-00001.parquet", {"image": names[:3], "caption": ["a", "b", "c"]})
    write_table(repo / "data" / "test-00000-of-00001.parquet", {"image": names[3:], "caption": ["d"]})
    convert(str(repo), tmp_path / "out", split="test", **FAST)
    check_images(tmp_path / "out", [str(repo / names[3])], ["d"])
    with pytest.raises(SourceError, match="split 'dev'"):
        convert(str(repo), tmp_path / "dev", split="dev", **FAST)


def test_missing_dataset_name_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="cannot load dataset"):
        open_source(str(tmp_path / "no-such-dataset"))


def test_media_column_cannot_be_guessed(tmp_path: Path) -> None:
    ds = datasets.Dataset.from_dict({"thing": ["a"], "caption": ["c"]})
    with pytest.raises(OptionsError, match="cannot tell which column holds the media.*'thing'"):
        convert(ds, tmp_path / "out", **FAST)
