"""The typed errors of the public API (all subclass :class:`TurboserveError`).

They are defined on the ``workers`` floor (session actors raise some of them inside a
Dask worker and Dask pickles them back) and re-exported here for users.

=====================  ==========================================================
error                  raised when
=====================  ==========================================================
``InvalidRequest``     an argument is out of range: chunk counts, tiers, sizes
``UnknownModel``       the model preset does not exist
``SessionNotFound``    no session has that id
``SessionClosed``      the session was closed
``CapacityExceeded``   admission refused a new session (``on-full: refuse``)
``UnknownWorker``      the worker address is not part of the cluster
``TransferError``      moving a session's state failed (the session stays put)
=====================  ==========================================================
"""

from workers.errors import (
    CapacityExceeded,
    InvalidRequest,
    SessionClosed,
    SessionMoved,
    SessionNotFound,
    TransferError,
    TurboserveError,
    UnknownModel,
    UnknownWorker,
)

__all__ = [
    "CapacityExceeded",
    "InvalidRequest",
    "SessionClosed",
    "SessionMoved",
    "SessionNotFound",
    "TransferError",
    "TurboserveError",
    "UnknownModel",
    "UnknownWorker",
]
