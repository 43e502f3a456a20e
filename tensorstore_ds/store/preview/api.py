"""``preview``: choose the samples, read only them, and draw the sheet and the page."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import OptionsError, StoreFormatError
from .layout import DEFAULT_SAMPLES, EXAMPLES, MEDIA_OPTIONS, PreviewLayout, Samples

if TYPE_CHECKING:
    from ..store import Store


def preview(
    store: str | os.PathLike[str] | Store,
    path: str | os.PathLike[str] | None = None,
    *,
    samples: int | None = None,
    seed: int | None = None,
    indices: Sequence[int] | None = None,
    html: str | os.PathLike[str] | None = None,
) -> PreviewLayout:
    """Draw a preview sheet of a store into a PNG file and/or a static HTML page.

    Parameters
    ----------
    store
        A store directory, a store URL, or an opened :class:`~tensorstore_ds.Store`.
    path
        The PNG file to write.
    samples
        How many samples to show (default: 36 images, 12 clips); the first ones
        unless ``seed`` is given.
    seed
        Show a random pick of ``samples`` samples, the same for the same seed.
    indices
        Show exactly these samples, in this order (instead of ``samples``/``seed``).
    html
        A directory to write ``index.html`` into, with each image (and for audio
        a 16 kHz WAV per clip) as a file beside it.

    Returns
    -------
    PreviewLayout
        Where every tile, label and the header are on the sheet.

    Raises
    ------
    OptionsError
        No output, ``samples`` below 1, ``seed`` with ``indices``, an index out
        of range, or a store without samples.
    StoreNotFoundError, StoreFormatError
        As :func:`~tensorstore_ds.open_store` raises them.
    """
    if path is None and html is None:
        raise OptionsError("preview has nothing to write: give path (a PNG file), html (a directory), or both")
    opened = _open(store)
    try:
        chosen, how = _choose(opened, samples, seed, indices)
        data = _read(opened, chosen)
        header = _header_lines(opened, how)
        from .sheet import draw_audio, draw_images

        draw = draw_images if opened.media == "image" else draw_audio
        sheet, layout = draw(data, header, opened.location)
    finally:
        if opened is not store:
            opened.close()
    png = None
    if path is not None:
        png = Path(path)
        png.parent.mkdir(parents=True, exist_ok=True)
        sheet.save(png, format="PNG", compress_level=1)
    page = None
    if html is not None:
        from .html import write_page

        page = write_page(Path(html), sheet, layout, data.rows if layout.media == "audio" else None, data.rate)
    return dataclasses.replace(layout, png=png, html=page)


def _open(store: str | os.PathLike[str] | Store) -> Store:
    from ..store import Store, open_store

    return store if isinstance(store, Store) else open_store(store)


def _choose(
    store: Store, samples: int | None, seed: int | None, indices: Sequence[int] | None
) -> tuple[list[int], str]:
    """The indices to show, and how they were chosen (for the header)."""
    n = len(store)
    if n == 0:
        counts = store.manifest.counts
        raise OptionsError(
            f"store {store.location} has no samples to preview: {counts.get('rows_read', 0)} rows "
            f"read, {counts.get('failed', 0)} failed ({_reasons(counts)}); see its failures.jsonl"
        )
    if indices is not None:
        if seed is not None or samples is not None:
            raise OptionsError("give indices, or samples and seed, not both")
        chosen = [int(i) for i in indices]
        bad = [i for i in chosen if not 0 <= i < n]
        if not chosen or bad:
            raise OptionsError(
                f"index {bad[0] if bad else '(none)'} is out of range: store {store.location} "
                f"has {n} samples, indices 0..{n - 1}"
            )
        return chosen, f"{len(chosen)} chosen samples"
    count = DEFAULT_SAMPLES[store.media] if samples is None else int(samples)
    if count < 1:
        raise OptionsError(f"samples={samples}: show at least 1 sample")
    count = min(count, n)
    if seed is None:
        return list(range(count)), f"the first {count}"
    import numpy as np

    picked = np.random.default_rng(seed).choice(n, size=count, replace=False)
    return sorted(int(i) for i in picked), f"{count} at random (seed {seed})"


def _read(store: Store, chosen: list[int]) -> Samples:
    """The shown samples' rows, sizes or lengths and captions (only their chunks are read)."""
    import numpy as np

    where = np.asarray(chosen, dtype=np.int64)
    audio = store.media == "audio"
    rows = store.array("audio" if audio else "images").take(where)
    extent = "audio_length" if audio else "image_size"
    extents = (
        store.array(extent).take(where)
        if extent in store.array_names
        else np.full((len(chosen), 2) if not audio else len(chosen), -1)
    )
    captions = store.paged_text("caption").take(chosen) if "caption" in store.manifest.text else [""] * len(chosen)
    rate = _sample_rate(store) if audio else 0
    return Samples(chosen, rows, extents, captions, rate)


def _sample_rate(store: Store) -> int:
    rate = store.manifest.options.get("sample_rate")
    if type(rate) is not int or rate < 1:
        raise StoreFormatError(f"{store.location}/manifest.json", f"options.sample_rate {rate!r} is not a rate in Hz")
    return rate


def _header_lines(store: Store, how: str) -> list[str]:
    """Title, counts, options, source and failures by reason with example keys."""
    m, media = store.manifest, store.media
    rows = store.array("audio" if media == "audio" else "images")
    kind = "x".join(map(str, rows.shape[1:])) + f" {rows.dtype}"
    lines = [
        f"tensorstore_ds preview of {store.location}",
        f"{len(store):,} {media} samples ({kind}); {_number(m.counts.get('rows_read'))} rows read, "
        f"{_number(m.counts.get('failed', 0))} failed; showing {how}",
    ]
    hidden = {name for other, names in MEDIA_OPTIONS.items() if other != media for name in names}
    shown = {k: v for k, v in m.options.items() if k not in hidden and v not in (None, [], "", {})}
    lines.append("options: " + ", ".join(f"{k}={v}" for k, v in shown.items()))
    lines.append(f"source: {m.source.get('kind', '?')} {m.source.get('spec', '')}".rstrip())
    examples: dict[str, list[str]] = {}
    if m.counts.get("failed"):
        for record in store.failures():
            keys = examples.setdefault(str(record.get("reason")), [])
            if len(keys) < EXAMPLES:
                keys.append(_shorten(str(record.get("key", record.get("row"))), 64))
    for reason, n in _by_reason(m.counts, examples):
        lines.append(f"failed: {n:,} x {reason} (e.g. {', '.join(examples.get(reason, [])) or '-'})")
    return lines


def _number(value: Any) -> str:
    """A count from the manifest, for people (``?`` if it is not a count)."""
    return f"{value:,}" if type(value) is int else "?"


def _by_reason(counts: dict[str, Any], examples: dict[str, list[str]]) -> list[tuple[str, int]]:
    found = counts.get("failed_by_reason") or {r: len(k) for r, k in examples.items()}
    return sorted(((str(r), int(n)) for r, n in found.items()), key=lambda rn: (-rn[1], rn[0]))


def _reasons(counts: dict[str, Any]) -> str:
    return ", ".join(f"{n} x {r}" for r, n in _by_reason(counts, {})) or "no failures recorded"


def _shorten(text: str, limit: int) -> str:
    """``text`` cut in the middle to at most ``limit`` characters (URLs keep host and file name)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit // 2 - 2] + "..." + text[-(limit - limit // 2 - 1) :]


# --- drawing ---------------------------------------------------------------
