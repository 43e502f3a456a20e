"""Sources: every kind of input the converter reads, and which reader opens it.

:func:`open_source` takes

- a ``datasets.Dataset`` or ``datasets.IterableDataset`` object (or a
  ``DatasetDict``, of which ``split`` is taken);
- a directory written by ``Dataset.save_to_disk``;
- an image or audio folder in the Hugging Face imagefolder/audiofolder layout,
  flat, with split subfolders, or nested, read by our own code
  (:mod:`.folders`): no torchcodec or FFmpeg is needed;
- WebDataset tar shards: a ``.tar`` path, glob, brace pattern or URL, a
  directory of shards, or a list of them, streamed (:mod:`.webdataset`);
- Parquet, JSON Lines or CSV files (a file, a glob, or a list of them);
- anything else is passed to ``datasets.load_dataset(name, split=split)``: a
  Hub dataset name, or a local directory of data files.

Every source is a :class:`~.sourcebase.Source` (its contract is in
:mod:`.sourcebase`). Any exception ``datasets`` raises while a source is opened
is turned into a :class:`~tensorstore_ds.errors.SourceError` naming the source
and what to do.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import SourceError, SplitNotFoundError, TensorStoreDSError
from .folders import find_metadata, first_media_file, no_metadata_error, open_folder
from .sourcebase import DatasetSource, Source, library_error
from .webdataset import is_shard_spec, open_webdataset, shards_in

__all__ = ["FILE_BUILDERS", "Source", "open_source"]

FILE_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}


def open_source(source: Any, split: str = "train", **load_kwargs: Any) -> Source:
    """Open any supported source (see the module docstring).

    Parameters
    ----------
    source
        A dataset object, a path, a glob, a URL, a list of data files or shards, or a dataset name.
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
        return DatasetSource(source, "dataset", f"<{type(source).__name__} {fingerprint}>", fingerprint, Path.cwd())
    if isinstance(source, (list, tuple)):
        specs = [os.fspath(p) for p in source]
        if specs and all(is_shard_spec(s) for s in specs):
            return open_webdataset(specs)
        return _guarded(specs[0] if specs else "[]", lambda: _open_files(specs, split, load_kwargs))
    spec = os.fspath(source)
    path = Path(spec)
    if is_shard_spec(spec):
        return open_webdataset([spec])
    if path.is_dir():
        return _open_directory(path, split, load_kwargs)
    if path.suffix.lower() in FILE_BUILDERS or glob.has_magic(spec):
        return _guarded(spec, lambda: _open_files([spec], split, load_kwargs))
    return _open_hub(spec, split, load_kwargs)


def _open_directory(path: Path, split: str, load_kwargs: dict[str, Any]) -> Source:
    """A saved dataset, a folder with metadata, a directory of shards, or a directory of data files."""
    if (path / "state.json").exists() or (path / "dataset_dict.json").exists():
        return _guarded(str(path), lambda: _open_disk(path, split))
    metadata = find_metadata(path)
    if metadata:
        return open_folder(path, split, metadata, load_kwargs)
    if shards_in(path):
        return open_webdataset([str(path)])
    has_data_files = any(p.suffix.lower() in FILE_BUILDERS or p.suffix == ".arrow" for p in path.rglob("*.*"))
    media = None if has_data_files else first_media_file(path)
    if media is not None:
        raise no_metadata_error(path, media)
    return _open_hub(str(path), split, load_kwargs)


def _guarded(spec: str, opener: Any) -> Source:
    """Run ``opener()``; an exception from a library becomes our SourceError."""
    try:
        source: Source = opener()
    except TensorStoreDSError:
        raise
    except Exception as exc:
        raise library_error(spec, "open", exc) from exc
    return source


def _open_disk(path: Path, split: str) -> Source:
    import datasets

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        ds = _pick_split(ds, split, str(path))
    return DatasetSource(ds, "disk", str(path), ds._fingerprint, path)


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
    return DatasetSource(ds, "files", ", ".join(specs), ds._fingerprint, base)


def _open_hub(name: str, split: str, kwargs: dict[str, Any]) -> Source:
    import datasets

    try:
        ds = datasets.load_dataset(name, split=split, **kwargs)
    except TensorStoreDSError:
        raise
    except Exception as exc:  # 'Unknown split "x". Should be one of [...]', missing names, network, ImportError
        raise library_error(f"{name!r} (split {split!r})", "load dataset", exc) from exc
    base = Path(name).resolve() if Path(name).is_dir() else Path.cwd()
    return DatasetSource(ds, "hub", f"{name}:{split}", ds._fingerprint, base)


def _pick_split(dd: Any, split: str, spec: str) -> Any:
    if split not in dd:
        raise SplitNotFoundError(spec, split, list(dd))
    return dd[split]
