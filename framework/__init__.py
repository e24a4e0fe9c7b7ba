"""turboserve's public face: :class:`Server`, :class:`Session`, :class:`Chunk` and the errors.

>>> from framework import Server
>>> with Server.local(n_workers=2, model="tiny") as server:         # doctest: +SKIP
...     s = server.open_session("a red fox running through snow", seed=0)
...     for chunk in s.stream(3):
...         chunk.frames.shape, chunk.index, chunk.latency_s, chunk.worker
"""

from framework.errors import (
    CapacityExceeded,
    InvalidRequest,
    SessionClosed,
    SessionNotFound,
    TransferError,
    TurboserveError,
    UnknownModel,
    UnknownWorker,
)
from framework.server import Server
from framework.session import Session
from policies.types import SessionStatus
from workers.chunk import Chunk

__all__ = [
    "CapacityExceeded",
    "Chunk",
    "InvalidRequest",
    "Server",
    "Session",
    "SessionClosed",
    "SessionNotFound",
    "SessionStatus",
    "TransferError",
    "TurboserveError",
    "UnknownModel",
    "UnknownWorker",
]
