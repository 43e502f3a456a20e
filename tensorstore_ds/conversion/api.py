"""``convert``: any image-text or audio-text source into a store, once."""

from __future__ import annotations

import os
from typing import Any

from ..format.manifest import Manifest
from .options import ConvertOptions
from .run import convert_rows
from .shards import parse_shard, shard_dir


def convert(source: Any, out: str | os.PathLike[str], client: Any = None, **options: Any) -> Manifest:
    """Convert an image-text or audio-text dataset into a store at ``out``.

    Parameters
    ----------
    source
        A ``datasets`` dataset, a ``save_to_disk`` directory, an
        imagefolder/audiofolder directory, Parquet/JSON Lines/CSV files, or a
        dataset name for ``datasets.load_dataset``.
    out
        The store directory, or a URL (``s3://bucket/prefix/store``, any
        writable fsspec URL) that the store is converted straight into, with
        ``storage_options=`` for fsspec (see :mod:`~tensorstore_ds.conversion.upload`).
        Rerunning the same call after a crash resumes.
    client
        A ``distributed.Client``: run the conversion as shards on its Dask
        cluster (the same as ``engine="dask"`` with its scheduler).
    **options
        See :class:`ConvertOptions`. ``shard="K/N"`` converts only shard K of N
        (then :func:`~tensorstore_ds.conversion.shards.commit` assembles the store);
        ``engine="dask"`` runs every shard on a Dask cluster and commits.

    Returns
    -------
    Manifest
        The finished store's manifest (counts, options, arrays).
    """
    opts = ConvertOptions.from_kwargs(options)
    if client is not None or opts.engine == "dask":
        from .dask import convert_on_dask

        return convert_on_dask(source, out, opts, client=client)
    if opts.shard is not None:
        k, n = parse_shard(opts.shard)
        return convert_rows(source, shard_dir(out, k, n), opts, shard=(k, n))
    return convert_rows(source, out, opts)
