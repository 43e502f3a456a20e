"""Sources: every kind of input the converter reads, opened as a ``datasets`` dataset.

A source is one of

- a ``datasets.Dataset`` or ``datasets.IterableDataset`` object (or a
  ``DatasetDict``, of which ``split`` is taken);
- a directory written by ``Dataset.save_to_disk``;
- a folder in the imagefolder/audiofolder convention (media files plus
  ``metadata.jsonl``, ``metadata.csv`` or ``metadata.parquet`` with a
  ``file_name`` column); the metadata is read with the ``datasets`` loaders and
  ``file_name`` becomes an absolute path, so no audio decoder (torchcodec) is
  needed;
- Parquet, JSON Lines or CSV files (a file, a glob, or a list of them);
- anything else is passed to ``datasets.load_dataset(name, split=split)``: a
  Hub dataset name, or a local directory of data files.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import SourceError

FILE_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}
METADATA_FILES = ("metadata.jsonl", "metadata.csv", "metadata.parquet")
READ_BATCH = 256


@dataclass(frozen=True)
class Source:
    """An opened source.

    Parameters
    ----------
    dataset
        The rows, as a ``datasets.Dataset`` or ``datasets.IterableDataset``.
    kind
        ``"dataset"``, ``"disk"``, ``"folder"``, ``"files"`` or ``"hub"``.
    spec
        What the user named (path, glob, dataset name), for messages and the manifest.
    fingerprint
        Identifies the source's content; a resume must see the same one.
    base_dir
        Directory that relative media paths are resolved against.
    """

    dataset: Any
    kind: str
    spec: str
    fingerprint: str
    base_dir: Path

    @property
    def columns(self) -> list[str]:
        return list(self.dataset.column_names or self.dataset.features or [])

    @property
    def num_rows(self) -> int | None:
        return getattr(self.dataset, "num_rows", None)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "spec": self.spec, "fingerprint": self.fingerprint, "num_rows": self.num_rows}

    def slice(self, start: int, stop: int) -> Source:
        """Rows ``start`` to ``stop`` as a source of their own, numbered from 0."""
        ds = self.dataset
        if hasattr(ds, "select"):
            part = ds.select(range(start, stop) if start < stop else [])  # datasets refuses an empty range
        else:
            part = ds.skip(start).take(stop - start)
        return Source(part, self.kind, self.spec, self.fingerprint, self.base_dir)

    def rows(self, start: int, stop: int | None) -> Iterator[tuple[int, dict[str, Any]]]:
        """Yield ``(row_index, row)`` for rows ``start`` to ``stop`` (exclusive)."""
        ds = self.dataset
        if hasattr(ds, "select"):
            end = ds.num_rows if stop is None else min(stop, ds.num_rows)
            if start >= end:
                return
            ds = ds.select(range(start, end))
        else:
            ds = ds.skip(start) if start else ds
            ds = ds.take(stop - start) if stop is not None else ds
        row = start
        for batch in ds.iter(batch_size=READ_BATCH):
            keys = list(batch)
            for values in zip(*(batch[k] for k in keys)):
                yield row, dict(zip(keys, values))
                row += 1


def open_source(source: Any, split: str = "train", **load_kwargs: Any) -> Source:
    """Open any supported source (see the module docstring).

    Parameters
    ----------
    source
        A dataset object, a path, a glob, a list of data files, or a dataset name.
    split
        Split to load for names, folders and data files.
    **load_kwargs
        Passed to ``datasets.load_dataset`` (``cache_dir=``, ``revision=``, ...).
    """
    import datasets

    if isinstance(source, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        source = _pick_split(source, split, f"the {type(source).__name__}")
    if isinstance(source, (datasets.Dataset, datasets.IterableDataset)):
        fingerprint = getattr(source, "_fingerprint", None) or repr(source)
        return Source(source, "dataset", f"<{type(source).__name__} {fingerprint}>", fingerprint, Path.cwd())
    if isinstance(source, (list, tuple)):
        return _open_files([os.fspath(p) for p in source], split, load_kwargs)
    spec = os.fspath(source)
    path = Path(spec)
    if path.is_dir() and ((path / "state.json").exists() or (path / "dataset_dict.json").exists()):
        return _open_disk(path, split)
    if path.is_dir() and any((path / m).exists() for m in METADATA_FILES):
        return _open_folder(path, split, load_kwargs)
    if path.suffix.lower() in FILE_BUILDERS or glob.has_magic(spec):
        return _open_files([spec], split, load_kwargs)
    return _open_hub(spec, split, load_kwargs)


def _open_disk(path: Path, split: str) -> Source:
    import datasets

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        ds = _pick_split(ds, split, str(path))
    return Source(ds, "disk", str(path), ds._fingerprint, path)


def _open_files(specs: Sequence[str], split: str, kwargs: dict[str, Any]) -> Source:
    import datasets

    files = sorted(f for s in specs for f in (glob.glob(s, recursive=True) if glob.has_magic(s) else [s]))
    if not files:
        raise SourceError(f"no data files match {', '.join(specs)}")
    for f in files:
        if not Path(f).is_file():
            raise SourceError(f"data file {f} does not exist")
    builders = {FILE_BUILDERS.get(Path(f).suffix.lower()) for f in files}
    if len(builders) != 1 or None in builders:
        raise SourceError(f"data files must all be one of {sorted(FILE_BUILDERS)}; got {files[:5]}")
    ds = datasets.load_dataset(builders.pop(), data_files={split: files}, split=split, **kwargs)
    base = Path(files[0]).resolve().parent
    return Source(ds, "files", ", ".join(specs), ds._fingerprint, base)


def _open_folder(path: Path, split: str, kwargs: dict[str, Any]) -> Source:
    import datasets

    meta = next(path / m for m in METADATA_FILES if (path / m).exists())
    ds = datasets.load_dataset(FILE_BUILDERS[meta.suffix], data_files={split: str(meta)}, split=split, **kwargs)
    if "file_name" not in ds.column_names:
        raise SourceError(f"{meta} has no 'file_name' column; columns: {ds.column_names}")
    root = str(path.resolve())
    ds = ds.map(
        lambda b: {"file_name": [os.path.join(root, f) if f else f for f in b["file_name"]]},
        batched=True,
        desc="resolving file names",
    )
    return Source(ds, "folder", str(path), ds._fingerprint, path.resolve())


def _open_hub(name: str, split: str, kwargs: dict[str, Any]) -> Source:
    import datasets

    try:
        ds = datasets.load_dataset(name, split=split, **kwargs)
    except (FileNotFoundError, ValueError) as exc:  # ValueError: 'Unknown split "x". Should be one of [...]'
        raise SourceError(f"cannot load dataset {name!r} (split {split!r}): {exc}") from exc
    except (ConnectionError, OSError) as exc:
        raise SourceError(f"cannot reach dataset {name!r}: {exc}") from exc
    base = Path(name).resolve() if Path(name).is_dir() else Path.cwd()
    return Source(ds, "hub", f"{name}:{split}", ds._fingerprint, base)


def _pick_split(dd: Any, split: str, spec: str) -> Any:
    if split not in dd:
        raise SourceError(f"{spec} has no split {split!r}; splits: {sorted(dd)}")
    return dd[split]
