"""The sampler's checkpoint: what it holds, how it is checked, and how it is found in a loader's state.

A checkpoint is a dict of plain values (it pickles, and ``torch.save`` and
JSON both take it)::

    {"tensorstore_ds.sampler": 1,           # format version
     "seed": 0, "shuffle": True,            # must match the restoring sampler
     "samples": 20000, "chunk_rows": 64,    # the store's shape: must match
     "epoch": 3,
     "levels": [[4, 4500, False, 12]]}      # per pass: world size, samples per rank, drop_last, window

It holds no rank: ranks that run in lockstep save the same dict, so any one of
them restores every rank of the next run, whatever its world size. What must
stay the same is the store (its sample count and chunk size are checked) and
the seed and ``shuffle``; the memory budget, the world size and the number of
DataLoader workers may change. The window (chunks shuffled together, from the
budget) is kept for the rest of the epoch when the world size is the same (the
order depends on it); a new world size re-splits the unseen samples, in the
restoring budget's windows when the saved ones are larger.

A torchdata ``StatefulDataLoader`` keeps the sampler's dict inside its own
state (under ``_snapshot`` when it has workers). :func:`sampler_state` digs it
out, so a loader's checkpoint can restore a sampler on its own, for example
under a new worker count, which the loader itself refuses to restore.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import ResumeStateError

MARK = "tensorstore_ds.sampler"
VERSION = 1
CHECKED = ("seed", "shuffle", "samples", "chunk_rows")


def make_state(sampler: Any, levels: Sequence[tuple[int, int, bool, int]]) -> dict[str, Any]:
    """The checkpoint of ``sampler`` with the epoch's ``levels`` (a new dict of plain values)."""
    return {
        MARK: VERSION,
        "seed": int(sampler.seed),
        "shuffle": bool(sampler.shuffle),
        "samples": int(sampler.num_samples),
        "chunk_rows": int(sampler.dataset.chunk_rows),
        "epoch": int(sampler.epoch),
        "levels": [[int(w), int(k), bool(d), int(win)] for w, k, d, win in levels],
    }


def check_state(sampler: Any, state: dict[str, Any]) -> dict[str, Any]:
    """``state`` if ``sampler`` can resume from it; :class:`ResumeStateError` naming what differs otherwise."""
    if state.get(MARK) != VERSION:
        raise ResumeStateError("format version", state.get(MARK), VERSION)
    current = make_state(sampler, [])
    for key in CHECKED:
        if state.get(key) != current[key]:
            raise ResumeStateError(key, state.get(key), current[key])
    levels = state.get("levels")
    if not levels or any(len(level) != 4 or min(level[0], level[3]) < 1 or level[1] < 0 for level in levels):
        raise ResumeStateError("levels", levels, "a list of [world_size >= 1, served >= 0, drop_last, window >= 1]")
    return state


def sampler_state(state: dict[str, Any]) -> dict[str, Any]:
    """The sampler's dict in ``state``: the dict itself, or the one inside a ``StatefulDataLoader``'s state.

    A multi-worker loader's snapshot may be a few batches old
    (``snapshot_every_n_steps`` > 1); the batches it yielded since are added.
    """
    if MARK in state:
        return state
    snapshot = state.get("_snapshot")
    main = snapshot.get("_main_snapshot") if isinstance(snapshot, dict) else None
    found = _find(main if isinstance(main, dict) else state)
    if found is None:
        raise ResumeStateError("state", sorted(map(str, state)), None)
    steps = int(state.get("_steps_since_snapshot") or 0)
    if steps and isinstance(main, dict):
        batches = int(main.get("_sampler_iter_yielded") or 0)
        samples = int((main.get("_sampler_iter_state") or {}).get("samples_yielded") or 0)
        if batches:
            found = {**found, "levels": [list(level) for level in found["levels"]]}
            found["levels"][-1][1] += steps * (samples // batches)  # batches before the last are full
    return found


def _find(value: Any) -> dict[str, Any] | None:
    """The first dict carrying :data:`MARK` in nested dicts and lists."""
    if isinstance(value, dict):
        if MARK in value:
            return value
        children: Any = value.values()
    elif isinstance(value, (list, tuple)):
        children = value
    else:
        return None
    for child in children:
        found = _find(child)
        if found is not None:
            return found
    return None
