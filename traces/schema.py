"""The trace schema: column names, event kinds, typed records and the trace error.

A trace is one row per event, sorted by ``time_s`` (see ``DESIGN.md``, "Trace schema"):

=================  ======  =====================================================
column             type    meaning
=================  ======  =====================================================
``time_s``         float   seconds from trace start
``session_id``     string  unique per session
``event``          string  ``open``, ``active``, ``idle``, ``close``
``client_id``      string  the client (tenant) the session belongs to
``model``          string  model preset name (``open`` rows; empty elsewhere)
``chunk_frames``   int     frames per chunk (``open`` rows; empty elsewhere)
``height``         int     frame height in pixels (``open`` rows)
``width``          int     frame width in pixels (``open`` rows)
``fps``            int     playback frames per second (``open`` rows)
=================  ======  =====================================================

A session starts with ``open`` (which implies active), alternates ``idle``/``active``,
and ends with ``close``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

TIME = "time_s"
SESSION = "session_id"
EVENT = "event"
CLIENT = "client_id"
MODEL = "model"
SHAPE_COLUMNS: tuple[str, ...] = ("chunk_frames", "height", "width", "fps")
"""Integer columns that describe a session's chunks; set on ``open`` rows only."""

COLUMNS: tuple[str, ...] = (TIME, SESSION, EVENT, CLIENT, MODEL, *SHAPE_COLUMNS)
"""All trace columns, in file order."""


class TraceError(ValueError):
    """A trace violates the schema; the message names the bad row and what is wrong."""


class EventKind(str, enum.Enum):
    """The kind of a trace event (the ``event`` column)."""

    OPEN = "open"
    ACTIVE = "active"
    IDLE = "idle"
    CLOSE = "close"

    @property
    def makes_active(self) -> bool:
        """True for events after which the session requests chunks (``open``, ``active``)."""
        return self in (EventKind.OPEN, EventKind.ACTIVE)


EVENT_NAMES: tuple[str, ...] = tuple(k.value for k in EventKind)


@dataclass(frozen=True, slots=True)
class ChunkShape:
    """The geometry of a session's chunks, as given on its ``open`` row.

    Examples
    --------
    >>> ChunkShape(12, 64, 64, 16).seconds
    0.75
    """

    chunk_frames: int
    height: int
    width: int
    fps: int

    @property
    def seconds(self) -> float:
        """Playback time of one chunk in seconds (the natural per-chunk deadline)."""
        return self.chunk_frames / self.fps


@dataclass(frozen=True, slots=True)
class TraceEvent:
    """One row of a trace as a typed record (see :func:`traces.io.iter_events`).

    ``model`` and ``shape`` are set on ``open`` events and ``None`` elsewhere.
    """

    time_s: float
    session_id: str
    event: EventKind
    client_id: str
    model: str | None = None
    shape: ChunkShape | None = None


@dataclass(frozen=True, slots=True)
class SessionSummary:
    """One session of a trace: when it lived and when it was active.

    ``active_periods`` are ``(start_s, end_s)`` pairs in time order; their total is
    ``active_s``.
    """

    session_id: str
    client_id: str
    model: str
    shape: ChunkShape
    open_s: float
    close_s: float
    active_periods: tuple[tuple[float, float], ...]

    @property
    def duration_s(self) -> float:
        """Time from ``open`` to ``close``."""
        return self.close_s - self.open_s

    @property
    def active_s(self) -> float:
        """Total time spent active."""
        return sum(end - start for start, end in self.active_periods)
