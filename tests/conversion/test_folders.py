"""Hugging Face imagefolder/audiofolder layouts, read by our own code, without torchcodec or FFmpeg.

Every layout the Hugging Face docs show (flat, split subfolders, nested
directories; metadata as JSON Lines, CSV or Parquet) converts for images and
audio alike, with the media column named ``image``/``audio`` as Hugging Face
names it. The audio tests block torchcodec and make ``datasets``' own audio
and image decoding fail the test outright: nothing in the path may need them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import datasets
import numpy as np
import pytest

from tensorstore_ds.cli import main
from tensorstore_ds.conversion.api import convert
from tensorstore_ds.conversion.decode.audio import AudioOptions, decode_audio
from tensorstore_ds.conversion.decode.image import ImageOptions, decode_image
from tensorstore_ds.conversion.sources import open_source
from tensorstore_ds.errors import MediaFilesMissingError, SourceError, SplitNotFoundError
from tensorstore_ds.store.store import open_store
from tests.media import write_audio, write_image, write_table

SIZE = 16
FAST = {"image_size": SIZE, "chunk_mb": 0.002, "workers": 0, "progress": False}
AUDIO = {"sample_rate": 8000, "audio_seconds": 0.25, "chunk_mb": 0.01, "workers": 0, "progress": False}
AUDIO_FLAGS = ["--sample-rate", "8000", "--audio-seconds", "0.25", "--chunk-mb", "0.01", "--workers", "0", "--quiet"]
IMAGE_FLAGS = ["--image-size", str(SIZE), "--chunk-mb", "0.002", "--workers", "0", "--quiet"]
SPLITS = {"train": 3, "test": 2}


@pytest.fixture
def no_torchcodec(monkeypatch: pytest.MonkeyPatch) -> None:
    """This machine has no torchcodec, and ``datasets`` may not decode or encode any media."""
    monkeypatch.setitem(sys.modules, "torchcodec", None)  # `import torchcodec` raises ImportError

    def forbidden(self: object, *args: object, **kwargs: object) -> None:
        pytest.fail(f"datasets tried to decode or encode media ({type(self).__name__}); we decode it ourselves")

    for feature in (datasets.Audio, datasets.Image):
        monkeypatch.setattr(feature, "decode_example", forbidden)
        monkeypatch.setattr(feature, "encode_example", forbidden)


def hf_folder(root: Path, media: str, meta: str = "metadata.jsonl") -> dict[str, list[tuple[Path, str]]]:
    """A folder as the Hugging Face docs lay it out: ``train/`` and ``test/``, media in nested directories.

    Returns the (file, caption) pairs of each split, in metadata order.
    """
    made: dict[str, list[tuple[Path, str]]] = {}
    for split, n in SPLITS.items():
        names, pairs = [], []
        for i in range(n):
            if media == "image":
                name = f"animals/{'cats' if i % 2 else 'dogs'}/{i}.png"
                write_image(root / split / name, SIZE, SIZE + i, seed=10 * len(made) + i)
            else:
                name = f"speakers/{'a' if i % 2 else 'b'}/deep/{i}.{'flac' if i % 2 else 'wav'}"
                write_audio(root / split / name, 8000, 0.2 + 0.02 * i, freq=200.0 * (i + 1) + 50 * len(made))
            names.append(name)
            pairs.append((root / split / name, f"{split} {media} {i}"))
        write_table(root / split / meta, {"file_name": names, "caption": [c for _, c in pairs]})
        made[split] = pairs
    return made


def check_store(out: Path, media: str, pairs: list[tuple[Path, str]]) -> None:
    store = open_store(out)
    assert store.media == media and len(store) == len(pairs)
    assert store.failures() == []
    assert store.captions.take(range(len(pairs))) == [c for _, c in pairs]
    if media == "image":
        want = np.stack([decode_image(str(p), ImageOptions(SIZE))[0] for p, _ in pairs])
        np.testing.assert_array_equal(np.asarray(store.array("images")), want)
    else:
        want = np.stack([decode_audio(str(p), AudioOptions(8000, 0.25))[0] for p, _ in pairs])
        np.testing.assert_array_equal(np.asarray(store.array("audio")), want)
    store.close()


# --- the "done when": split subfolders with nested directories, from the command line --------


@pytest.mark.usefixtures("no_torchcodec")
@pytest.mark.parametrize("split", ["train", "test"])
def test_audiofolder_with_split_subfolders_from_the_command_line(tmp_path: Path, split: str) -> None:
    made = hf_folder(tmp_path / "sounds", "audio")
    out = tmp_path / "out"
    argv = ["convert", str(tmp_path / "sounds"), str(out), "--split", split, "--audio-column", "audio"]
    assert main([*argv, *AUDIO_FLAGS]) == 0
    check_store(out, "audio", made[split])
    assert open_store(out).manifest.options["media_column"] == "audio"


@pytest.mark.usefixtures("no_torchcodec")
@pytest.mark.parametrize("split", ["train", "test"])
def test_imagefolder_with_split_subfolders_from_the_command_line(tmp_path: Path, split: str) -> None:
    made = hf_folder(tmp_path / "pics", "image")
    out = tmp_path / "out"
    argv = ["convert", str(tmp_path / "pics"), str(out), "--split", split, "--image-column", "image"]
    assert main([*argv, *IMAGE_FLAGS]) == 0
    check_store(out, "image", made[split])


@pytest.mark.usefixtures("no_torchcodec")
def test_the_media_column_is_named_as_hugging_face_names_it(tmp_path: Path) -> None:
    made = hf_folder(tmp_path / "sounds", "audio")
    src = open_source(tmp_path / "sounds", split="test")
    assert src.kind == "folder" and src.num_rows == 2
    assert src.columns == ["file_name", "caption", "audio"]
    rows = [row for _, row in src.rows(0, None)]
    assert [r["audio"] for r in rows] == [r["file_name"] for r in rows] == [str(p.resolve()) for p, _ in made["test"]]
    manifest = convert(tmp_path / "sounds", tmp_path / "auto", split="test", **AUDIO)  # found without flags
    assert manifest.options["media_column"] == "audio"
    convert(tmp_path / "sounds", tmp_path / "by-file-name", split="test", audio_column="file_name", **AUDIO)
    check_store(tmp_path / "by-file-name", "audio", made["test"])


# --- every layout and metadata format -------------------------------------------------------------


@pytest.mark.usefixtures("no_torchcodec")
@pytest.mark.parametrize("meta", ["metadata.jsonl", "metadata.csv", "metadata.parquet"])
@pytest.mark.parametrize("media", ["image", "audio"])
def test_metadata_formats_for_images_and_audio(tmp_path: Path, media: str, meta: str) -> None:
    made = hf_folder(tmp_path / "folder", media, meta)
    convert(tmp_path / "folder", tmp_path / "out", split="test", **(FAST if media == "image" else AUDIO))
    check_store(tmp_path / "out", media, made["test"])


@pytest.mark.usefixtures("no_torchcodec")
@pytest.mark.parametrize("media", ["image", "audio"])
def test_flat_folder_with_nested_directories(tmp_path: Path, media: str) -> None:
    folder = tmp_path / "flat"
    made = hf_folder(tmp_path / "made", media)["train"]
    pairs = []
    for i, (path, caption) in enumerate(made):  # move the train split's files under one flat folder
        target = folder / "a" / "b" / f"{i}{path.suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        path.rename(target)
        pairs.append((target, caption))
    write_table(
        folder / "metadata.csv", {"file_name": [f"a/b/{p.name}" for p, _ in pairs], "caption": [c for _, c in pairs]}
    )
    convert(folder, tmp_path / "out", **(FAST if media == "image" else AUDIO))
    check_store(tmp_path / "out", media, pairs)
    with pytest.raises(SplitNotFoundError, match=r"folder .*flat has no split 'test'; splits: \['train'\]"):
        open_source(folder, split="test")


def test_image_column_image_on_a_flat_folder(tmp_path: Path) -> None:
    """The issue measured ``image column 'image' is not in the source`` for a flat folder."""
    folder = tmp_path / "flat"
    paths = [write_image(folder / f"{i}.png", SIZE, SIZE, seed=i) for i in range(2)]
    write_table(folder / "metadata.jsonl", {"file_name": ["0.png", "1.png"], "caption": ["a", "b"]})
    assert main(["convert", str(folder), str(tmp_path / "out"), "--image-column", "image", *IMAGE_FLAGS]) == 0
    check_store(tmp_path / "out", "image", list(zip(paths, ["a", "b"])))


@pytest.mark.usefixtures("no_torchcodec")
def test_the_guard_fails_a_test_when_datasets_decodes_audio(tmp_path: Path) -> None:
    path = write_audio(tmp_path / "a.wav", 8000, 0.1)
    ds = datasets.Dataset.from_dict({"audio": [str(path)]}).cast_column("audio", datasets.Audio())
    with pytest.raises(pytest.fail.Exception, match="datasets tried to decode or encode media"):
        ds[0]


def test_nested_metadata_files_are_read_in_path_order(tmp_path: Path) -> None:
    """Each metadata file names files relative to its own directory; a split's files are concatenated."""
    root = tmp_path / "folder"
    pairs = []
    for group in ("cats", "dogs"):
        for i in range(2):
            path = write_image(root / "train" / group / "img" / f"{i}.png", SIZE, SIZE, seed=len(pairs))
            pairs.append((path, f"{group} {i}"))
        write_table(root / "train" / group / "metadata.jsonl", {"file_name": ["img/0.png", "img/1.png"], "caption": [c for _, c in pairs[-2:]]})  # fmt: skip
    src = open_source(root)
    assert [row["image"] for _, row in src.rows(0, None)] == [str(p.resolve()) for p, _ in pairs]
    convert(root, tmp_path / "out", **FAST)
    check_store(tmp_path / "out", "image", pairs)


def test_split_directories_by_hugging_face_keywords(tmp_path: Path) -> None:
    """``dev/`` is the validation split, chosen by either name; a keyword directory may sit deeper."""
    root = tmp_path / "folder"
    for split_dir, seed in (("data/training", 0), ("data/dev", 1)):
        write_image(root / split_dir / "x.png", SIZE, SIZE, seed=seed)
        write_table(root / split_dir / "metadata.jsonl", {"file_name": ["x.png"], "caption": [split_dir]})
    for split in ("validation", "dev"):
        rows = [row for _, row in open_source(root, split=split).rows(0, None)]
        assert [(r["image"], r["caption"]) for r in rows] == [(str((root / "data/dev/x.png").resolve()), "data/dev")]
    assert next(open_source(root).rows(0, 1))[1]["caption"] == "data/training"
    with pytest.raises(SplitNotFoundError, match=r"has no split 'test'; splits: \['train', 'validation'\]; choose"):
        open_source(root, split="test")


def test_file_name_prefixed_columns_and_urls(tmp_path: Path) -> None:
    """``<name>_file_name`` is read as column ``<name>``; URLs and absolute paths are kept as they are."""
    root = tmp_path / "folder"
    write_image(root / "p" / "0.png", SIZE, SIZE)
    elsewhere = write_image(tmp_path / "elsewhere.png", SIZE, SIZE, seed=3)
    write_table(root / "metadata.jsonl", {"photo_file_name": ["p/0.png", str(elsewhere), "http://127.0.0.1:9/x.png"], "caption": ["a", "b", "c"]})  # fmt: skip
    src = open_source(root)
    assert src.columns == ["photo_file_name", "caption", "photo"]
    want = [str((root / "p/0.png").resolve()), str(elsewhere), "http://127.0.0.1:9/x.png"]
    assert [row["photo"] for _, row in src.rows(0, None)] == want


# --- clear errors of ours -------------------------------------------------------------------------------


@pytest.mark.parametrize("media", ["image", "audio"])
def test_folder_without_metadata(tmp_path: Path, media: str) -> None:
    hf_folder(tmp_path / "folder", media)
    for meta in (tmp_path / "folder").rglob("metadata.jsonl"):
        meta.unlink()
    with pytest.raises(SourceError, match=rf"holds {media} files \(.*\) but no metadata.jsonl, metadata.csv or metadata.parquet: captions come from"):  # fmt: skip
        open_source(tmp_path / "folder")
    assert main(["convert", str(tmp_path / "folder"), str(tmp_path / "out"), "--quiet"]) == 2


def test_metadata_row_naming_a_missing_file(tmp_path: Path) -> None:
    made = hf_folder(tmp_path / "folder", "image")
    made["test"][1][0].unlink()
    with pytest.raises(MediaFilesMissingError, match=r"test/metadata.jsonl: 1 row\(s\) name media files that do not exist \('animals/cats/1.png'\); fix their file_name"):  # fmt: skip
        open_source(tmp_path / "folder", split="test")
    open_source(tmp_path / "folder", split="train")  # the other split is whole
    assert not (tmp_path / "out").exists()


def test_split_that_does_not_exist(tmp_path: Path) -> None:
    hf_folder(tmp_path / "folder", "audio")
    with pytest.raises(SplitNotFoundError, match=r"has no split 'validation'; splits: \['test', 'train'\]; choose one with --split"):  # fmt: skip
        convert(tmp_path / "folder", tmp_path / "out", split="validation", **AUDIO)
    assert main(["convert", str(tmp_path / "folder"), str(tmp_path / "o"), "--split", "dev", "--quiet"]) == 2


def test_metadata_without_a_file_name_column(tmp_path: Path) -> None:
    write_table(tmp_path / "folder" / "metadata.jsonl", {"image": ["a.png"], "caption": ["c"]})
    with pytest.raises(SourceError, match=r"has no 'file_name' column \(or '<name>_file_name'\); columns: \['image', 'caption'\]"):  # fmt: skip
        open_source(tmp_path / "folder")


def test_metadata_with_both_file_name_and_its_hugging_face_name(tmp_path: Path) -> None:
    write_image(tmp_path / "folder" / "a.png", SIZE, SIZE)
    write_table(tmp_path / "folder" / "metadata.jsonl", {"file_name": ["a.png"], "image": ["x"], "caption": ["c"]})
    with pytest.raises(SourceError, match=r"has both 'file_name' and 'image'.*rename the metadata's own 'image'"):
        open_source(tmp_path / "folder")


def test_split_metadata_files_with_different_columns(tmp_path: Path) -> None:
    for group, extra in (("a", {}), ("b", {"score": [1]})):
        write_image(tmp_path / "folder" / group / "x.png", SIZE, SIZE)
        write_table(tmp_path / "folder" / group / "metadata.jsonl", {"file_name": ["x.png"], "caption": ["c"], **extra})
    with pytest.raises(SourceError, match=r"a/metadata.jsonl and .*b/metadata.jsonl of split 'train' have different columns"):  # fmt: skip
        open_source(tmp_path / "folder")


def test_unreadable_metadata_is_our_error(tmp_path: Path) -> None:
    write_image(tmp_path / "folder" / "a.png", SIZE, SIZE)
    (tmp_path / "folder" / "metadata.jsonl").write_text('{"file_name": "a.png", "caption": "c"}\n{"file_name": \n')
    with pytest.raises(SourceError, match=r"cannot read the metadata file .*metadata.jsonl: .*; check that the source's files are complete"):  # fmt: skip
        open_source(tmp_path / "folder")


def test_datasets_own_audiofolder_error_is_wrapped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the issue measured: ``datasets``' audiofolder builder needs torchcodec. Reached by name
    (``load_dataset("audiofolder", data_dir=...)``), its ImportError becomes our SourceError with a way out."""
    hf_folder(tmp_path / "sounds", "audio")
    monkeypatch.setitem(sys.modules, "torchcodec", None)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SourceError, match=r"cannot load dataset 'audiofolder' \(split 'train'\): .*ImportError: .*torchcodec.*tensorstore_ds decodes images and audio itself, so give the data as a folder"):  # fmt: skip
        open_source("audiofolder", data_dir=str(tmp_path / "sounds"))
