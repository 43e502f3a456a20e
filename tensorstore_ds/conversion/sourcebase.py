"""What every source is: the :class:`Source` interface, and what its readers share.

A source is a fixed sequence of rows, numbered from 0. ``rows(start, stop)``
yields ``(row_index, row)`` pairs, where a row maps column names to values;
reading the same source twice yields the same rows in the same order, which is
what lets a stopped conversion resume at its next row. ``slice`` makes a part of
a source a source of its own (a Dask shard), and ``describe`` is what the
store's manifest records.

Two readers implement it: :class:`DatasetSource` wraps a ``datasets`` dataset
(dataset objects, ``save_to_disk`` directories, data files, Hub names and
image/audio folders, see :mod:`.sources` and :mod:`.folders`), and
:class:`~.webdataset.WebDatasetSource` streams tar shards.

A row that a reader could not read itself (a shard cut short, a sample's JSON
that does not parse) is still a row: it holds a
:class:`~tensorstore_ds.errors.SampleError` under :data:`ROW_ERROR`, which
:func:`~.columns.media_of` raises, so the converter records it as a failed
sample like any other, in source order.

``datasets`` never decodes media here: image and audio columns are cast to
``decode=False`` (:meth:`Source.without_decoding`) and the bytes or paths go to
our own decoders, so no torchcodec or FFmpeg is needed. An exception that
``datasets`` raises while a source is opened or read becomes a
:class:`~tensorstore_ds.errors.SourceError` naming the source and what to do
(:func:`library_error`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import SourceError, TensorStoreDSError

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"})
AUDIO_EXTS = frozenset(
    {".wav", ".flac", ".ogg", ".oga", ".mp3", ".opus", ".aiff", ".aif", ".m4a", ".aac", ".webm", ".mp4"}
)
ROW_ERROR = "__error__"  # a row's key for the SampleError of a row its reader could not read
READ_BATCH = 256


def media_kind(name: str) -> str | None:
    """``"image"`` or ``"audio"`` from a file name's extension, or None."""
    suffix = Path(name).suffix.lower()
    return "image" if suffix in IMAGE_EXTS else "audio" if suffix in AUDIO_EXTS else None


class Source(ABC):
    """An opened source: rows in a fixed order (see the module docstring).

    Attributes
    ----------
    kind
        What the reader is (``"dataset"``, ``"disk"``, ``"folder"``, ``"files"``,
        ``"hub"``, ``"webdataset"``).
    spec
        What the user named (path, glob, dataset name, URL pattern), for messages and the manifest.
    fingerprint
        Identifies the source's content; a resume must see the same one.
    base_dir
        Directory that relative media paths are resolved against.
    """

    kind: str
    spec: str
    fingerprint: str
    base_dir: Path

    @property
    @abstractmethod
    def columns(self) -> list[str]:
        """The column names every row has."""

    @property
    def features(self) -> Mapping[str, Any]:
        """``datasets`` features by column, where the reader knows them."""
        return {}

    @property
    def num_rows(self) -> int | None:
        """The number of rows, or None for a stream of unknown length."""
        return None

    def describe(self) -> dict[str, Any]:
        """What the store's manifest records about its source."""
        return {"kind": self.kind, "spec": self.spec, "fingerprint": self.fingerprint, "num_rows": self.num_rows}

    def without_decoding(self, column: str | None) -> Source:
        """This source with ``column`` handed over as bytes or paths, never decoded by a library."""
        return self

    @abstractmethod
    def slice(self, start: int, stop: int) -> Source:
        """Rows ``start`` to ``stop`` as a source of their own, numbered from 0."""

    @abstractmethod
    def rows(self, start: int, stop: int | None) -> Iterator[tuple[int, dict[str, Any]]]:
        """Yield ``(row_index, row)`` for rows ``start`` to ``stop`` (exclusive; None: to the end)."""


@dataclass(frozen=True)
class DatasetSource(Source):
    """A source read through a ``datasets.Dataset`` or ``datasets.IterableDataset``.

    Parameters
    ----------
    dataset
        The rows.
    kind, spec, fingerprint, base_dir
        See :class:`Source`.
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
    def features(self) -> Mapping[str, Any]:
        return self.dataset.features or {}

    @property
    def num_rows(self) -> int | None:
        return getattr(self.dataset, "num_rows", None)

    def _with(self, dataset: Any) -> DatasetSource:
        return DatasetSource(dataset, self.kind, self.spec, self.fingerprint, self.base_dir)

    def without_decoding(self, column: str | None) -> Source:
        import datasets

        feature = self.features.get(column or "")
        kind = type(feature).__name__
        if kind not in ("Image", "Audio") or not getattr(feature, "decode", False):
            return self
        cast = datasets.Image(decode=False) if kind == "Image" else datasets.Audio(decode=False)
        try:
            return self._with(self.dataset.cast_column(column, cast))
        except TensorStoreDSError:
            raise
        except Exception as exc:
            raise library_error(self.spec, "read", exc) from exc

    def slice(self, start: int, stop: int) -> Source:
        ds = self.dataset
        if hasattr(ds, "select"):
            return self._with(ds.select(range(start, stop) if start < stop else []))  # datasets refuses []
        return self._with(ds.skip(start).take(stop - start))

    def rows(self, start: int, stop: int | None) -> Iterator[tuple[int, dict[str, Any]]]:
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
        batches = ds.iter(batch_size=READ_BATCH)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except TensorStoreDSError:
                raise
            except Exception as exc:
                raise library_error(self.spec, f"read row {row} of", exc) from exc
            keys = list(batch)
            for values in zip(*(batch[k] for k in keys)):
                yield row, dict(zip(keys, values))
                row += 1


def library_error(spec: str, doing: str, exc: BaseException) -> SourceError:
    """Our error for an exception a library (``datasets``, pyarrow, fsspec) raised on ``spec``.

    Parameters
    ----------
    spec
        The source as the user named it.
    doing
        What was being done, completing "cannot ... spec" (``"open"``, ``"read row 7 of"``).
    exc
        The library's exception (callers let our own errors through unchanged).
    """
    chain = _causes(exc)
    text = "; caused by ".join(f"{type(e).__name__}: {e}" for e in chain[:2])
    kinds = tuple(type(e) for e in chain)
    if any(issubclass(k, ImportError) for k in kinds):
        hint = (
            "datasets needs a library that is not installed to read this source's media; tensorstore_ds "
            "decodes images and audio itself, so give the data as a folder with a metadata file, data files "
            "(Parquet, JSON Lines, CSV) with paths or bytes, or WebDataset shards"
        )
    elif any(issubclass(k, FileNotFoundError) for k in kinds):
        hint = "check the path or dataset name"
    elif any(issubclass(k, (ConnectionError, TimeoutError)) for k in kinds) or "connect" in text.lower():
        hint = "check the network, or set HF_HUB_OFFLINE=1 to read what is already in the local cache"
    elif "split" in text.lower():
        hint = "choose a split the source has with --split"
    else:
        hint = "check that the source's files are complete, readable and of one layout, then rerun"
    return SourceError(f"cannot {doing} {spec}: {text}; {hint}")


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from, outermost first (libraries wrap the one that tells)."""
    chain = [exc]
    while len(chain) < 5:
        cause = chain[-1].__cause__ or chain[-1].__context__
        if cause is None or cause in chain:
            break
        chain.append(cause)
    return chain
