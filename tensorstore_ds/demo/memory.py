"""Memory measurement: proportional set size (PSS) summed over a process tree.

PSS charges each shared page to the processes that map it in equal parts, so
the sum over a DataLoader's parent and workers counts shared data once.
"""

from __future__ import annotations

import os
from pathlib import Path


def _proc_kib(path: str, field: str) -> int:
    """Bytes of a ``FIELD:  N kB`` line of a /proc file (0 if the process is gone)."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def pss_bytes(pid: int) -> int:
    """PSS of one process, from ``/proc/PID/smaps_rollup``."""
    return _proc_kib(f"/proc/{pid}/smaps_rollup", "Pss:")


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid``."""
    found: list[int] = []
    stack = [pid]
    while stack:
        parent = stack.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except (OSError, ValueError):
                continue
            found.extend(children)
            stack.extend(children)
    return found


def tree_pss_bytes(pid: int | None = None) -> int:
    """PSS summed over ``pid`` (default: this process) and all its descendants."""
    root = os.getpid() if pid is None else pid
    return sum(pss_bytes(p) for p in [root, *descendants(root)])


def rss_bytes(pid: int | None = None) -> int:
    """Resident set size of one process (default: this one)."""
    return _proc_kib(f"/proc/{os.getpid() if pid is None else pid}/status", "VmRSS:")
