"""One decision of all the policies, booked into one shared ledger.

Called separately on the same snapshot, a placement and an offload policy could both
hand out the same free device memory (a ``Place`` and a prefetch ``Resume`` onto one
worker). :class:`Combined` runs them in turn on one
:class:`~policies.admission.CapacityLedger`: placement first (pending sessions are
waiting now), then offload (timeouts and prefetches with the memory left), then
autoscaling (which sees the sessions left pending). A session named by one action is
never named by another in the same decision.

Examples
--------
>>> from policies.registry import make
>>> from policies.types import Snapshot, WorkerView, SessionView, SessionStatus
>>> combined = Combined(make("placement", "least-loaded"), make("autoscaling", "fixed", n=1),
...                     make("offload", "never"))
>>> snap = Snapshot(now_s=0.0, workers=(WorkerView("w1"),),
...                 sessions=(SessionView("a", SessionStatus.PENDING),))
>>> [type(a).__name__ for a in combined.decide(snap, combined.initial_state())[0]]
['Place']
"""

from __future__ import annotations

from typing import Any

from policies.admission import CapacityLedger
from policies.ledger_cache import LedgerCache
from policies.parallelism import unit_view
from policies.types import Action, FormGroup, Snapshot, SplitGroup


class Combined:
    """Placement, offload and autoscaling (and optionally parallelism) policies deciding together.

    Parameters
    ----------
    placement, autoscaling, offload
        Policies of those kinds (from :func:`policies.registry.make`). A policy without
        a ``decide_on(ledger, state)`` method is called with ``decide(snap, state)``
        and then does not see what the others booked.
    parallelism
        A policy of kind ``parallelism`` (:mod:`policies.parallelism`), or None. It
        decides first, on the snapshot; the others then decide on one ledger of
        :func:`policies.parallelism.unit_view`: a group is one unit with the memory and
        batch slots of all its workers, and followers, workers transformed by this
        decision and units below the policy's ``min_degree`` take no session.

    The state is the tuple of the three policies' states, in that order (and the
    parallelism policy's fourth, when there is one).
    """

    kind = "combined"

    def __init__(self, placement: Any, autoscaling: Any, offload: Any, parallelism: Any = None) -> None:
        pairs = [(placement, "placement"), (autoscaling, "autoscaling"), (offload, "offload")]
        if parallelism is not None:
            pairs.append((parallelism, "parallelism"))
        for policy, kind in pairs:
            if getattr(policy, "kind", None) != kind:
                raise ValueError(f"expected a {kind} policy, got {policy!r} of kind {getattr(policy, 'kind', None)!r}")
        self.placement, self.autoscaling, self.offload = placement, autoscaling, offload
        self.parallelism = parallelism
        self._admissions = LedgerCache()  # admit(..., incremental=True)
        self.name = f"{placement.name}+{autoscaling.name}+{offload.name}"
        if parallelism is not None:
            self.name += f"+{parallelism.name}"

    def __repr__(self) -> str:
        extra = "" if self.parallelism is None else f", {self.parallelism!r}"
        return f"Combined({self.placement!r}, {self.autoscaling!r}, {self.offload!r}{extra})"

    def initial_state(self) -> tuple[Any, ...]:
        """The policies' initial states."""
        states = (self.placement.initial_state(), self.autoscaling.initial_state(), self.offload.initial_state())
        return states if self.parallelism is None else (*states, self.parallelism.initial_state())

    def decide(
        self, snap: Snapshot, state: tuple[Any, ...], *, incremental: bool = False,
    ) -> tuple[list[Action], tuple[Any, ...]]:
        """All actions of one control tick, and the next combined state.

        ``incremental``: as for :meth:`admit` (the ticks and admissions of one cluster
        share one :class:`~policies.ledger_cache.LedgerCache`), with the same result.
        """
        g_actions: list[Action] = []
        if self.parallelism is not None:
            p_state, a_state, o_state, g_state = state
            g_actions, g_state = self.parallelism.decide(snap, g_state)
            busy = frozenset(a for x in g_actions if isinstance(x, (FormGroup, SplitGroup)) for a in x.workers)
            snap = unit_view(snap, self.parallelism.min_degree(snap), busy)
        else:
            p_state, a_state, o_state = state
        new_bytes = getattr(self.placement, "new_session_bytes", None)
        ledger = self._admissions.ledger(snap, new_bytes) if incremental else CapacityLedger(snap, new_bytes)
        p_actions, p_state = _decide(self.placement, ledger, p_state)
        o_actions, o_state = _decide(self.offload, ledger, o_state)
        a_actions, a_state = _decide(self.autoscaling, ledger, a_state)
        actions = g_actions + p_actions + o_actions + a_actions
        if self.parallelism is None:
            return actions, (p_state, a_state, o_state)
        return actions, (p_state, a_state, o_state, g_state)


    def admit(
        self, snap: Snapshot, state: tuple[Any, ...], *, incremental: bool = False,
    ) -> tuple[list[Action], tuple[Any, ...]]:
        """Admission between ticks: the placement policy alone, on the view a tick would give it.

        What live admission does when a session opens or comes back (``ControlLoop.choose``)
        and the simulator between ticks; the other policies' states are unchanged.
        ``incremental``: ``snap`` is a later view of the cluster of the previous
        incremental decision, tick or admission (and no action of that one is still being decided); the
        ledger is counted only where they differ (:class:`~policies.ledger_cache.LedgerCache`),
        with the same result.
        """
        if self.parallelism is not None:
            snap = unit_view(snap, self.parallelism.min_degree(snap), frozenset())
        new_bytes = getattr(self.placement, "new_session_bytes", None)
        ledger = self._admissions.ledger(snap, new_bytes) if incremental else CapacityLedger(snap, new_bytes)
        actions, p_state = _decide(self.placement, ledger, state[0])
        return actions, (p_state, *state[1:])


def _decide(policy: Any, ledger: CapacityLedger, state: Any) -> tuple[list[Action], Any]:
    decide_on = getattr(policy, "decide_on", None)
    if decide_on is not None:
        return decide_on(ledger, state)
    return policy.decide(ledger.snap, state)
