"""The control loop's workers, from asked for to released: what its scaling decisions left behind.

A worker's way through the loop, as :class:`WorkerFleet` records it:

- *asked for*: the autoscaler's target beyond the workers serving (:meth:`WorkerFleet.starting`);
- *joined*: it is in the cluster and its cost counts from now (:meth:`WorkerFleet.joined`);
- *ready*: its model loaded; the first worker ready after a scale-out gives the start-up
  time (:meth:`WorkerFleet.ready`);
- *retiring*: a ``Retire`` was accepted and its drain runs (:meth:`WorkerFleet.retire`);
- *drained*: its sessions left; the cluster manager may close it (:meth:`WorkerFleet.to_close`);
- *released*: it left the cluster; its cost stops (:meth:`WorkerFleet.left`).

A drained worker the cluster manager has not closed yet comes back into service in two
ways, both through :meth:`WorkerFleet.take_back`: a scale-out keeps it before asking for
new workers (:meth:`WorkerFleet.keep_drained`), and admission takes it for a session
that lost its worker (:meth:`framework.admission.Admission.reclaim_drained`, which puts
it back with :meth:`WorkerFleet.put_back` when the session does not fit there either).

Plain bookkeeping, no Dask and no event loop: the drains themselves run in the loop's
:class:`~framework.control_actions.ActionRunner`, the cluster manager behind its
``Mechanisms``. Times are the ``clock``'s (wall seconds).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from typing import Any

__all__ = ["WorkerFleet"]


class WorkerFleet:
    """The workers a control loop asked for, runs, drains and released (see the module docstring).

    Parameters
    ----------
    clock : callable
        Wall time in seconds.
    workers : iterable of str
        The workers already in the cluster (their cost counts from now).

    Examples
    --------
    >>> fleet = WorkerFleet(clock=lambda: 0.0, workers=["a", "b"])
    >>> fleet.scale_to(3)
    >>> fleet.starting(["a", "b"])
    1
    >>> fleet.retire("b"); fleet.drain_done("b")
    >>> fleet.to_close(busy=set())
    ['b']
    """

    def __init__(self, clock: Callable[[], float], workers: Iterable[str] = ()) -> None:
        self.clock = clock
        self.target: int | None = None  # workers asked of the cluster manager
        self.retiring: set[str] = set()  # Retire accepted: draining, then closed by the cluster manager
        self.drained: set[str] = set()  # drain finished: ready to close
        #: Start-up times of scale-outs (from the request to a ready worker), seconds.
        self.startup_s: list[float] = []
        now = clock()
        #: worker -> [joined, released or None], wall seconds: what each worker cost.
        self.lifetimes: dict[str, list[float | None]] = {a: [now, None] for a in workers}
        self._scaled_at: float | None = None  # when the last scale-out was asked, until a worker is ready

    # ------------------------------------------------------------ membership

    def joined(self, address: str) -> None:
        """``address`` joined the cluster: its cost counts from now."""
        self.lifetimes[address] = [self.clock(), None]

    def ready(self, warm: int) -> None:
        """A worker loaded its model; ``warm`` workers now take sessions.

        Records the start-up time of the scale-out in progress; the scale-out ends once
        ``warm`` reaches the target.
        """
        if self._scaled_at is not None:
            self.startup_s.append(self.clock() - self._scaled_at)
            if self.target is None or warm >= self.target:
                self._scaled_at = None

    def left(self, address: str) -> None:
        """``address`` left the cluster: its cost stops, it is neither retiring nor drained."""
        entry = self.lifetimes.get(address)
        if entry is not None and entry[1] is None:
            entry[1] = self.clock()
        self.retiring.discard(address)
        self.drained.discard(address)

    def joined_at(self, address: str, default: float) -> float:
        """When ``address`` joined (``default`` when it is not known)."""
        entry = self.lifetimes.get(address)
        return default if entry is None else entry[0]

    # ------------------------------------------------------------ scaling

    def scale_to(self, n: int) -> None:
        """The cluster manager was asked for ``n`` workers (a scale-out starts the start-up clock)."""
        if self.target is None or n > self.target:
            self._scaled_at = self.clock()
        self.target = n

    def serving(self, workers: Collection[str]) -> int:
        """Of ``workers`` (those in the cluster), the ones not retiring."""
        return sum(1 for a in workers if a not in self.retiring)

    def starting(self, workers: Collection[str]) -> int:
        """Workers asked for and not arrived yet: the target beyond those of ``workers`` serving."""
        if self.target is None:
            return 0
        return max(0, self.target - self.serving(workers))

    # ------------------------------------------------------------ draining

    def retire(self, address: str) -> None:
        """A ``Retire`` of ``address`` was accepted: it drains, then the cluster manager closes it."""
        self.retiring.add(address)

    def drain_done(self, address: str) -> None:
        """``address`` holds no session any more: ready to close."""
        self.drained.add(address)

    def drain_failed(self, address: str) -> None:
        """The drain of ``address`` failed: it stays in service."""
        self.retiring.discard(address)

    def take_back(self, address: str) -> bool:
        """Put ``address`` back in service (no longer drained nor retiring); returns whether it was retiring."""
        was_retiring = address in self.retiring
        self.drained.discard(address)
        self.retiring.discard(address)
        return was_retiring

    def put_back(self, address: str, retiring: bool) -> None:
        """Undo :meth:`take_back`: ``address`` is drained again (and retiring, if it was)."""
        self.drained.add(address)
        if retiring:
            self.retiring.add(address)

    def keep_drained(self, workers: Collection[str], closing: Collection[str]) -> list[str]:
        """On a scale-out, take drained workers back until ``workers`` serve the target; returns them, sorted.

        They would otherwise sit empty while the cluster manager starts new workers next
        to them. Not those it is ``closing`` now (it was offered them; the target covers them).
        """
        serving = self.serving(workers)
        kept = []
        for address in sorted(self.drained):
            if self.target is None or serving >= self.target:
                break
            if address in closing:
                continue
            self.take_back(address)
            kept.append(address)
            serving += 1
        return kept

    def to_close(self, busy: Collection[str]) -> list[str]:
        """Drained workers that hold nothing (``busy``: workers that still do), sorted."""
        return [a for a in sorted(self.drained) if a not in busy]

    # ------------------------------------------------------------ views

    def log(self) -> list[dict[str, Any]]:
        """Each worker's lifetime: ``worker``, ``started_s``, ``released_s`` (None: still running)."""
        return [{"worker": w, "started_s": a, "released_s": b} for w, (a, b) in self.lifetimes.items()]
