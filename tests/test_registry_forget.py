"""The registry forgets the oldest closed sessions beyond its bound (issue 13: it never forgot any).

A scheduler serving for days closes millions of sessions; their records (prompt, events,
latencies) stayed in memory and in every ``sessions(include_closed=True)`` reply. Open
sessions are never forgotten; a forgotten id is unknown from then on.
"""

from __future__ import annotations

import pytest

from framework.registry import MAX_CLOSED, SessionRecord, SessionRegistry
from policies.types import SessionStatus
from workers.errors import SessionNotFound


def _record(i: int, status: SessionStatus, since_s: float) -> SessionRecord:
    rec = SessionRecord(session_id=f"s{i}", model="tiny", prompt="p", seed=i, height=64, width=64)
    rec.set_status(status, since_s)
    return rec


def test_the_oldest_closed_sessions_beyond_the_bound_are_forgotten_and_open_ones_never():
    registry = SessionRegistry()
    for i in range(10):
        registry.add(_record(i, SessionStatus.CLOSED if i % 2 else SessionStatus.ACTIVE, since_s=float(100 - i)))
    # closed: s1 (99), s3 (97), s5 (95), s7 (93), s9 (91): the two closed longest ago are s9 and s7
    assert sorted(registry.forget_closed(keep=3)) == ["s7", "s9"]
    assert len(registry) == 8 and [r.session_id for r in registry.records()] == ["s0", "s2", "s4", "s6", "s8"]
    with pytest.raises(SessionNotFound):
        registry.get("s9")
    assert registry.forget_closed(keep=3) == []
    registry.add(_record(9, SessionStatus.ACTIVE, since_s=200.0))  # a forgotten id may be opened again
    assert registry.get("s9").status is SessionStatus.ACTIVE


def test_the_default_bound_keeps_recent_history():
    assert MAX_CLOSED >= 100
    registry = SessionRegistry()
    for i in range(MAX_CLOSED + 5):
        registry.add(_record(i, SessionStatus.CLOSED, since_s=float(i)))
    assert len(registry.forget_closed()) == 5 and len(registry) == MAX_CLOSED
    assert "s0" not in registry and f"s{MAX_CLOSED + 4}" in registry
