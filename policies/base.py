"""The base of the built-in policies: a decision on a fresh ledger, or on a shared one.

``decide(snap, state)`` (the :class:`~policies.types.Policy` protocol) builds a
:class:`~policies.admission.CapacityLedger` of the snapshot and calls
``decide_on(ledger, state)``; :class:`~policies.combined.Combined` calls ``decide_on``
directly, with one ledger shared by the policies of one decision.
"""

from __future__ import annotations

from typing import Any

from policies.admission import CapacityLedger
from policies.types import Action, Snapshot


class LedgerPolicy:
    """A policy that decides on a capacity ledger (subclasses set ``kind``, ``name``)."""

    kind = ""
    name = ""

    def initial_state(self) -> Any:
        """No state by default."""
        return None

    def ledger(self, snap: Snapshot) -> CapacityLedger:
        """The ledger :meth:`decide` books into (a fresh one of ``snap``)."""
        return CapacityLedger(snap)

    def decide(self, snap: Snapshot, state: Any) -> tuple[list[Action], Any]:
        """The actions for ``snap`` and the next state."""
        return self.decide_on(self.ledger(snap), state)

    def decide_on(self, ledger: CapacityLedger, state: Any) -> tuple[list[Action], Any]:
        """:meth:`decide` on a ledger that earlier policies of this decision may have booked into."""
        raise NotImplementedError
