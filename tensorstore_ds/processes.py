"""Processes of this machine: whether a process id still runs, and the cores this one may use.

Shared-memory copies and ring files (``serve``), partial downloads and
conversion leases (``store``) are named or stamped with the pid of the process
that made them, and are reclaimed once it is gone. Imports nothing of this
package, so every layer can use it.
"""

from __future__ import annotations

import os


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists (of any user; a zombie not yet reaped counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return True


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
