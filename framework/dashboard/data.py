"""The plain data behind the turboserve dashboard page.

The page never reads Dask or the registry itself: each tick it calls a function that
returns a :class:`DashboardFrame` (built by :func:`build_frame` from the scheduler
plugin's registry), so the figures can be tested with literal frames and the per-tick
work stays a few dict lookups. Chunk latencies arrive incrementally: the plugin appends
the chunk metrics it already receives to a bounded :class:`ChunkLog`, and the page asks
only for the points after the last sequence number it has drawn.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from policies.types import TIERS as OFFLOAD_TIERS
from policies.types import SessionStatus

#: Status columns of the "sessions per worker" bars, in stacking order.
STATUSES: tuple[str, ...] = ("active", "idle", "migrating", "suspended", "pending")
#: State tiers shown in the "state bytes" bars: the device, then the offload tiers.
TIERS: tuple[str, ...] = ("device", *OFFLOAD_TIERS)
#: Bar label for sessions whose state sits on no worker (pending, or suspended to disk).
UNPLACED = "(none)"


@dataclass(frozen=True, slots=True)
class ChunkPoint:
    """One produced chunk, as the dashboard plots it.

    Attributes
    ----------
    seq : int
        Position in the :class:`ChunkLog` (increasing, never reused).
    t_s : float
        Wall-clock time the chunk was done (``time.time()`` seconds).
    session_id : str
    index : int
    latency_s : float
    batch_size : int
    """

    seq: int
    t_s: float
    session_id: str
    index: int
    latency_s: float
    batch_size: int


class ChunkLog:
    """The last ``maxlen`` chunk metrics, each with a sequence number.

    Parameters
    ----------
    maxlen : int
        Points kept; older ones are dropped (a page opened later sees these only).

    Examples
    --------
    >>> log = ChunkLog(maxlen=2)
    >>> log.extend([("s", 0, 0.5, 1, 10.0), ("s", 1, 0.4, 2, 11.0), ("s", 2, 0.3, 2, 12.0)])
    >>> [p.index for p in log.since(-1)], [p.index for p in log.since(1)]
    ([1, 2], [2])
    """

    def __init__(self, maxlen: int = 2000) -> None:
        if maxlen < 1:
            raise ValueError(f"maxlen must be >= 1, got {maxlen}")
        self._points: deque[ChunkPoint] = deque(maxlen=maxlen)
        self._next_seq = 0
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        # The scheduler plugin holding the log is pickled on its way to the scheduler.
        with self._lock:
            return {"maxlen": self._points.maxlen, "points": list(self._points), "next_seq": self._next_seq}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._points = deque(state["points"], maxlen=state["maxlen"])
        self._next_seq = state["next_seq"]
        self._lock = threading.Lock()

    def extend(self, rows: Iterable[tuple]) -> None:
        """Append chunk rows ``(session_id, index, latency_s, batch_size, t_done_s, ...)``.

        The row layout is the one the scheduler plugin folds into its registry
        (``SessionRegistry.record_chunks``); extra trailing fields are ignored.
        """
        with self._lock:
            for sid, index, latency, batch, t_done, *_ in rows:
                self._points.append(
                    ChunkPoint(self._next_seq, float(t_done), str(sid), int(index), float(latency), int(batch))
                )
                self._next_seq += 1

    def since(self, seq: int) -> tuple[ChunkPoint, ...]:
        """Points with a sequence number above ``seq``, oldest first."""
        with self._lock:
            if not self._points or self._points[-1].seq <= seq:
                return ()
            # New points are at the right end: walk back only over what is new.
            out = []
            for p in reversed(self._points):
                if p.seq <= seq:
                    break
                out.append(p)
        return tuple(reversed(out))

    @property
    def total(self) -> int:
        """Chunk points ever appended (kept or rolled off)."""
        return self._next_seq

    def latency_summary(self) -> tuple[float | None, float | None]:
        """``(p99, max)`` latency over the kept points (``(None, None)`` when empty)."""
        with self._lock:
            latencies = sorted(p.latency_s for p in self._points)
        if not latencies:
            return None, None
        return latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], latencies[-1]

    def __len__(self) -> int:
        return len(self._points)


@dataclass(frozen=True, slots=True)
class DashboardFrame:
    """Everything the page draws at one tick.

    Attributes
    ----------
    now_s : float
        Wall-clock time of the frame (``time.time()`` seconds).
    workers : tuple of str
        Worker addresses, in display order.
    sessions_by_worker : mapping
        ``{worker or UNPLACED: {status: count}}`` for the open sessions.
    state_bytes : mapping
        ``{tier: bytes}`` of session state per tier (``device``, ``host``, ``disk``).
    chunks : tuple of ChunkPoint
        Chunk points newer than the sequence number the page asked for.
    slo_s : float or None
        Per-chunk latency target (the line on the latency plot).
    migrations, offloads, chunks_total : int
        Counters since the server started.
    latency_p99_s, latency_max_s : float or None
        Over the recent chunks (those the chunk log keeps).
    """

    now_s: float
    workers: tuple[str, ...] = ()
    sessions_by_worker: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    state_bytes: Mapping[str, int] = field(default_factory=dict)
    chunks: tuple[ChunkPoint, ...] = ()
    slo_s: float | None = None
    migrations: int = 0
    offloads: int = 0
    chunks_total: int = 0
    latency_p99_s: float | None = None
    latency_max_s: float | None = None

    @property
    def n_sessions(self) -> int:
        """Open sessions."""
        return sum(sum(c.values()) for c in self.sessions_by_worker.values())

    def n_status(self, status: str) -> int:
        """Open sessions in ``status`` (a :class:`SessionStatus` value)."""
        return sum(c.get(status, 0) for c in self.sessions_by_worker.values())


def build_frame(
    now_s: float,
    workers: Iterable[str],
    records: Iterable[Any],
    *,
    chunks: tuple[ChunkPoint, ...] = (),
    slo_s: float | None = None,
    chunks_total: int | None = None,
    migrations: int | None = None,
    offloads: int = 0,
    latency_p99_s: float | None = None,
    latency_max_s: float | None = None,
) -> DashboardFrame:
    """A frame from the registry's session records (``framework.registry.SessionRecord``).

    Closed records are skipped. A record needs ``status`` (a :class:`SessionStatus`),
    ``worker``, ``tier``, ``state_bytes``, ``chunks`` and ``migrations``. Suspended
    state counts for its tier (``host`` or ``disk``); state of sessions on a device
    (active, idle, migrating) counts for ``device``. ``chunks_total`` and ``migrations``
    default to the sums over the (open) records.

    Examples
    --------
    >>> from types import SimpleNamespace as R
    >>> f = build_frame(0.0, ["w1"], [R(status=SessionStatus.ACTIVE, worker="w1", tier=None,
    ...     state_bytes=10, chunks=3, migrations=1)])
    >>> dict(f.sessions_by_worker["w1"]), f.state_bytes["device"], f.migrations
    ({'active': 1}, 10, 1)
    """
    workers = tuple(workers)
    by_worker: dict[str, dict[str, int]] = {w: {} for w in workers}
    tier_bytes = {t: 0 for t in TIERS}
    n_chunks = n_migrations = 0
    for r in records:
        status: SessionStatus = r.status
        if status is SessionStatus.CLOSED:
            continue
        n_chunks += r.chunks
        n_migrations += r.migrations
        where = r.worker if r.worker is not None else UNPLACED
        counts = by_worker.setdefault(where, {})
        counts[status.value] = counts.get(status.value, 0) + 1
        if status.on_device:
            tier_bytes["device"] += r.state_bytes
        elif status is SessionStatus.SUSPENDED:
            tier = r.tier if r.tier in tier_bytes else "host"
            tier_bytes[tier] += r.state_bytes
    return DashboardFrame(
        now_s=now_s,
        workers=workers,
        sessions_by_worker=by_worker,
        state_bytes=tier_bytes,
        chunks=chunks,
        slo_s=slo_s,
        migrations=n_migrations if migrations is None else migrations,
        offloads=offloads,
        chunks_total=n_chunks if chunks_total is None else chunks_total,
        latency_p99_s=latency_p99_s,
        latency_max_s=latency_max_s,
    )
