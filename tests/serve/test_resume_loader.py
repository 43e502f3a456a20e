"""Mid-epoch resume through real loaders: torchdata's StatefulDataLoader and a plain DataLoader.

Each case runs a loader into the epoch, checkpoints (with workers, while they
hold prefetched batches), runs on to the end for the reference, then builds a
new dataset, sampler and loader as a restarted job would, restores, and must
serve exactly the batches that came next.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from torch.utils.data import DataLoader
from torchdata.stateful_dataloader import StatefulDataLoader

from tensorstore_ds import ChunkShuffleSampler, TensorStoreDataset, collate, open_store
from tensorstore_ds.serve.derived import pick
from tests.httpserver import TestServer
from tests.stores import CHUNK_BYTES, CHUNK_ROWS, build_image_store

pytestmark = pytest.mark.filterwarnings("ignore:'set_vital' is deprecated")  # torchdata 0.11 on torch >= 2.9
BATCH, SEED = 3, 11
TAKEN = 3  # batches served before the checkpoint: 9 samples, inside a window of 2 chunks (8 samples)
BUDGETS = {"ram": "1GiB", "paged": 4 * CHUNK_BYTES}  # paged: windows of 2 chunks


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_image_store(tmp_path_factory.mktemp("resume") / "store", n=41)


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TENSORSTORE_DS_CACHE", str(tmp_path / "cache-root"))
    monkeypatch.setenv("TENSORSTORE_DS_SHM_DIR", str(tmp_path / "shm"))
    (tmp_path / "shm").mkdir()


def job(path: Any, mode: str, workers: int, context: str | None, stateful: bool = True, **kw: Any) -> Any:
    """What a training job builds: dataset, sampler (epoch 1) and loader."""
    ds = TensorStoreDataset(path, mode=mode, memory_budget=BUDGETS[mode], caption_choice="random", progress=False, **kw)
    sampler = ChunkShuffleSampler(ds, seed=SEED)
    sampler.set_epoch(1)
    kind = StatefulDataLoader if stateful else DataLoader
    loader = kind(
        ds,
        batch_size=BATCH,
        sampler=sampler,
        collate_fn=collate,
        num_workers=workers,
        multiprocessing_context=context if workers else None,
        persistent_workers=workers > 0,  # the resumed epoch and the next one share the workers
    )
    return ds, sampler, loader


def indices(batches: Iterator[Any], expected: Any = None, epoch: int = 1) -> list[list[int]]:
    """Index lists of the batches; with ``expected`` (a store), also check the images and the epoch's captions."""
    out = []
    for batch in batches:
        out.append(batch["index"].tolist())
        if expected is not None:
            idx = np.asarray(out[-1])
            np.testing.assert_array_equal(batch["image"].numpy(), expected.array("images")[idx].transpose(0, 3, 1, 2))
            lists = [expected.text("captions")[i] for i in out[-1]]
            choice = pick(SEED, epoch, idx, np.array([len(c) for c in lists])).tolist()
            assert batch["caption"] == [c[k] for c, k in zip(lists, choice)]
    return out


def check_once(before: list[list[int]], after: list[list[int]], n: int) -> None:
    served = [i for b in before + after for i in b]
    assert sorted(served) == list(range(n))  # one rank: every sample exactly once in the epoch


# (mode, workers, start method of the run that checkpoints, of the run that restores); spawn starts slowly
CASES = [
    ("ram", 0, None, None),
    ("paged", 0, None, None),
    ("ram", 2, "fork", "fork"),
    ("paged", 2, "fork", "fork"),
    ("ram", 2, "fork", "spawn"),
]


@pytest.mark.parametrize("mode, workers, context, restore_context", CASES)
def test_stateful_loader_resumes_with_the_next_batch(
    store: Path, mode: str, workers: int, context: str | None, restore_context: str | None
) -> None:
    ds, sampler, loader = job(store, mode, workers, context)
    if mode == "paged":
        assert sampler.window == 2 and (TAKEN * BATCH) % (2 * CHUNK_ROWS) != 0  # the checkpoint is mid-window
    it = iter(loader)
    before = [next(it)["index"].tolist() for _ in range(TAKEN)]
    state = loader.state_dict()  # workers hold prefetched batches now
    reference = indices(it)
    ds.close()

    ds2, sampler2, loader2 = job(store, mode, workers, restore_context)
    loader2.load_state_dict(state)
    sampler2.set_epoch(1)  # a training loop sets the epoch again: the position stays
    after = indices(iter(loader2), open_store(store))
    assert after == reference
    check_once(before, after, len(ds2))
    sampler2.set_epoch(2)  # the next epoch is whole, and its captions are picked anew (in the same workers)
    assert sorted(i for b in indices(iter(loader2), open_store(store), epoch=2) for i in b) == list(range(len(ds2)))
    ds2.close()


def test_plain_dataloader_resumes_with_state_at(store: Path) -> None:
    _ds, sampler, loader = job(store, "paged", 2, "fork", stateful=False)
    it = iter(loader)
    before = [next(it)["index"].tolist() for _ in range(TAKEN)]
    assert sampler.state_dict()["levels"][0][1] > TAKEN * BATCH  # the workers fetched ahead of the loop
    state = sampler.state_at(TAKEN, BATCH)
    reference = indices(it)
    ds2, sampler2, loader2 = job(store, "paged", 2, "fork", stateful=False)
    sampler2.load_state_dict(state)
    after = indices(iter(loader2))
    assert after == reference
    check_once(before, after, len(ds2))


def test_a_loader_checkpoint_restores_under_another_worker_count(store: Path) -> None:
    """StatefulDataLoader refuses another num_workers; the sampler takes its part of the loader's state."""
    _, _, loader = job(store, "ram", 2, "fork")
    it = iter(loader)
    before = [next(it)["index"].tolist() for _ in range(TAKEN)]
    state = loader.state_dict()
    reference = indices(it)
    _, sampler2, loader2 = job(store, "ram", 0, None)
    sampler2.load_state_dict(state)  # the whole loader state: the sampler finds its own
    after = indices(iter(loader2))
    assert after == reference and len(before) == TAKEN


def test_remote_store_resume_downloads_only_the_rest(store: Path, http_server: TestServer, tmp_path: Path) -> None:
    http_server.serve_dir(store, "/stores/a/")
    url = http_server.url_for("/stores/a")
    ds, _sampler, loader = job(url, "paged", 0, None, cache_dir=tmp_path / "cache-1")
    it = iter(loader)
    [next(it) for _ in range(TAKEN)]
    state = loader.state_dict()
    reference = indices(it)
    http_server.reset()
    ds2, _sampler2, loader2 = job(url, "paged", 0, None, cache_dir=tmp_path / "cache-2")
    loader2.load_state_dict(state)
    after = indices(iter(loader2), open_store(store))
    assert after == reference
    chunks = {int(m.group(1)) for path in http_server.hits if (m := re.search(r"/images/c/(\d+)/", path))}
    rest = {i // CHUNK_ROWS for b in reference for i in b}
    assert chunks == rest  # every chunk of the rest, none of the skipped windows (no read-ahead of them)
    ds.close()
    ds2.close()


@pytest.mark.parametrize("workers, every", [(2, 4), (2, 3), (0, 4)])
def test_the_sampler_reads_a_loader_state_between_snapshots(workers: int, every: int) -> None:
    """With snapshot_every_n_steps > 1 the loader's snapshot is older than its position: the sampler adds the rest."""
    from tests.serve.test_sampler import FakeDataset

    class Indices(FakeDataset):
        def __getitem__(self, i: int) -> int:
            return i

    ds = Indices(n=100, chunk_rows=8)
    context = "fork" if workers else None
    loader = StatefulDataLoader(
        ds,
        batch_size=3,
        sampler=ChunkShuffleSampler(ds, seed=1),
        num_workers=workers,
        snapshot_every_n_steps=every,
        multiprocessing_context=context,
    )
    it = iter(loader)
    [next(it) for _ in range(6)]
    state = loader.state_dict()
    reference = [b.tolist() for b in it]
    sampler = ChunkShuffleSampler(ds, seed=1)
    sampler.load_state_dict(state)
    assert [b.tolist() for b in StatefulDataLoader(ds, batch_size=3, sampler=sampler)] == reference
