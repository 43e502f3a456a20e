"""Options as users type them: sizes such as ``"8GiB"``, progress bars on, off or automatic, the cache directory.

Parsing lives here, above :mod:`~tensorstore_ds.errors`, so that a value that
cannot be read is an :class:`~tensorstore_ds.errors.OptionsError` raised where
it is found.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import OptionsError
from .units import _SIZE, _UNITS


def parse_size(value: int | float | str) -> int:
    """Bytes from an int, or a string such as ``"8GiB"``, ``"500 MB"``, ``"1e9"``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < 0:
            raise OptionsError(f"a size cannot be negative: {value}")
        return int(value)
    match = _SIZE.match(str(value))
    unit = match.group(2).lower() if match else None
    if not match or unit not in _UNITS:
        raise OptionsError(f"cannot read {value!r} as a size; use bytes or e.g. '8GiB', '500MB'")
    return int(float(match.group(1)) * _UNITS[unit])


def progress_disabled(progress: bool | None) -> bool | None:
    """tqdm's ``disable`` for a ``progress`` option: ``None`` shows bars only when output is a terminal."""
    return None if progress is None else not progress


CACHE_ENV = "TENSORSTORE_DS_CACHE"


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The directory that cached stores (remote stores, the seed drop-in's stores, the demo) live in.

    Parameters
    ----------
    cache_dir
        Wins when given; else ``$TENSORSTORE_DS_CACHE``; else
        ``$XDG_CACHE_HOME/tensorstore_ds``, ``~/.cache/tensorstore_ds``.
    """
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "tensorstore_ds"
