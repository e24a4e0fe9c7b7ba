"""The typed errors of the public API (all subclass :class:`TurboserveError`).

They are defined on the ``workers`` floor (session actors raise some of them inside a
Dask worker and Dask pickles them back) and re-exported here for users.

=======================  ==========================================================
error                    raised when
=======================  ==========================================================
``InvalidRequest``       an argument is out of range: chunk counts, tiers, sizes
``UnknownModel``         the model preset does not exist
``SessionNotFound``      no session has that id
``SessionClosed``        the session was closed
``CapacityExceeded``     admission refused a new session (``on-full: refuse``)
``ModelNotServed``       no worker serves the session's model (a ``CapacityExceeded``;
                         see :mod:`framework.model_pools`)
``InsufficientMemory``   the session's model and state do not fit a worker's memory
                         (a ``CapacityExceeded``; see :func:`framework.limits.memory_fit`)
``UnknownWorker``        the worker address is not part of the cluster
``TransferError``        moving a session's state failed (the session stays put)
``ChunkTimeout``         no chunk came within ``turboserve.client.chunk-timeout``:
                         the session's engine neither made it nor failed (the
                         session stays open)
``SessionAccessDenied``  a call on a session carried no access token, or another
                         session's: only its opener (or whoever it handed the token
                         to) may read, acknowledge, steer or close it
``SessionLost``          the session cannot be served any more (a ``SessionClosed``
                         the client did not ask for); ``cause`` says why
``ParallelismError``     ``set_parallelism`` refused: a degree that does not divide
                         the workers or the model's heads (``BadDegree``), a worker
                         in another group (``WorkerInGroup``), a worker holding
                         sessions that would have to follow (``WorkerBusy``)
=======================  ==========================================================

``SessionLost`` is defined here, not on the ``workers`` floor: the client's
:class:`~framework.session.Session` raises it (and the scheduler plugin may), never a
worker. Its arguments are plain strings, so it pickles across Dask's RPC as is.
"""

from workers.errors import (
    CapacityExceeded,
    ChunkTimeout,
    InvalidRequest,
    SessionAccessDenied,
    SessionClosed,
    SessionMoved,
    SessionNotFound,
    TransferError,
    TurboserveError,
    UnknownModel,
    UnknownWorker,
)


class SessionLost(SessionClosed):
    """The session cannot be served any more, and its client did not close it.

    Raised by a stream, a chunk future or a control call of a
    :class:`~framework.session.Session` when the session was closed by the server or
    another client, when the engine could not run it, or when it could not be found
    again within ``RELOCATE_TIMEOUT_S`` (its worker and the scheduler unreachable). A
    subclass of :class:`SessionClosed`: the session is closed for good; open a new one.

    Parameters
    ----------
    message : str
        What happened, naming the session.
    session_id : str, optional
    cause : str, optional
        The underlying failure, e.g. ``"CommClosedError('...')"`` or the registry's reason.

    Examples
    --------
    >>> err = SessionLost("session 's1' is lost", session_id="s1", cause="worker died")
    >>> str(err), err.cause
    ("session 's1' is lost", 'worker died')
    """

    def __init__(self, message: str, session_id: str | None = None, cause: str | None = None) -> None:
        super().__init__(message, session_id, cause)
        self.session_id, self.cause = session_id, cause

    def __str__(self) -> str:
        return str(self.args[0])


class ModelNotServed(CapacityExceeded):
    """No worker of the cluster serves the session's model (or the named worker does not).

    Raised at ``open`` by the scheduler plugin, whatever ``admission.on-full`` says; the
    message names the models served and the worker resource that would serve this one
    (:mod:`framework.model_pools`). A plain message, so it pickles across Dask's RPC.
    """


class InsufficientMemory(CapacityExceeded):
    """The session's model and state do not fit the worker's memory (or any worker's).

    Raised at ``open`` (and when a session is placed on a named worker) before anything
    is allocated; the message says what was needed (weights, state, activations), what
    was free under the worker's memory limit, and what to do
    (:func:`framework.limits.memory_fit`). A plain message, so it pickles across Dask's RPC.
    """


class ParallelismError(InvalidRequest):
    """``server.set_parallelism`` refused the request; nothing changed (see the subclasses)."""


class BadDegree(ParallelismError):
    """The degree does not divide the named workers, or the model's attention heads."""


class WorkerInGroup(ParallelismError):
    """A named worker belongs to a parallel group the request does not take whole: split it first."""


class WorkerBusy(ParallelismError):
    """A worker that would follow in a group holds sessions: drain it first (followers serve none alone)."""


__all__ = [
    "BadDegree",
    "CapacityExceeded",
    "ChunkTimeout",
    "InsufficientMemory",
    "InvalidRequest",
    "ModelNotServed",
    "ParallelismError",
    "SessionAccessDenied",
    "SessionClosed",
    "SessionLost",
    "SessionMoved",
    "SessionNotFound",
    "TransferError",
    "TurboserveError",
    "UnknownModel",
    "UnknownWorker",
    "WorkerBusy",
    "WorkerInGroup",
]
