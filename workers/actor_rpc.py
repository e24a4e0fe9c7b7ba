"""Calls to a session actor's methods between Dask peers (client, scheduler, worker).

The caller's half of the worker RPC op :data:`CALL_OP`: :func:`call_actor` sends
``actor.method(*args, **kwargs)`` to the worker that holds the actor, and
:class:`BoundedRPC` is a worker RPC handle whose connection gives up after
:data:`ACTOR_CONNECT_TIMEOUT_S`; :func:`unwrap` gives the object a reply carries where
the caller's pool did not deserialize it (the scheduler's). The worker's half (the op's
handler, which finds the actor and checks the caller's access token) is
:func:`workers.session_actor.handle_call`. Used without the actor itself by the client's
session handle, the scheduler plugin's session mechanisms and parallel groups, and the
chunk futures; this module imports no actor, so any of them may import it.
"""

from __future__ import annotations

from typing import Any

from distributed.core import send_recv
from distributed.protocol import deserialize, to_serialize
from distributed.protocol.serialize import Serialized

from workers.errors import SessionMoved

#: Worker RPC op that runs a session actor's method (handled by :func:`workers.session_actor.handle_call`).
CALL_OP = "turboserve_call"
#: Seconds a call to a session actor's worker (from the scheduler or another worker)
#: waits for a connection before it fails (see :class:`BoundedRPC`).
ACTOR_CONNECT_TIMEOUT_S = 5.0


class BoundedRPC:
    """Like ``pool(addr)`` (a worker's RPC handle), but connecting gives up after ``timeout`` s.

    Dask retries a refused connection until ``distributed.comm.timeouts.connect``
    (30 s): a call to the worker of a session actor that just died waited that long
    before it failed (a migration's target pulling from a source that was killed, a
    release sent to a dead source). The failure is the ``OSError`` Dask raises; callers
    turn it into a :class:`~workers.errors.TransferError`.

    >>> rpc = BoundedRPC(worker.rpc, "tcp://10.0.0.2:8786")      # doctest: +SKIP
    >>> await call_actor(rpc, key, "export")                       # doctest: +SKIP
    """

    __slots__ = ("addr", "pool", "timeout")

    def __init__(self, pool: Any, addr: str, timeout: float = ACTOR_CONNECT_TIMEOUT_S) -> None:
        self.pool, self.addr, self.timeout = pool, addr, timeout

    def __getattr__(self, op: str):
        async def call(**kwargs: Any) -> Any:
            comm = await self.pool.connect(self.addr, timeout=self.timeout)
            try:
                return await send_recv(comm=comm, op=op, **kwargs)
            finally:
                self.pool.reuse(self.addr, comm)

        return call


async def call_actor(rpc: Any, key: str, method: str, *args: Any, **kwargs: Any) -> Any:
    """Call ``method`` of the session actor ``key`` through ``rpc`` (a worker's RPC handle).

    Used instead of :class:`distributed.Actor` handles because those take a reference on
    the actor's key in the calling client, which would keep a migrated-away actor
    (and therefore its worker) alive. Raises :class:`SessionMoved` when the worker no
    longer has that actor.
    """
    resp = await getattr(rpc, CALL_OP)(
        key=key,
        method=method,
        args=[to_serialize(a) for a in args],
        kwargs={k: to_serialize(v) for k, v in kwargs.items()},
    )
    status = resp["status"]
    if status == "OK":
        return unwrap(resp["result"])
    if status == "missing":
        raise SessionMoved(f"no session actor {key!r} on {resp['worker']}: it moved, was suspended or closed")
    raise unwrap(resp["exception"])


def unwrap(value: Any) -> Any:
    """The object a worker op's reply carries (``to_serialize``-d by the worker), whoever asked.

    The scheduler's RPC pool does not deserialize (``deserialize=False``): there the value
    is still ``Serialized``. Clients and workers deserialize on receipt. Used for the
    replies of :data:`CALL_OP` and of the parallel groups' op
    (:class:`framework.parallelism.ParallelGroups`).
    """
    if isinstance(value, Serialized):
        return deserialize(value.header, value.frames)
    return value
