"""Options as users type them: sizes such as ``"8GiB"``.

Parsing lives here, above :mod:`~tensorstore_ds.errors`, so that a value that
cannot be read is an :class:`~tensorstore_ds.errors.OptionsError` raised where
it is found.
"""

from __future__ import annotations

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


