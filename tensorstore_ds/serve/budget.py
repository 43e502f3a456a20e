"""Memory budgets: how much memory a dataset may hold, and how much is available."""

from __future__ import annotations

import os
from pathlib import Path

from ..options import parse_size, plain_number

AUTO_FRACTION = 0.5


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
    for limit_file, usage_file in (
        ("memory.max", "memory.current"),
        ("memory.limit_in_bytes", "memory.usage_in_bytes"),
    ):
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

    The rule, for numbers and for the strings a command line passes alike:

    - ``"auto"``: half of the available memory (:func:`available_memory`);
    - a ``float`` in (0, 1]: that fraction of the available memory
      (``0.5``, ``1.0``);
    - an ``int``, or a ``float`` above 1: that many bytes (``8_000_000_000``,
      ``3e9``);
    - a string holding a plain number is that number, so the same rule applies:
      ``"0.5"`` is half of the available memory, ``"1e9"`` and
      ``"8000000000"`` are bytes (an integer string is always bytes: ``"1"`` is
      one byte, ``"1.0"`` all the available memory);
    - a string with a unit is a size: ``"8GiB"``, ``"8Gi"``, ``"8GB"``,
      ``"500 MB"`` (see :func:`~tensorstore_ds.options.parse_size`).

    Raises
    ------
    OptionsError
        For anything else, naming the value: zero, negative numbers, NaN,
        infinity, booleans and text that is no size.
    """
    if isinstance(budget, str):
        if budget.strip().lower() == "auto":
            return max(1, int(available_memory() * AUTO_FRACTION))
        number = plain_number(budget)
    else:
        number = budget
    if isinstance(number, float) and 0 < number <= 1:
        return max(1, int(available_memory() * number))
    return parse_size(budget)
