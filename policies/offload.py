"""Offload policies: which idle sessions leave the GPU, and which come back ahead of need.

Registered under kind ``"offload"``: ``never`` and ``idle-timeout``.

Examples
--------
>>> from policies.registry import make
>>> from policies.types import Snapshot, WorkerView, SessionView, SessionStatus
>>> snap = Snapshot(now_s=100.0, workers=(WorkerView("w1"),),
...                 sessions=(SessionView("a", SessionStatus.IDLE, "w1", state_bytes=1, since_s=10.0),))
>>> policy = make("offload", "idle-timeout", idle_s=30)
>>> policy.decide(snap, policy.initial_state())[0]
[Offload(cause='idle for more than 30s', session_id='a', tier='host')]
"""

from __future__ import annotations

from typing import Any

from policies.admission import CapacityLedger
from policies.base import LedgerPolicy
from policies.choosers import HeapChooser, fewest_active
from policies.registry import register
from policies.types import TIERS, Action, Offload, Resume


class _OffloadPolicy(LedgerPolicy):
    """``Offload`` and ``Resume`` actions; offload policies keep no state."""

    kind = "offload"


@register("offload", "never")
class Never(_OffloadPolicy):
    """Idle sessions keep their state on the GPU until they close."""

    name = "never"

    def __repr__(self) -> str:
        return "Never()"

    def decide_on(self, ledger: CapacityLedger, state: Any) -> tuple[list[Action], Any]:
        """No action, ever."""
        return [], state


@register("offload", "idle-timeout")
class IdleTimeout(_OffloadPolicy):
    """Offload sessions idle for longer than ``idle_s``; prefetch those about to return.

    - An IDLE session idle (``now - since_s``) for more than ``idle_s`` is offloaded to
      ``tier``, unless it is expected back within ``prefetch_s`` (``next_active_s``),
      or its worker's booked memory is at most ``low_water`` of the device: state
      that no one else needs the room of stays, so that its return costs no copy.
    - On a worker whose booked memory exceeds ``high_water`` of its device, idle
      sessions are offloaded earlier, longest idle first, until it is back under.
    - A SUSPENDED session whose ``next_active_s`` is known and at most ``prefetch_s``
      ahead is resumed onto the running worker with the fewest active sessions that
      has a batch slot and stays under ``high_water`` with it (soonest first), so
      that it does not wait for its state when it becomes active.

    Parameters
    ----------
    idle_s
        Idle time before offloading (``turboserve.control.idle-offload-s``, 30).
    prefetch_s
        How far ahead a known return triggers a prefetch (10).
    high_water
        Share of device memory above which idle sessions are offloaded early (0.9).
    low_water
        Share of device memory at or below which timed-out idle sessions stay on the
        device (0: offload on the timeout alone, the default). Between ``low_water``
        and ``high_water`` the timeout applies, longest idle first, until the worker
        is back at ``low_water``.
    tier
        Where offloaded state goes: ``"host"`` (pinned memory) or ``"disk"`` (zarr).
    """

    name = "idle-timeout"

    def __init__(
        self,
        *,
        idle_s: float = 30.0,
        prefetch_s: float = 10.0,
        high_water: float = 0.9,
        low_water: float = 0.0,
        tier: str = "host",
    ) -> None:
        if idle_s < 0 or prefetch_s < 0:
            raise ValueError(f"idle_s and prefetch_s must be >= 0, got {idle_s!r} and {prefetch_s!r}")
        if not 0 < high_water <= 1:
            raise ValueError(f"high_water must be in (0, 1], got {high_water!r}")
        if not 0 <= low_water <= high_water:
            raise ValueError(f"low_water must be in [0, high_water={high_water!r}], got {low_water!r}")
        if tier not in TIERS:
            raise ValueError(f"tier must be one of {TIERS}, got {tier!r}")
        self.idle_s = float(idle_s)
        self.prefetch_s = float(prefetch_s)
        self.high_water = float(high_water)
        self.low_water = float(low_water)
        self.tier = tier

    def __repr__(self) -> str:
        return (
            f"IdleTimeout(idle_s={self.idle_s}, prefetch_s={self.prefetch_s}, high_water={self.high_water}, "
            f"low_water={self.low_water}, tier={self.tier!r})"
        )

    def decide_on(self, ledger: CapacityLedger, state: Any) -> tuple[list[Action], Any]:
        """Offload timed-out and over-high-water idle sessions, then prefetch returning ones."""
        now = ledger.snap.now_s
        acted = ledger.acted
        horizon = now + self.prefetch_s  # expected back before this: keep, or prefetch
        idle_since = now - self.idle_s  # idle since before this: timed out
        timeout_cause = f"idle for more than {self.idle_s:g}s"
        tier = self.tier
        actions: list[Action] = []
        low = self.low_water
        high = self.high_water
        for load in ledger.loads.values():
            idle = load.idle
            if not idle:
                continue
            memory = load.view.memory_bytes
            excess = load.mem_used - high * memory
            if excess <= 0 and low == 0:
                # The common case: only the timeout applies, in snapshot order.
                for s in idle:
                    if s.since_s < idle_since:
                        sid = s.session_id
                        back = s.next_active_s
                        if sid not in acted and (back is None or back > horizon):
                            acted.add(sid)
                            actions.append(Offload(sid, tier=tier, cause=timeout_cause))
                continue
            above_low = load.mem_used - low * memory  # > 0: timed-out sessions may go
            if low > 0 and above_low <= 0:
                continue
            candidates = load.idle
            if excess > 0 or low > 0:
                candidates = sorted(candidates, key=lambda s: (s.since_s, s.session_id))  # longest idle first
                high_cause = f"memory above {self.high_water:.0%} on {load.address}"
            for s in candidates:
                if s.session_id in acted or (s.next_active_s is not None and s.next_active_s <= horizon):
                    continue
                if s.since_s < idle_since and (low == 0 or above_low > 0):
                    cause = timeout_cause
                elif excess > 0:
                    cause = high_cause
                else:
                    continue
                acted.add(s.session_id)
                excess -= s.state_bytes
                above_low -= s.state_bytes
                actions.append(Offload(s.session_id, tier=tier, cause=cause))
        returning = [
            s
            for s in ledger.suspended
            if s.next_active_s is not None and s.next_active_s <= horizon and s.session_id not in acted
        ]
        if returning:
            returning.sort(key=lambda s: (s.next_active_s, s.session_id))
            chooser = HeapChooser(ledger.loads.values(), fewest_active, memory_share=self.high_water)
            for s in returning:
                load = chooser.pick(s.state_bytes, model=s.model)
                if load is None:
                    continue
                # Booked as active: it needs a batch slot as soon as it returns.
                ledger.book(s, load, active=True, nbytes=s.state_bytes)
                chooser.refresh(load)
                acted.add(s.session_id)
                actions.append(Resume(s.session_id, load.address, cause=f"prefetch: back at {s.next_active_s:.0f}s"))
        return actions, state
