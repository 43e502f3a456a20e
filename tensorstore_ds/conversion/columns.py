"""Columns: which source columns hold the media, captions and kept values.

:func:`plan_columns` checks the user's column names against the source before
anything is converted; :func:`media_of` and :func:`captions_of` turn one row
into what the decoders and the caption index need, raising
:class:`~tensorstore_ds.errors.SampleError` for a row that cannot be used.
"""

from __future__ import annotations

import os
import re
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ColumnNotFoundError, OptionsError, SampleError
from .sourcebase import ROW_ERROR, Source

IMAGE_NAMES = ("image", "image_url", "img", "url", "jpg", "jpeg", "png", "webp")
AUDIO_NAMES = ("audio", "audio_path", "wav", "flac", "mp3", "ogg")
KEPT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # one segment of format.manifest.check_name


@dataclass(frozen=True)
class MediaRef:
    """Where one sample's media comes from.

    Parameters
    ----------
    kind
        ``"url"``, ``"path"``, ``"bytes"`` or ``"array"`` (an image array or an
        ``{"array", "sampling_rate"}`` audio mapping).
    value
        The URL, path, bytes or array.
    key
        A short name for messages and the failure record.
    """

    kind: str
    value: Any
    key: str


@dataclass(frozen=True)
class ColumnPlan:
    """Resolved column roles for one conversion."""

    media: str
    media_column: str | None
    audio_dir: str | None
    audio_template: str | None
    clip_columns: tuple[str | None, str | None]
    caption_column: str
    multi_caption: bool
    keep_columns: tuple[str, ...]
    media_dtype: str | None = None


def plan_columns(
    source: Source,
    image_column: str | None,
    audio_column: str | None,
    caption_column: str,
    keep_columns: tuple[str, ...],
    audio_dir: str | None,
    audio_template: str | None,
    clip_start_column: str | None,
    clip_end_column: str | None,
) -> ColumnPlan:
    """Check every named column against the source and pick the media column."""
    available = source.columns
    if image_column and (audio_column or audio_template):
        raise OptionsError("a store holds images or audio, not both: give image_column or audio_column/audio_template")
    if audio_template and audio_column:
        raise OptionsError("give either audio_column or audio_dir + audio_template, not both")
    if audio_template and not audio_dir:
        raise OptionsError("audio_template needs audio_dir")
    media, column = _media_role(source, image_column, audio_column, audio_template)
    named: list[tuple[str, str | None]] = [("caption", caption_column), *(("kept", k) for k in keep_columns)]
    named += [("clip start", clip_start_column), ("clip end", clip_end_column)]
    if column:
        named.append((media, column))
    for field_name in _template_fields(audio_template):
        named.append(("audio_template", field_name))
    for role, name in named:
        if name and name not in available:
            raise ColumnNotFoundError(role, name, available)
    for name in keep_columns:
        if name in ("caption", "captions") or not KEPT_NAME.fullmatch(name) or list(keep_columns).count(name) > 1:
            raise OptionsError(
                f"kept column {name!r} cannot be stored: kept columns are stored under their "
                "own name, which must be unique, not 'caption' or 'captions', and made of "
                "letters, digits, '_', '.' and '-'"
            )
    feature = source.features.get(caption_column)
    multi = type(feature).__name__ in ("Sequence", "List", "LargeList")
    dtype = _array_dtype(source.features.get(column or ""))
    return ColumnPlan(
        media,
        column,
        audio_dir,
        audio_template,
        (clip_start_column, clip_end_column),
        caption_column,
        multi,
        tuple(keep_columns),
        dtype,
    )


def _array_dtype(feature: Any) -> str | None:
    """The numpy dtype of an array column (``ArrayND``, nested lists of numbers), or None.

    Rows come back as Python lists, which would lose it (uint8 pixels would read as int64).
    """
    while type(feature).__name__ in ("Sequence", "List", "LargeList"):
        feature = feature.feature
    if type(feature).__name__ not in ("Value", "Array2D", "Array3D", "Array4D", "Array5D"):
        return None
    try:
        dtype = np.dtype(feature.dtype)
    except TypeError:
        return None
    return dtype.name if dtype.kind in "uif" else None


def _media_role(
    source: Source, image_column: str | None, audio_column: str | None, audio_template: str | None
) -> tuple[str, str | None]:
    if image_column:
        return "image", image_column
    if audio_column or audio_template:
        return "audio", audio_column
    for name, feature in source.features.items():
        kind = type(feature).__name__
        if kind in ("Image", "Audio"):
            return kind.lower(), name
    for names, media in ((IMAGE_NAMES, "image"), (AUDIO_NAMES, "audio")):
        for name in names:
            if name in source.columns:
                return media, name
    raise OptionsError(
        f"cannot tell which column holds the media; columns: {source.columns}; give image_column= or audio_column="
    )


def _template_fields(template: str | None) -> list[str]:
    if not template:
        return []
    return [f.split(".")[0].split("[")[0] for _, f, _, _ in string.Formatter().parse(template) if f]


def cast_media_features(source: Source, plan: ColumnPlan) -> Source:
    """Turn off ``datasets``' own decoding of Image/Audio columns (we decode the bytes)."""
    return source.without_decoding(plan.media_column)


def media_of(row: dict[str, Any], plan: ColumnPlan, base_dir: Path) -> MediaRef:
    """The media reference of one row.

    A row its reader could not read (:data:`~.sourcebase.ROW_ERROR`) raises its own error here.
    """
    failed = row.get(ROW_ERROR)
    if isinstance(failed, SampleError):
        raise failed
    if plan.audio_template:
        try:
            name = plan.audio_template.format(**row)
        except (KeyError, IndexError, ValueError) as exc:
            raise SampleError("bad-template", f"audio_template {plan.audio_template!r}: {exc}") from None
        return MediaRef("path", str(Path(plan.audio_dir or ".", name)), name)
    value = row.get(plan.media_column or "")
    if isinstance(value, dict) and "array" in value:
        return MediaRef("array", value, f"{plan.media_column} (array)")
    if isinstance(value, dict):
        data, where = value.get("bytes"), value.get("path")
        if data:
            return MediaRef("bytes", bytes(data), where or f"{plan.media_column} (bytes)")
        value = where
    if isinstance(value, (bytes, bytearray, memoryview)):
        return MediaRef("bytes", bytes(value), f"{plan.media_column} (bytes)")
    if isinstance(value, str) and value.strip():
        value = value.strip()
        if "://" in value:
            return MediaRef("url", value, value)
        return MediaRef("path", value if os.path.isabs(value) else os.path.join(base_dir, value), value)
    if isinstance(value, (list, np.ndarray)) and len(value):
        try:
            array = np.asarray(value, dtype=plan.media_dtype)
        except (ValueError, TypeError, OverflowError) as exc:
            raise SampleError("bad-array", f"column {plan.media_column!r} is not a regular array: {exc}") from None
        return MediaRef("array", array, f"{plan.media_column} (array)")
    raise SampleError("missing-media", f"column {plan.media_column!r} is {_short(value)}")


def clip_of(row: dict[str, Any], plan: ColumnPlan) -> tuple[float | None, float | None] | None:
    """The (start, end) seconds to cut from the recording, or None."""
    start_col, end_col = plan.clip_columns
    if not start_col and not end_col:
        return None
    try:
        start = float(row[start_col]) if start_col and row[start_col] is not None else None
        end = float(row[end_col]) if end_col and row[end_col] is not None else None
    except (TypeError, ValueError) as exc:
        raise SampleError("bad-clip", f"clip columns {start_col!r}/{end_col!r}: {exc}") from None
    return start, end


def captions_of(row: dict[str, Any], plan: ColumnPlan) -> list[str]:
    """All captions of one row; the first is the one served by default.

    A string is one caption; a list keeps every non-empty string in order; a
    dict contributes its ``"raw"`` entry. Missing, empty, or non-text captions
    make the row fail: a caption-less pair would only teach the model noise.
    """
    value = row.get(plan.caption_column)
    if isinstance(value, dict):
        value = value.get("raw")
    if isinstance(value, (bytes, bytearray)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SampleError("bad-caption", f"caption bytes are not UTF-8 ({exc})") from None
    items = value if isinstance(value, (list, tuple)) else [value]
    captions = []
    for item in items:
        if isinstance(item, dict):
            item = item.get("raw")
        if item is not None and not isinstance(item, str):
            raise SampleError("bad-caption", f"caption is {type(item).__name__}, not text: {_short(item)}")
        if item and item.strip():
            captions.append(item)
    if not captions:
        raise SampleError("missing-caption", f"column {plan.caption_column!r} is {_short(value)}")
    return captions


def kept_of(row: dict[str, Any], plan: ColumnPlan) -> dict[str, Any]:
    """The kept columns of one row, as JSON-ready values."""
    return {name: _jsonable(row.get(name)) for name in plan.keep_columns}


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="replace")
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
