"""Fields made at serving time from stored ones: the per-epoch caption choice and audio masks.

Caption choice
    A store converted from a source with several captions per sample keeps
    them all in the ``captions`` text column (a JSON list per sample); the
    ``caption`` column holds the first. With ``caption_choice="random"`` the
    served ``caption`` is one of the sample's captions, picked by a hash of
    ``(seed, epoch, sample index)``: the same on every rank and worker, a new
    pick every epoch, and the same again when an epoch is resumed. The seed
    and epoch live in a two-value shared tensor that the sampler sets
    (``dataset.set_epoch(epoch, seed=...)``); DataLoader workers, forked or
    spawned, persistent or not, read the same memory. ``"first"`` (the
    default) serves the stored ``caption`` and reads nothing more.

Audio masks
    ``audio_mask`` is a boolean ``(B, samples)`` array, true where the stored
    clip has real audio: ``arange(samples) < audio_length``. It is computed
    per batch from ``audio_length`` (which is then served too), stored nowhere,
    and gathered into the same batch buffer as the other arrays.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import numpy as np

from ..errors import OptionsError

CAPTION_CHOICES = ("first", "random")
MASK = "audio_mask"
LENGTH = "audio_length"
_U64 = 2**64


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a well-spread 64-bit hash of each value (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def pick(seed: int, epoch: int, indices: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """For each sample index, a choice in ``[0, count)`` that depends on ``(seed, epoch, index)`` only."""
    key = _mix(np.array([seed % _U64], dtype=np.uint64))
    key = _mix(key ^ np.uint64(epoch % _U64))
    hashed = _mix(np.asarray(indices, dtype=np.int64).astype(np.uint64) ^ key)
    return (hashed % np.maximum(np.asarray(counts, dtype=np.uint64), np.uint64(1))).astype(np.int64)


class CaptionChoice:
    """Which caption the ``caption`` field serves.

    Parameters
    ----------
    choice
        ``"first"`` or ``"random"``.
    stored
        The store's text column names.
    served
        The text fields being served (``caption`` among them for a choice to matter).
    """

    def __init__(self, choice: str, stored: Collection[str], served: Sequence[str]) -> None:
        if choice not in CAPTION_CHOICES:
            raise OptionsError(f"caption_choice must be one of {CAPTION_CHOICES}, not {choice!r}")
        self.choice = choice
        self.active = choice == "random" and "caption" in served and "captions" in stored
        self.hidden = ["captions"] if self.active and "captions" not in served else []
        self.state: Any = None
        if self.active:
            import torch

            self.state = torch.zeros(2, dtype=torch.int64).share_memory_()  # seed, epoch

    @property
    def extra(self) -> list[str]:
        """Text columns to load but not serve (the caption lists a random choice picks from)."""
        return list(self.hidden)

    def set_epoch(self, epoch: int, seed: int) -> None:
        if self.state is not None:
            self.state[0], self.state[1] = int(seed), int(epoch)

    def apply(self, text: dict[str, list[Any]], indices: np.ndarray) -> dict[str, list[Any]]:
        """``text`` with ``caption`` replaced by the pick for each sample (and hidden columns dropped)."""
        if not self.active:
            return text
        lists = text["captions"]
        seed, epoch = (int(v) for v in self.state.tolist())
        counts = np.fromiter((len(c) for c in lists), dtype=np.int64, count=len(lists))
        choice = pick(seed, epoch, indices, counts).tolist()
        text["caption"] = [c[k] if len(c) else first for c, k, first in zip(lists, choice, text["caption"])]
        for name in self.hidden:
            del text[name]
        return text


class AudioMask:
    """The ``audio_mask`` field, made from ``audio_length``.

    Parameters
    ----------
    requested
        The fields a user asked for (``None``: the defaults).
    store
        The (first) store served.
    """

    def __init__(self, requested: Sequence[str] | None, store: Any) -> None:
        self.active = requested is not None and MASK in requested
        fields = None if requested is None else [f for f in requested if f != MASK]
        self.samples = 0
        if self.active:
            if store.media != "audio":
                raise OptionsError(f"audio_mask is a field of audio stores; {store.location} holds {store.media}s")
            self.samples = int(store.manifest.arrays["audio"].row_shape[0])
            if fields is not None and LENGTH not in fields and "length" not in fields:
                fields.append(LENGTH)
        self.fields = fields
        """The fields to select from the store: ``audio_mask`` becomes ``audio_length``."""

    def layout(self, batch: int) -> list[tuple[str, str, tuple[int, ...]]]:
        """The mask's entry in a batch buffer's layout (none when not requested)."""
        return [(MASK, "|b1", (batch, self.samples))] if self.active else []

    def fill(self, gathered: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Write the mask into ``gathered[MASK]`` (a buffer view), or add it as a new array."""
        if self.active:
            lengths = gathered[LENGTH].astype(np.int64)
            gathered[MASK] = np.less(np.arange(self.samples), lengths[:, None], out=gathered.get(MASK))
        return gathered
