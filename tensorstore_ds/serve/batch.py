"""Batches: the result of one vectorised gather, and the collate that serves it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .ring import SlotHandle


class Batch(Sequence):
    """Rows gathered for a batch of indices.

    It is also a sequence of per-item dicts, so torch's ``default_collate``
    still works on it (item by item, slowly); :func:`collate` turns it into
    batch tensors without copying.

    Parameters
    ----------
    indices
        Sample indices, in batch order.
    arrays
        Gathered rows by field name (``image`` is NHWC uint8).
    text
        Text values by field name, one list entry per sample.
    channels_last
        Serve images as (N, H, W, C) instead of a (N, C, H, W) view.
    slot
        In a DataLoader worker, the shared ring slot the arrays live in.
    """

    def __init__(
        self,
        indices: np.ndarray,
        arrays: dict[str, np.ndarray],
        text: dict[str, list[Any]],
        channels_last: bool = False,
        slot: SlotHandle | None = None,
    ) -> None:
        self.indices = indices
        self.arrays = arrays
        self.text = text
        self.channels_last = channels_last
        self.slot = slot
        self._tensors: dict[str, Any] | None = None

    def __len__(self) -> int:
        return len(self.indices)

    def release(self) -> None:
        """Give a worker's ring slot back at once, after copying out what is needed.

        Only for a batch gathered in a DataLoader worker that does not go on
        through :func:`collate` (whose main-process side frees the slot when the
        tensors are dropped). The batch's arrays are gone afterwards.
        """
        if self.slot is not None:
            self.slot.release()
            self.slot = None
        self.arrays, self._tensors = {}, None

    def __getitem__(self, i: Any) -> dict[str, Any]:  # type: ignore[override]
        item = {k: v[i] for k, v in self.tensors().items()}
        item["index"] = int(self.indices[i])
        return item

    def tensors(self) -> dict[str, Any]:
        """The batch as a dict of tensors (views of the gathered rows) and lists of text."""
        import torch

        if self._tensors is not None:
            return self._tensors
        out: dict[str, Any] = {"index": torch.from_numpy(self.indices)}
        for name, rows in self.arrays.items():
            tensor = torch.from_numpy(rows)
            if name == "image" and not self.channels_last:
                tensor = tensor.permute(0, 3, 1, 2)
            out[name] = tensor
        out.update(self.text)
        self._tensors = out
        return out


class SharedBatch(dict):
    """A worker's batch: a dict of tensors that pickles as a handle to its ring slot.

    In the worker it is the usual dict. Sent to the main process it carries
    only the slot's :class:`~tensorstore_ds.serve.ring.SlotHandle` and the
    text; the main process rebuilds the same dict over the same memory,
    without a copy.
    """

    def __init__(self, batch: Batch) -> None:
        super().__init__(batch.tensors())
        self._batch = batch

    def __reduce__(self) -> tuple[Any, ...]:
        b = self._batch
        return (_rebuild_shared, (b.slot, b.indices, b.text, b.channels_last))


def _rebuild_shared(
    slot: SlotHandle, indices: np.ndarray, text: dict[str, list[Any]], channels_last: bool
) -> dict[str, Any]:
    return Batch(indices, slot.arrays(), text, channels_last).tensors()


def collate(batch: Any) -> Any:
    """Collate for a DataLoader over :class:`~tensorstore_ds.TensorStoreDataset`.

    A :class:`Batch` becomes a dict of batch tensors with no further copy (from
    a worker, it crosses to the main process as a shared-memory handle); any
    other list of items (for example after a per-item ``transform``) goes to
    torch's ``default_collate``.
    """
    if isinstance(batch, Batch):
        return SharedBatch(batch) if batch.slot is not None else batch.tensors()
    from torch.utils.data import default_collate

    return default_collate(batch)


def item_of(batch: Batch, transform: Callable[[dict[str, Any]], Any] | None) -> list[Any]:
    """The batch as a list of items, each passed through ``transform``."""
    items = [batch[i] for i in range(len(batch))]
    return [transform(item) for item in items] if transform is not None else items
