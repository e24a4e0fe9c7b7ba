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


class SessionAccessDenied(TurboserveError):
    """A call on a session without the access token its opener got (:mod:`workers.access`).

    The message names the session and says how to hand it over on purpose (pass the
    token: ``server.session(id, access_token=session.access_token)``).
    """
