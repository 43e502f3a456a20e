"""Memory budgets: parsing ``"8GiB"``-style sizes and reading available memory."""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import OptionsError

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*$")
AUTO_FRACTION = 0.5


def format_bytes(n: float) -> str:
    """``12.3 GiB``-style text for a byte count."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


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


def available_memory() -> int:
    """Bytes this process can still allocate: MemAvailable, capped by a cgroup limit."""
    available = _meminfo_available()
    limit = _cgroup_room()
    return min(available, limit) if limit is not None else available


def _meminfo_available() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def _cgroup_room() -> int | None:
    """Limit minus usage of this process's cgroup (v2, else v1), if limited."""
    for limit_file, usage_file in (("memory.max", "memory.current"),
                                   ("memory.limit_in_bytes", "memory.usage_in_bytes")):
        for base in _cgroup_dirs():
            try:
                raw = (base / limit_file).read_text().strip()
                if raw == "max" or int(raw) >= 2**60:
                    continue
                return max(0, int(raw) - int((base / usage_file).read_text().strip()))
            except (OSError, ValueError):
                continue
    return None


def _cgroup_dirs() -> list[Path]:
    dirs = []
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, rel = line.split(":", 2)
            if controllers in ("", "memory") or "memory" in controllers.split(","):
                for mount in (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/memory")):
                    dirs.append(mount / rel.lstrip("/"))
    except (OSError, ValueError):
        pass
    return dirs


def resolve_budget(budget: int | float | str) -> int:
    """Bytes for a ``memory_budget`` argument.

    ``"auto"`` is half of the available memory; a float in (0, 1] is that
    fraction of the available memory; anything else goes to :func:`parse_size`.
    """
    if budget == "auto":
        return int(available_memory() * AUTO_FRACTION)
    if isinstance(budget, float) and 0 < budget <= 1:
        return int(available_memory() * budget)
    return parse_size(budget)
