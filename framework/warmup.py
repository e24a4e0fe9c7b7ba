"""Which workers have their model loaded: the scheduler's view of worker warm-up.

Dask counts a worker as running as soon as it registers with the scheduler; the
:class:`~workers.plugin.ModelHost` on it then still loads its model (seconds on a CPU,
tens of seconds for a GPU-sized checkpoint). A session placed or migrated there meanwhile
waits for that load. :class:`Warmup` keeps the workers that joined and have not reported
their model loaded (event topic :data:`workers.plugin.READY_TOPIC`); the control loop
shows them STARTING, so placement, migration and admission leave them alone.

A worker that never reports (no ModelHost, a lost event) is offered anyway once
``turboserve.control.worker-ready-timeout`` has passed since it joined: it can still
serve, loading its model on first use. A report of a failed load makes the worker
ready too (a session opened there gets the load's typed error). ``0`` offers workers as
soon as they join (Dask's view). Plain state, no Dask: the scheduler plugin feeds it.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Warmup:
    """Workers in the cluster whose model host has not reported ready yet.

    Parameters
    ----------
    timeout_s : float
        Seconds after joining when a silent worker is offered anyway (0: at once).
    clock : callable, optional
        Monotonic seconds (default :func:`time.monotonic`).

    Examples
    --------
    >>> w = Warmup(60.0, clock=lambda: 0.0)
    >>> w.joined("tcp://a"); sorted(w.cold())
    ['tcp://a']
    >>> w.ready("tcp://a"), w.ready("tcp://a"), sorted(w.cold())
    (True, False, [])
    """

    def __init__(self, timeout_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if not timeout_s >= 0:
            raise ValueError(f"control.worker-ready-timeout must be >= 0 seconds (0: no wait), got {timeout_s!r}")
        self.timeout_s = float(timeout_s)
        self._clock = clock
        self._cold: dict[str, float] = {}  # address -> when it joined

    def joined(self, address: str) -> None:
        """``address`` joined: cold until it reports (nothing to wait for with a zero timeout)."""
        if self.timeout_s > 0:
            self._cold[address] = self._clock()

    def ready(self, address: str) -> bool:
        """``address`` reported its model loaded; True if it was cold until now."""
        return self._cold.pop(address, None) is not None

    def left(self, address: str) -> None:
        """``address`` left the cluster."""
        self._cold.pop(address, None)

    def cold(self) -> frozenset[str]:
        """The workers still loading their model."""
        return frozenset(self._cold)

    def overdue(self) -> list[str]:
        """Cold workers past the timeout, now counted ready (the caller logs and announces them)."""
        now = self._clock()
        late = sorted(a for a, t in self._cold.items() if now - t >= self.timeout_s)
        for address in late:
            del self._cold[address]
        return late
