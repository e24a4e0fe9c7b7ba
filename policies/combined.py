"""One decision of all three policies, booked into one shared ledger.

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
from policies.types import Action, Snapshot


class Combined:
    """Placement, offload and autoscaling policies deciding together.

    Parameters
    ----------
    placement, autoscaling, offload
        Policies of those kinds (from :func:`policies.registry.make`). A policy without
        a ``decide_on(ledger, state)`` method is called with ``decide(snap, state)``
        and then does not see what the others booked.

    The state is the tuple of the three policies' states, in that order.
    """

    kind = "combined"

    def __init__(self, placement: Any, autoscaling: Any, offload: Any) -> None:
        for policy, kind in ((placement, "placement"), (autoscaling, "autoscaling"), (offload, "offload")):
            if getattr(policy, "kind", None) != kind:
                raise ValueError(f"expected a {kind} policy, got {policy!r} of kind {getattr(policy, 'kind', None)!r}")
        self.placement, self.autoscaling, self.offload = placement, autoscaling, offload
        self.name = f"{placement.name}+{autoscaling.name}+{offload.name}"

    def __repr__(self) -> str:
        return f"Combined({self.placement!r}, {self.autoscaling!r}, {self.offload!r})"

    def initial_state(self) -> tuple[Any, Any, Any]:
        """The three policies' initial states."""
        return (self.placement.initial_state(), self.autoscaling.initial_state(), self.offload.initial_state())

    def decide(self, snap: Snapshot, state: tuple[Any, Any, Any]) -> tuple[list[Action], tuple[Any, Any, Any]]:
        """All actions of one control tick, and the next combined state."""
        ledger = CapacityLedger(snap, getattr(self.placement, "new_session_bytes", None))
        p_state, a_state, o_state = state
        p_actions, p_state = _decide(self.placement, ledger, p_state)
        o_actions, o_state = _decide(self.offload, ledger, o_state)
        a_actions, a_state = _decide(self.autoscaling, ledger, a_state)
        return p_actions + o_actions + a_actions, (p_state, a_state, o_state)


def _decide(policy: Any, ledger: CapacityLedger, state: Any) -> tuple[list[Action], Any]:
    decide_on = getattr(policy, "decide_on", None)
    if decide_on is not None:
        return decide_on(ledger, state)
    return policy.decide(ledger.snap, state)
