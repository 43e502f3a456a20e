"""Per-host politeness for URL fetching: a concurrency cap and a circuit breaker.

One :class:`Hosts` object is shared by every fetch of a conversion. The host of
a URL is its lower-cased host name (the port is ignored: one machine is one
host).

Concurrency cap
    :meth:`Hosts.try_acquire` admits a fetch while fewer than ``cap`` fetches
    of that host are in flight; :meth:`Hosts.release` frees the slot. The
    pipeline parks the URLs of a host at its cap and starts other hosts'
    URLs meanwhile, so a capped host never idles the fetch threads. ``cap``
    None means no cap of its own (only the conversion's fetch concurrency):
    the default, so one fast host (a CDN) is never slowed down.

Circuit breaker
    Every fetch attempt reports how it ended. Timeouts and connection errors
    extend the host's run of consecutive failures; any HTTP answer (the host
    is up, whatever the status) ends the run. After ``trip_after`` failures
    in a row the host's circuit opens for the rest of the conversion: its
    remaining URLs fail at once with reason ``host-circuit-open`` (a transient
    reason, so ``--retry-failed`` fetches them again later). A healthy host
    with a few stalled URLs never trips, since its successes keep resetting
    the run. ``trip_after`` 0 turns the breaker off.
"""

from __future__ import annotations

import threading
import urllib.parse
from collections import Counter

from ..errors import FetchError, OptionsError

__all__ = ["CIRCUIT_OPEN", "HOST_DOWN_REASONS", "Hosts", "host_of"]

CIRCUIT_OPEN = "host-circuit-open"
HOST_DOWN_REASONS = frozenset({"timeout", "connection-error"})


def host_of(url: str) -> str:
    """The lower-cased host name of ``url`` (``""`` for none, e.g. a file URL or garbage)."""
    try:
        return (urllib.parse.urlsplit(url.strip()).hostname or "").lower()
    except (ValueError, AttributeError):
        return ""


class Hosts:
    """Per-host in-flight counts and failure runs, safe to share between threads.

    Parameters
    ----------
    cap
        Fetches of one host in flight at most; None for no per-host cap.
    trip_after
        Consecutive timeouts or connection errors that open a host's circuit;
        0 never opens it.
    """

    def __init__(self, cap: int | None = None, trip_after: int = 20) -> None:
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
            raise OptionsError(f"per-host concurrency must be an integer >= 1 or None, got {cap!r}")
        if isinstance(trip_after, bool) or not isinstance(trip_after, int) or trip_after < 0:
            raise OptionsError(f"host_breaker must be an integer >= 0, got {trip_after!r}")
        self.cap = cap
        self.trip_after = trip_after
        self._lock = threading.Lock()
        self._active: Counter[str] = Counter()
        self._run: Counter[str] = Counter()
        self._open: set[str] = set()

    # --- concurrency cap ------------------------------------------------------

    def try_acquire(self, host: str) -> bool:
        """Take a fetch slot of ``host``; False when it is at its cap."""
        with self._lock:
            if self.cap is not None and self._active[host] >= self.cap:
                return False
            self._active[host] += 1
            return True

    def release(self, host: str) -> None:
        """Give back a slot taken by :meth:`try_acquire`."""
        with self._lock:
            self._active[host] -= 1
            if self._active[host] <= 0:
                del self._active[host]

    def in_flight(self, host: str) -> int:
        """Fetches of ``host`` holding a slot now."""
        with self._lock:
            return self._active[host]

    # --- circuit breaker ------------------------------------------------------

    def check(self, url: str) -> None:
        """Raise ``host-circuit-open`` if the circuit of ``url``'s host is open."""
        host = host_of(url)
        if host in self._open:  # a set lookup is atomic; the lock only guards updates
            detail = (
                f"{url}: host {host} skipped after {self.trip_after} timeouts or connection errors in a row "
                "(retry later with --retry-failed)"
            )
            raise FetchError(CIRCUIT_OPEN, detail)

    def record(self, url: str, reason: str | None) -> None:
        """Note how one attempt on ``url`` ended: None for an HTTP answer, else the failure reason."""
        host = host_of(url)
        with self._lock:
            if reason not in HOST_DOWN_REASONS:
                self._run.pop(host, None)
                return
            self._run[host] += 1
            if self.trip_after and self._run[host] >= self.trip_after:
                self._open.add(host)

    def is_open(self, url: str) -> bool:
        """Whether the circuit of ``url``'s host is open."""
        return host_of(url) in self._open

    @property
    def open_hosts(self) -> list[str]:
        """Hosts whose circuit is open, sorted."""
        with self._lock:
            return sorted(self._open)
