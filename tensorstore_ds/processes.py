"""Processes of this machine: whether a process id still runs.

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
