"""turboserve's public face: :class:`Server`, :class:`Session`, :class:`Chunk` and the errors.

>>> from framework import Server
>>> with Server.local(n_workers=2, model="tiny") as server:         # doctest: +SKIP
...     s = server.open_session("a red fox running through snow", seed=0)
...     for chunk in s.stream(3):
...         chunk.frames.shape, chunk.index, chunk.latency_s, chunk.worker
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from traces.lazy import lazy_exports

# Imported on first use (PEP 562): `framework.config` and the CLI load in milliseconds,
# without torch, diffusers and distributed, which `framework.server` brings in.
_EXPORTS = {
    "CapacityExceeded": "framework.errors",
    "InvalidRequest": "framework.errors",
    "SessionClosed": "framework.errors",
    "SessionNotFound": "framework.errors",
    "TransferError": "framework.errors",
    "TurboserveError": "framework.errors",
    "UnknownModel": "framework.errors",
    "UnknownWorker": "framework.errors",
    "Server": "framework.server",
    "Session": "framework.session",
    "SessionStatus": "policies.types",
    "Chunk": "workers.chunk",
}

if TYPE_CHECKING:
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


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


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
