"""Typed errors raised by the serving runtime (re-exported by :mod:`framework.errors`).

They live on the ``workers`` floor because session actors raise some of them inside a
Dask worker; Dask pickles the exception back to the caller, who gets the same type.
Every message names the bad value and says what to do instead.
"""

from __future__ import annotations


class TurboserveError(Exception):
    """Base of every error the serving runtime raises on purpose."""


class InvalidRequest(TurboserveError, ValueError):
    """A request whose arguments are out of range (chunk counts, tiers, resolutions)."""


class UnknownModel(TurboserveError, ValueError):
    """A model preset name that ``kernels.presets`` does not know."""


class SessionNotFound(TurboserveError, KeyError):
    """No session with this id exists (never opened, or already forgotten)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else "session not found"


class SessionClosed(TurboserveError):
    """The session was closed; open a new one to go on."""


class SessionMoved(TurboserveError):
    """Internal: the session actor gave its state away; ask the registry where it is now."""


class CapacityExceeded(TurboserveError):
    """Admission refused a new session: every worker holds its maximum of sessions."""


class UnknownWorker(TurboserveError, ValueError):
    """A worker address that is not (or no longer) part of the cluster."""


class TransferError(TurboserveError):
    """Moving a session's state between workers or tiers failed.

    The one transfer error of the project: the runtime raises it when a migration
    fails, and the point-to-point transport (:mod:`workers.p2p`) when the peer never
    joined, timed out, or spoke another protocol.
    """


class ChunkTimeout(TurboserveError):
    """No chunk of a session arrived within ``turboserve.client.chunk-timeout``.

    The session's engine neither made the chunk asked for nor failed (a hung step or
    device, an engine stopped, or one overloaded far past its SLO). The session stays
    open; the message says where it was and what to do (read again to wait longer,
    migrate it, close it, or raise the bound). Not a ``TimeoutError``: that is an
    ``OSError``, which retry loops take for a lost connection.
    """

    @classmethod
    def waiting(cls, session_id: str, index: int, bound_s: float, worker: str | None, *,
                unanswered_s: float | None = None, retry: str = "read again") -> "ChunkTimeout":
        """The error of a wait for chunk ``index`` that saw no chunk for ``bound_s`` s from ``worker``.

        ``unanswered_s``: the worker did not even answer within that many seconds more (a
        frozen or overloaded process); ``None``: it answered, its engine made nothing.
        ``retry``: what the caller does to wait longer (``"read again"``, ``"submit again"``).

        >>> msg = str(ChunkTimeout.waiting("redfox", 4, 300, "tcp://10.0.0.2:4000", retry="submit again"))
        >>> "chunk 4 was asked of worker tcp://10.0.0.2:4000" in msg and "still open: submit again" in msg
        True
        """
        what = ("the session's engine there neither made it nor failed (a hung step or device, an engine "
                "stopped or far behind its SLO)" if unanswered_s is None else
                f"that worker did not answer a poll within {unanswered_s:g} s more (a frozen or overloaded process)")
        return cls(
            f"no chunk of session {session_id!r} arrived for {bound_s:g} s (turboserve.client.chunk-timeout) "
            f"while chunk {index} was asked of worker {worker}: {what}. The session is still open: {retry} to "
            "wait longer, move it (session.migrate(another_worker)) or close it; raise "
            "turboserve.client.chunk-timeout if waits this long are expected (a model loaded on first use)"
        )


class SessionAccessDenied(TurboserveError):
    """A call on a session without the access token its opener got (:mod:`workers.access`).

    The message names the session and says how to hand it over on purpose (pass the
    token: ``server.session(id, access_token=session.access_token)``).
    """
