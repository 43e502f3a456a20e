"""Image and audio folders in the Hugging Face imagefolder/audiofolder layout, read by our own code.

A folder holds media files and one or more metadata files (``metadata.jsonl``,
``metadata.csv`` or ``metadata.parquet``), one row per sample. Layouts:

- **flat**: ``FOLDER/metadata.jsonl`` and the media below it: one split, ``train``;
- **split subfolders**: ``FOLDER/train/metadata.jsonl``, ``FOLDER/test/...``; a
  directory anywhere in the path whose name is one of Hugging Face's split
  keywords (``train``/``training``, ``validation``/``valid``/``val``/``dev``,
  ``test``/``testing``/``eval``/``evaluation``) puts the metadata files below it
  in that split; ``--split`` picks one, by its Hugging Face name or the
  directory's own name;
- **nested**: metadata files in subdirectories (``FOLDER/train/cats/metadata.jsonl``);
  the files of one split are read in path order and their rows concatenated.

A metadata row names its media file in ``file_name`` (or ``<name>_file_name``),
relative to the directory that holds the metadata file; a URL or an absolute
path is taken as it is. As Hugging Face does, the media column is called
``image`` or ``audio`` after the files' extensions (``<name>`` for
``<name>_file_name``); ``file_name`` stays too, and both hold the file's
absolute path, as the ``path`` of a Hugging Face Image/Audio column does (the
failure record then names the file wherever it is).

Metadata is read by the ``json``, ``csv`` and ``parquet`` builders of ``datasets``
(memory-mapped Arrow in its cache). They have no Image or Audio features, so
``datasets`` never decodes or encodes media, which for audio would need
torchcodec and FFmpeg; our decoders read the files.

Opening checks the folder: no metadata file, a split that is not there, and
rows naming local files that do not exist (one ``stat`` per row) are errors.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import MediaFilesMissingError, SourceError, SplitNotFoundError, TensorStoreDSError
from .sourcebase import AUDIO_EXTS, IMAGE_EXTS, DatasetSource, library_error, media_kind

METADATA_FILES = ("metadata.jsonl", "metadata.csv", "metadata.parquet")
METADATA_BUILDERS = {".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
SPLIT_KEYWORDS = {
    "train": ("train", "training"),
    "validation": ("validation", "valid", "val", "dev"),
    "test": ("test", "testing", "eval", "evaluation"),
}
DEFAULT_SPLIT = "train"
KIND_SAMPLE = 100  # file names looked at to tell an image folder from an audio folder
MISSING_SHOWN = 5


def find_metadata(root: Path) -> list[Path]:
    """Every metadata file under ``root``, in path order (hidden directories skipped)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__")))
        found += [Path(dirpath, name) for name in METADATA_FILES if name in filenames]
    return sorted(found, key=lambda p: p.relative_to(root).parts)


def first_media_file(root: Path) -> Path | None:
    """Some image or audio file under ``root``, or None: what a folder without metadata holds."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if Path(name).suffix.lower() in IMAGE_EXTS | AUDIO_EXTS:
                return Path(dirpath, name)
    return None


def no_metadata_error(root: Path, example: Path) -> SourceError:
    """The error for a folder of media without a metadata file."""
    return SourceError(
        f"{root} holds {media_kind(example.name)} files ({example.relative_to(root)}) but no "
        f"{', '.join(METADATA_FILES[:-1])} or {METADATA_FILES[-1]}: captions come from a metadata file with a 'file_name' column (each media "
        "file's path relative to the metadata file) and a 'caption' column; write one next to the media, or one "
        "in each split folder (train/, test/)"
    )


def split_of(root: Path, metadata: Path) -> tuple[str, str]:
    """The split a metadata file belongs to: its Hugging Face name, and the directory name that set it."""
    for part in metadata.parent.relative_to(root).parts:
        for split, keywords in SPLIT_KEYWORDS.items():
            if part.lower() in keywords:
                return split, part
    return DEFAULT_SPLIT, DEFAULT_SPLIT


def open_folder(path: Path, split: str, found: list[Path], load_kwargs: dict[str, Any]) -> DatasetSource:
    """The rows of one split of a folder (see the module docstring).

    Parameters
    ----------
    path
        The folder.
    split
        The split to read.
    found
        The folder's metadata files (:func:`find_metadata`).
    load_kwargs
        Passed to ``datasets.load_dataset`` (``cache_dir=``, ...).
    """
    import datasets

    root = path.resolve()
    splits = {meta: split_of(root, meta.resolve()) for meta in found}
    chosen = [meta for meta, names in splits.items() if split in names]
    if not chosen:
        raise SplitNotFoundError(f"folder {path}", split, sorted({name for name, _ in splits.values()}))
    parts = [_read_metadata(meta, root, load_kwargs) for meta in chosen]
    for meta, part in zip(chosen[1:], parts[1:]):
        if part.column_names != parts[0].column_names:
            raise SourceError(
                f"metadata files {chosen[0]} and {meta} of split {split!r} have different columns: "
                f"{parts[0].column_names} and {part.column_names}; give every metadata file of a split the same columns"
            )
    try:
        ds = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    except Exception as exc:
        raise library_error(f"folder {path}", f"join the metadata files of split {split!r} of", exc) from exc
    return DatasetSource(ds, "folder", str(path), _fingerprint(root, chosen, split), root)


def _fingerprint(root: Path, metadata: list[Path], split: str) -> str:
    """Changes when a metadata file of the split is rewritten (path, size, modification time)."""
    digest = hashlib.sha256(split.encode())
    for meta in metadata:
        stat = meta.stat()
        digest.update(f"\0{meta.resolve().relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:32]


def _read_metadata(meta: Path, root: Path, load_kwargs: dict[str, Any]) -> Any:
    """One metadata file as a dataset whose file-name columns are resolved and named as Hugging Face does."""
    import datasets

    try:
        ds = datasets.load_dataset(METADATA_BUILDERS[meta.suffix], data_files=str(meta), split="train", **load_kwargs)
    except TensorStoreDSError:
        raise
    except Exception as exc:
        raise library_error(str(meta), "read the metadata file", exc) from exc
    names = [c for c in ds.column_names if c == "file_name" or c.endswith("_file_name")]
    if not names:
        raise SourceError(
            f"{meta} has no 'file_name' column (or '<name>_file_name'); columns: {ds.column_names}; add one "
            f"naming each row's media file relative to {meta.parent}"
        )
    directory = str(meta.resolve().parent)
    aliases = {name: _alias(ds, name, meta) for name in names}
    _check_files(ds, names, directory, str(meta))
    try:
        return ds.map(
            _resolve_batch,
            batched=True,
            fn_kwargs={"directory": directory, "aliases": aliases},
            desc=f"resolving file names of {meta.name}",
        )
    except Exception as exc:
        raise library_error(str(meta), "resolve the file names of", exc) from exc


def _alias(ds: Any, name: str, meta: Path) -> str | None:
    """The Hugging Face name of a file-name column: ``image``/``audio`` for ``file_name``, ``x`` for ``x_file_name``."""
    feature = ds.features[name]
    if getattr(feature, "dtype", None) not in ("string", "large_string"):
        raise SourceError(f"column {name!r} of {meta} holds {feature}, not file names; write them as text")
    if name != "file_name":
        alias: str | None = name[: -len("_file_name")]
    else:
        sample = ds.select_columns([name]).select(range(min(KIND_SAMPLE, ds.num_rows)))[name]
        kinds = {media_kind(v) for v in sample if v} - {None}
        alias = "audio" if "audio" in kinds else "image" if "image" in kinds else None
    if alias and alias in ds.column_names:
        raise SourceError(
            f"{meta} has both {name!r} and {alias!r}: the media named by {name!r} is read as column {alias!r} "
            f"(as Hugging Face names it); rename the metadata's own {alias!r} column"
        )
    return alias


def _relative_names(ds: Any, names: list[str]) -> Iterator[str]:
    """Every non-empty local file name in ``names``'s columns, as written (URLs skipped)."""
    for batch in ds.select_columns(names).iter(batch_size=4096):
        for column in batch.values():
            yield from (v for v in column if v and "://" not in v)


def _check_files(ds: Any, names: list[str], directory: str, meta: str) -> None:
    """Raise :class:`MediaFilesMissingError` when rows name files that do not exist."""
    missing: list[str] = []
    count = 0
    for name in _relative_names(ds, names):
        if not os.path.isfile(os.path.join(directory, name)):  # an absolute name stays absolute
            count += 1
            if len(missing) < MISSING_SHOWN:
                missing.append(name)
    if count:
        raise MediaFilesMissingError(meta, missing, count)


def _resolve_batch(batch: dict[str, list[Any]], directory: str, aliases: dict[str, str | None]) -> dict[str, list[Any]]:
    """Absolute file paths (URLs kept), under the column's own name and its Hugging Face name."""
    out: dict[str, list[Any]] = {}
    for name, alias in aliases.items():
        out[name] = [os.path.normpath(os.path.join(directory, v)) if v and "://" not in v else v for v in batch[name]]
        if alias:
            out[alias] = out[name]
    return out
