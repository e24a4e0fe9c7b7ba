"""A call to a session actor's worker that is gone fails within a bounded connect (issue 13,
"long recovery gaps"): Dask retries a refused connection until
``distributed.comm.timeouts.connect`` (30 s), so a migration target pulling the state from
a source that was just killed used to wait that long before its ``TransferError``.

Live: a new session actor is asked to ``prepare`` from a peer at an address where
nothing listens (a port taken and closed again); it must fail with a ``TransferError``
within :data:`workers.actor_rpc.ACTOR_CONNECT_TIMEOUT_S` plus slack, far below 30 s.
"""

from __future__ import annotations

import socket
import time

import pytest

from framework import Server
from workers.actor_rpc import ACTOR_CONNECT_TIMEOUT_S, call_actor
from workers.errors import TransferError
from workers.session_actor import SessionActor

pytestmark = pytest.mark.slow


def _dead_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"tcp://127.0.0.1:{port}"  # closed again: connecting is refused


def test_pulling_state_from_a_dead_peer_fails_within_the_connect_bound(tmp_path):
    with Server.local(n_workers=1, model="tiny", store=str(tmp_path), dashboard_address=None) as server:
        client = server.client
        (worker,) = server.workers()
        fut = client.submit(SessionActor, "connect-bound", "tiny", "a dead peer", 0, 64, 64,
                            actor=True, workers=[worker], key="turboserve-session-connect-bound-1", pure=False)
        fut.result(timeout=60)
        source = {"kind": "peer", "address": _dead_address(), "key": "turboserve-session-gone-1", "transport": "host"}

        async def prepare():
            return await call_actor(client.rpc(worker), fut.key, "prepare", source)

        t0 = time.monotonic()
        with pytest.raises(TransferError, match="could not pull"):
            client.sync(prepare)
        took = time.monotonic() - t0
        assert took < ACTOR_CONNECT_TIMEOUT_S + 5.0, f"the pull from a dead peer took {took:.1f} s (Dask's 30 s connect)"
