"""The session registry kept by the scheduler plugin: where every session is and how it does.

Plain data, no Dask: the scheduler plugin mutates it, :meth:`SessionRegistry.snapshot`
turns it into the immutable :class:`policies.types.Snapshot` the policies read, and
:meth:`SessionRecord.to_dict` is what ``server.sessions()`` returns over the wire.
"""

from __future__ import annotations

import statistics
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable

from policies.types import BurstTally, SessionStatus, SessionView, Snapshot, WorkerView
from workers.access import allowed, denied
from workers.errors import SessionNotFound
from workers.ids import new_id

#: Latencies kept per session for ``recent_latency_s`` and the stats.
RECENT = 32
#: Events the registry keeps per session (the oldest are dropped first).
MAX_EVENTS = 64
#: Closed sessions the registry keeps (for ``sessions(include_closed=True)``); the oldest are forgotten.
MAX_CLOSED = 1024
#: Name of the scheduler plugin that keeps the registry
#: (:class:`~framework.scheduler_plugin.TurboserveScheduler`, ``scheduler.plugins[PLUGIN_NAME]``).
PLUGIN_NAME = "turboserve"


@dataclass(slots=True, eq=False)
class SessionRecord:
    """What the control plane knows of one session (mutable; owned by the scheduler plugin).

    ``worker`` is the worker whose actor holds the state (on the device, or parked in
    host memory when ``status`` is suspended with ``tier == "host"``); None when the
    state is only on disk or the session is pending.
    """

    session_id: str
    model: str
    prompt: str
    seed: int
    height: int
    width: int
    status: SessionStatus = SessionStatus.PENDING
    worker: str | None = None
    actor_key: str | None = None
    generation: int = 0  # the ownership epoch: raised at every committed move (migration, resume, recovery)
    tier: str | None = None  # "host" or "disk" while suspended
    chunks: int = 0  # chunks produced (highest index + 1 reported)
    state_bytes: int = 0
    migrations: int = 0
    recoveries: int = 0
    since_s: float = 0.0
    created_s: float = 0.0
    chunk_period_s: float = 1.0
    latencies: deque = field(default_factory=lambda: deque(maxlen=RECENT))
    #: SHA-256 of the access token its opener got (:mod:`workers.access`); never sent to clients.
    #: Empty: open to every caller (a record made by hand, as in tests and the simulator's fakes).
    access_digest: str = ""
    #: The prompt a client last steered the stream to (``Session.set_prompt``); None: the opening one.
    current_prompt: str | None = None
    #: What the control plane saw happen to the session (migrated, its worker lost, recovered at
    #: chunk k), kept here because an actor's own list dies with its worker. Not in ``to_dict``.
    events: deque = field(default_factory=lambda: deque(maxlen=MAX_EVENTS))
    #: The registry's tally of bursts (set by :meth:`SessionRegistry.add`), and when this
    #: session's current burst began (None: not in one). A burst begins when the session
    #: becomes active and ends when it goes idle, is suspended or closes.
    bursts: BurstTally | None = field(default=None, repr=False)
    burst_from_s: float | None = None

    def note(self, kind: str, worker: str | None = None, **fields: Any) -> dict[str, Any]:
        """Record an event as :meth:`framework.Session.events` shows it (``source: "registry"``).

        ``fields`` may carry the ``id`` of the actor's own record of the same event, so a
        client that reads both keeps one.
        """
        event = {"kind": kind, "t": time.time(), "worker": worker, "id": new_id(),
                 "source": "registry", **fields}
        self.events.append(event)
        return event

    def allows(self, access_token: str | None) -> bool:
        """Whether a call carrying ``access_token`` may reach this session."""
        return not self.access_digest or allowed((self.access_digest,), access_token)

    def check_access(self, access_token: str | None) -> None:
        """Raise :class:`~workers.errors.SessionAccessDenied` unless ``access_token`` is this session's."""
        if not self.allows(access_token):
            raise denied(self.session_id, access_token)

    def set_status(self, status: SessionStatus, now_s: float) -> None:
        """Change the status; ``since_s`` becomes ``now_s``; a burst begins or ends in the tally."""
        tally = self.bursts
        if tally is not None:
            if status is SessionStatus.ACTIVE:
                if self.burst_from_s is None:
                    self.burst_from_s = now_s
                    tally.begin(now_s)
            elif status in _BURST_ENDS and self.burst_from_s is not None:
                tally.end(self.burst_from_s, now_s)
                self.burst_from_s = None
        self.status, self.since_s = status, now_s

    def to_dict(self, owned: bool = True) -> dict[str, Any]:
        """Plain-type view for clients (``server.sessions()``).

        Not ``owned`` (the caller did not present the session's token): without the prompt.
        """
        row = {
            "id": self.session_id,
            "status": self.status.value,
            "worker": self.worker,
            "tier": self.tier,
            "chunks": self.chunks,
            "state_bytes": self.state_bytes,
            "model": self.model,
            "prompt": self.prompt,
            "current_prompt": self.prompt if self.current_prompt is None else self.current_prompt,
            "seed": self.seed,
            "height": self.height,
            "width": self.width,
            "migrations": self.migrations,
            "recoveries": self.recoveries,
            "epoch": self.generation,
            "recent_latency_s": self.latencies[-1] if self.latencies else None,
            "owned": owned,
        }
        if not owned:
            del row["prompt"], row["current_prompt"]
        return row

    def view(self) -> SessionView:
        """The policy's view of this session."""
        return SessionView(
            session_id=self.session_id,
            status=self.status,
            worker=self.worker if self.status.on_device else None,
            state_bytes=self.state_bytes,
            model=self.model,
            since_s=self.since_s,
            chunk_period_s=self.chunk_period_s,
            context_frames=float(self.chunks),
            recent_latency_s=self.latencies[-1] if self.latencies else None,
        )


_BURST_ENDS = (SessionStatus.IDLE, SessionStatus.SUSPENDED, SessionStatus.CLOSED)


class SessionRegistry:
    """All sessions by id, with the queries the control plane needs.

    ``bursts`` tallies the sessions' bursts (their records update it as their status
    changes), for the snapshot's mean burst length.
    """

    def __init__(self) -> None:
        self._records: dict[str, SessionRecord] = {}
        self.bursts = BurstTally()

    def __contains__(self, session_id: str) -> bool:
        return session_id in self._records

    def __len__(self) -> int:
        return len(self._records)

    def add(self, record: SessionRecord) -> None:
        """Register a new session (its id must be unused)."""
        if record.session_id in self._records:
            raise ValueError(f"session id {record.session_id!r} is already registered")
        self._records[record.session_id] = record
        record.bursts = self.bursts
        if record.status is SessionStatus.ACTIVE:  # added active: its burst began at since_s
            record.set_status(SessionStatus.ACTIVE, record.since_s)

    def get(self, session_id: str) -> SessionRecord:
        """The record of ``session_id``; :class:`SessionNotFound` if unknown."""
        try:
            return self._records[session_id]
        except KeyError:
            raise SessionNotFound(
                f"no session {session_id!r}; open one with server.open_session(...) "
                "or list them with server.sessions()"
            ) from None

    def forget_closed(self, keep: int = MAX_CLOSED) -> list[str]:
        """Forget the closed sessions beyond the ``keep`` closed last; returns the ids forgotten.

        A forgotten id is :class:`SessionNotFound` from then on (and may be opened again).
        """
        closed = [r for r in self._records.values() if r.status is SessionStatus.CLOSED]
        if len(closed) <= keep:
            return []
        closed.sort(key=lambda r: r.since_s)
        gone = [r.session_id for r in closed[: len(closed) - keep]]
        for sid in gone:
            del self._records[sid]
        return gone

    def records(self, include_closed: bool = False) -> list[SessionRecord]:
        """Every record, open ones only unless ``include_closed``."""
        return [r for r in self._records.values() if include_closed or r.status is not SessionStatus.CLOSED]

    def on_worker(self, address: str) -> list[SessionRecord]:
        """Open sessions whose actor lives on ``address`` (device or host-parked)."""
        return [r for r in self.records() if r.worker == address]

    def load(self, addresses: Iterable[str]) -> dict[str, int]:
        """Open sessions held per worker (device or host), for admission."""
        load = {a: 0 for a in addresses}
        for r in self.records():
            if r.worker in load:
                load[r.worker] += 1
        return load

    def record_chunks(self, rows: Iterable[tuple], now_s: float) -> None:
        """Fold per-step chunk metrics ``(session_id, index, latency_s, batch, t_done)`` in."""
        for sid, index, latency, _batch, t_done in rows:
            r = self._records.get(sid)
            if r is None:
                continue
            r.chunks = max(r.chunks, index + 1)
            r.latencies.append(latency)
            # A chunk made after the session went idle means it was asked for again.
            if r.status is SessionStatus.IDLE and t_done > r.since_s:
                r.set_status(SessionStatus.ACTIVE, now_s)

    def snapshot(self, now_s: float, workers: Iterable[WorkerView], **kw: Any) -> Snapshot:
        """The immutable :class:`Snapshot` of the open sessions, for the policies."""
        return Snapshot(now_s=now_s, workers=tuple(workers), sessions=tuple(r.view() for r in self.records()), **kw)

    def stats(self) -> dict[str, Any]:
        """Counts per status and latency figures over the recent chunks of every session."""
        counts = {s.value: 0 for s in SessionStatus}
        lat: list[float] = []
        for r in self._records.values():
            counts[r.status.value] += 1
            lat.extend(r.latencies)
        lat.sort()
        return {
            "sessions": counts,
            "chunks": sum(r.chunks for r in self._records.values()),
            "migrations": sum(r.migrations for r in self._records.values()),
            "recoveries": sum(r.recoveries for r in self._records.values()),
            "latency_p50_s": statistics.median(lat) if lat else None,
            "latency_p99_s": lat[min(len(lat) - 1, int(0.99 * len(lat)))] if lat else None,
            "latency_max_s": lat[-1] if lat else None,
        }
