"""Options as users type them: sizes such as ``"8GiB"``, progress bars on, off or automatic, the cache directory.

Parsing lives here, above :mod:`~tensorstore_ds.errors`, so that a value that
cannot be read is an :class:`~tensorstore_ds.errors.OptionsError` raised where
it is found.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from .errors import OptionsError
from .units import _SIZE, _UNITS

_SIZE_HINT = "use a whole number of bytes or e.g. '8GiB', '8Gi', '8GB', '500MB'"


def plain_number(text: str) -> int | float | None:
    """The number a string spells with no unit (``"8000"`` -> 8000, ``"0.5"`` -> 0.5), else ``None``.

    Digits only are an ``int``; anything else Python's ``float`` reads (``"1e9"``,
    ``"-2.5"``, ``"nan"``, ``"inf"``) is a ``float``; text with a unit is ``None``.
    """
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return None


def parse_size(value: int | float | str) -> int:
    """Bytes from a number or a size string.

    Parameters
    ----------
    value
        A number of bytes (an ``int``, or a ``float`` rounded down), or a
        string: a plain number (read as that number, see :func:`plain_number`)
        or a number with a unit. Units are case-insensitive: ``B``; decimal
        ``k``/``kB``, ``M``/``MB``, ``G``/``GB``, ``T``/``TB`` (powers of
        1000); binary ``Ki``/``KiB``, ``Mi``/``MiB``, ``Gi``/``GiB``,
        ``Ti``/``TiB`` (powers of 1024). ``"8Gi"``, ``"8 GiB"`` and ``"1e9"``
        all work.

    Returns
    -------
    int
        At least 1.

    Raises
    ------
    OptionsError
        For text that is no size, and for nonsense that names its value: zero,
        less than one byte, negative, NaN or infinite.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise OptionsError(f"cannot read {value!r} as a size; {_SIZE_HINT}")
    number = plain_number(value) if isinstance(value, str) else value
    if number is None:
        return _size_with_unit(str(value))
    if isinstance(number, float) and not math.isfinite(number):
        raise OptionsError(f"a size must be a finite number, got {value!r}; {_SIZE_HINT}")
    if number < 0:
        raise OptionsError(f"a size cannot be negative, got {value!r}; {_SIZE_HINT}")
    if number < 1:
        raise OptionsError(f"a size must be at least 1 byte, got {value!r}; {_SIZE_HINT}")
    return int(number)


def _size_with_unit(text: str) -> int:
    """Bytes from text such as ``"8GiB"``; see :func:`parse_size`."""
    stripped = text.strip()
    if stripped.startswith("-"):
        raise OptionsError(f"a size cannot be negative, got {text!r}; {_SIZE_HINT}")
    match = _SIZE.match(stripped)
    unit = match.group(2).lower() if match else None
    if not match or unit not in _UNITS:
        raise OptionsError(f"cannot read {text!r} as a size; {_SIZE_HINT}")
    size = float(match.group(1)) * _UNITS[unit]
    if not math.isfinite(size) or size < 1:
        raise OptionsError(f"a size must be a finite number of at least 1 byte, got {text!r}; {_SIZE_HINT}")
    return int(size)


def byte_bar(total: int, desc: str, progress: bool | None, initial: int = 0) -> Any:
    """A tqdm bar counting bytes, on, off or automatic as ``progress`` says (see :func:`progress_disabled`)."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        unit="B",
        unit_scale=True,
        disable=progress_disabled(progress),
        desc=desc[:60],
        dynamic_ncols=True,
    )


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
