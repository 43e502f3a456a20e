"""The Dask engine: every shard of a conversion as a task on a cluster, then one commit.

Each task converts shard ``K`` of ``N`` with :func:`~tensorstore_ds.conversion.run.convert_rows`
into ``OUT/.shards/K-of-N`` (see :mod:`~tensorstore_ds.conversion.shards`);
Dask retries a task whose worker is lost, and a retried shard resumes.

Progress: the client shows one bar over the shards, completed in any order,
with the samples converted and failed so far (counted as each shard finishes:
the tasks themselves run without bars). As for every bar, ``progress=None``
shows it only when stderr is a terminal.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from ..format.manifest import Manifest
from ..options import progress_disabled
from .options import ConvertOptions
from .run import convert_rows
from .shards import commit, shard_dir


def convert_on_dask(source: Any, out: str | os.PathLike[str], opts: ConvertOptions, client: Any = None) -> Manifest:
    """Convert every shard as a task on a Dask distributed cluster, then commit.

    Parameters
    ----------
    source
        Anything :func:`~tensorstore_ds.convert` takes that the workers can open
        too (a path on a shared filesystem, a dataset name, a picklable dataset).
    out
        The store, on storage every worker can write to.
    opts
        The conversion's options; ``scheduler`` is the address to connect to
        when no ``client`` is given, and ``shards`` the number of shards
        (default: four per worker thread).
    client
        A ``distributed.Client``.
    """
    from distributed import Client

    own = client is None
    client = Client(opts.scheduler) if own else client
    try:
        threads = sum(client.nthreads().values()) or 1
        n = opts.shards or 4 * threads
        task_opts = dataclasses.replace(
            opts, workers=0, progress=False, engine=None, scheduler=None, shards=None, shard=None
        )
        futures = client.map(
            _shard_task,
            [source] * n,
            [str(out)] * n,
            [(k, n) for k in range(n)],
            [task_opts] * n,
            retries=2,
            pure=False,
        )
        _gather_with_progress(futures, opts.progress)
    finally:
        if own:
            client.close()
    return commit(out, progress=opts.progress, storage_options=opts.storage_options)


def _gather_with_progress(futures: list[Any], progress: bool | None) -> None:
    """Wait for every shard task, updating a bar as each finishes; the first error is raised."""
    from distributed import as_completed
    from tqdm.auto import tqdm

    samples = failed = 0
    with tqdm(
        total=len(futures),
        unit="shard",
        desc="converting shards",
        disable=progress_disabled(progress),
        dynamic_ncols=True,
    ) as bar:
        for future in as_completed(futures):
            converted, rejected = future.result()
            samples, failed = samples + converted, failed + rejected
            bar.set_postfix({"samples": samples, "failed": failed}, refresh=False)
            bar.update(1)


def _shard_task(source: Any, out: str, shard: tuple[int, int], opts: ConvertOptions) -> tuple[int, int]:
    """Convert one shard; return its samples converted and failed."""
    from ..store.store import is_url

    if is_url(out) and opts.scratch_dir is None:  # into object storage: scratch on the worker's own disk
        from distributed import get_worker

        opts = dataclasses.replace(opts, scratch_dir=os.path.join(get_worker().local_directory, "tensorstore_ds"))
    manifest = convert_rows(source, shard_dir(out, *shard), opts, shard=shard)
    return manifest.num_samples, int(manifest.counts.get("failed", 0))
