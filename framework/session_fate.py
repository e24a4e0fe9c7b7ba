"""Whether a client's session handle may still be used, and what it saw happen.

A :class:`~framework.session.Session` and its read path (:mod:`framework.chunk_channel`)
share one :class:`SessionFate`: the handle is open, closed (by this handle or, as an
actor reported, by someone else) or lost (:class:`~framework.errors.SessionLost`, with
its cause: every later call raises the same error), and the events this client saw
itself (``source: "client"``) beside those read from actors and the registry.

It also says what an error from the session's actor means (:meth:`SessionFate.actor_failure`):
relocate (the actor moved, was suspended, or its worker died), raise a refusal of
this request, or lose the session.

Examples
--------
>>> fate = SessionFate("s1")
>>> fate.actor_failure(OSError("connection closed")) is None     # its worker is gone: relocate
True
>>> lost = fate.lose("its worker could not run it", "CUDA error")
>>> fate.actor_failure(ValueError("boom")) is lost                # lost once, the same error after
True
"""

from __future__ import annotations

import logging
import time
from typing import Any

from framework.errors import SessionLost
from workers.errors import SessionClosed, SessionMoved, SessionNotFound, TurboserveError

logger = logging.getLogger(__name__)


class SessionFate:
    """Open, closed or lost, and the events one session handle saw (see the module docstring)."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.lost: SessionLost | None = None
        self.closed = False
        self.closing = False  # this handle asked to close (a SessionClosed is then expected)
        self.events: list[dict[str, Any]] = []  # read from actors, plus this client's own

    def note(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Record an event seen by this client (``source: "client"``)."""
        event = {"kind": kind, "t": time.time(), "worker": None, "source": "client", **fields}
        self.events.append(event)
        return event

    def merge(self, events: list[dict[str, Any]]) -> None:
        """Add events read from an actor or the registry, each once (by its ``id``)."""
        seen = {e.get("id") for e in self.events if e.get("id")}
        self.events.extend(e for e in events if e.get("id") not in seen)

    def lose(self, what: str, cause: BaseException | str | None) -> SessionLost:
        """Mark the session lost (every later call raises the same error) and return the error."""
        if self.lost is None:
            why = cause if isinstance(cause, str) or cause is None else f"{type(cause).__name__}: {cause}"
            self.lost = SessionLost(f"session {self.session_id!r} is lost: {what}" + (f" ({why})" if why else ""),
                                    self.session_id, why)
            self.note("lost", why=str(self.lost))
            logger.warning("%s", self.lost)
        return self.lost

    def scheduler_failure(self, exc: SessionClosed | SessionNotFound) -> BaseException:
        """What the scheduler's ``SessionClosed`` or ``SessionNotFound`` means for this handle:
        the error itself while this handle closes the session, the session lost otherwise."""
        if isinstance(exc, SessionNotFound):
            return self.lose("the scheduler no longer knows it", exc)
        if self.closing:
            return exc
        return self.lose("it was closed by the server or another client", exc)

    def actor_failure(self, exc: BaseException) -> BaseException | None:
        """What an error from the session's actor means: None (relocate) or the error to raise."""
        if isinstance(exc, (SessionMoved, KeyError, OSError)) or pool_closed(exc):
            return None
        if isinstance(exc, SessionClosed):
            if self.closing or self.closed:
                return exc
            return self.lose("it was closed by the server or another client", exc)
        if isinstance(exc, TurboserveError):
            return exc  # a refusal of this request (InvalidRequest, ...): the session is fine
        return self.lose("its worker could not run it", exc)

    def check_usable(self) -> None:
        """Raise the session's :class:`SessionLost`, or ``SessionClosed`` once closed."""
        if self.lost is not None:
            raise self.lost
        if self.closed:
            raise SessionClosed(f"session {self.session_id!r} is closed; open a new one")


def pool_closed(exc: BaseException) -> bool:
    """Whether ``exc`` is Dask's bare ``RuntimeError`` of a closed connection pool.

    ``ConnectionPool.connect`` raises it when the pool of the process making the call
    was closed: the session's worker shutting down (an autoscaler or the cluster
    closing it) while it served the call. That worker is going away, not the session:
    relocate, as for a worker that died (issue 13: the chaos suite lost a session to it).
    """
    return type(exc) is RuntimeError and "ConnectionPool is closed" in str(exc)
