"""Chunks as Dask futures: the task that puts one chunk of a session into Dask's memory.

:meth:`framework.Session.submit` submits :func:`chunk_task` (:func:`fetch_chunk`, which
also hands the chunk to a client waiting in :func:`serve_result`) with the key
:func:`chunk_key` ``(session, index)`` on the session's worker. The task is a coroutine:
it runs on the worker's event loop, leaves the worker's task slots (Dask's long-running
state, as :func:`distributed.secede` does for a thread) as soon as another task wants
one (:class:`SlotKeeper`) so a chunk that takes a while never blocks other work, and
returns the chunk the session's actor hands it
(:meth:`workers.session_actor.SessionActor.take`). The chunk then stays in that worker's
memory until it is gathered: its bytes go worker -> client (or worker -> worker, as the
input of further tasks), never through the scheduler, and the future works with
``wait``, ``as_completed``, ``gather`` and ``client.submit`` like any other.

When the session is not on the task's worker (it moved, or the task was rescheduled
after its worker died), the task asks the scheduler where it is now
(``turboserve_locate``, which also wakes a suspended session and waits for a recovery),
repeats the request there and takes the chunk over worker-to-worker comms. Generation is
deterministic, so a chunk regenerated after a recovery is the same chunk.

The client's ``result()`` (:class:`framework.chunk_future.ChunkFuture`) asks this worker
for the chunk directly (:data:`RESULT_OP`, :func:`serve_result`): the answer leaves as
the task returns, before Dask's own report goes worker -> scheduler -> client and the
client asks the scheduler where the key is. Like Dask's ``get_data``, the worker hands a
key's data to whoever names the key.
"""

from __future__ import annotations

import asyncio
import re
import time
import weakref
from typing import Any

import dask
from dask.sizeof import sizeof
from dask.utils import parse_timedelta
from distributed import get_worker
from distributed.diagnostics.plugin import WorkerPlugin
from distributed.protocol import to_serialize
from distributed.worker_state_machine import SecedeEvent

from workers.access import TokenRPC, allowed, denied, digest
from workers.actor_rpc import BoundedRPC, call_actor
from workers.chunk import Chunk
from workers.errors import CapacityExceeded, ChunkTimeout, SessionClosed, SessionMoved, SessionNotFound
from workers.session_actor import SessionActor

#: Prefix of every chunk future's key (its group in the dashboard's task stream).
CHUNK_KEY_PREFIX = "turboserve-chunk"
#: Seconds one wait on the session's actor lasts before the task checks again.
TAKE_TIMEOUT_S = 5.0
#: Seconds the task keeps looking for a session that moved or whose worker died.
LOCATE_TIMEOUT_S = 120.0


@sizeof.register(Chunk)
def _sizeof_chunk(chunk: Chunk) -> int:
    # The scheduler's memory accounting sees the frames, not only the record.
    return int(chunk.frames.nbytes) + 256


#: The name of a chunk key (:func:`chunk_key` makes it, :func:`chunk_session` reads it): the
#: prefix, the submitting handle's token (8 hex digits), the session id.
CHUNK_NAME = re.compile(rf"{re.escape(CHUNK_KEY_PREFIX)}-(?P<token>[0-9a-f]{{8}})-(?P<session>.+)", re.DOTALL)


def chunk_key(session_id: str, token: str, index: int) -> tuple[str, int]:
    """The Dask key of chunk ``index`` of a session, as submitted by the handle ``token``.

    ``token`` (8 hex digits) comes before the session id: Dask groups keys by the words
    before the first one with a digit or of 8 hex digits (``dask.utils.key_split``), and
    that group is a label of the scheduler's ``/metrics``; so every chunk future is in
    the one group ``turboserve-chunk`` and no session id (a word, when the opener gave
    it) becomes a label.

    >>> from dask.utils import key_split
    >>> key_split(chunk_key("redfox", "0a1b2c3d", 4))
    'turboserve-chunk'
    """
    name = f"{CHUNK_KEY_PREFIX}-{token}-{session_id}"
    if not session_id or CHUNK_NAME.fullmatch(name) is None:
        raise ValueError(f"chunk key token {token!r} is not 8 lowercase hex digits (or the session id is empty)")
    return (name, int(index))


def chunk_session(key: Any) -> str | None:
    """The session id in a chunk future's key (:func:`chunk_key`), or ``None`` for any other key.

    >>> chunk_session(chunk_key("redfox", "0a1b2c3d", 4))
    'redfox'
    >>> chunk_session(("inc-0a1b2c3d", 4)) is None
    True
    """
    if not (isinstance(key, tuple) and len(key) == 2 and isinstance(key[0], str)):
        return None
    match = CHUNK_NAME.fullmatch(key[0])
    return None if match is None else match["session"]


class SlotKeeper(WorkerPlugin):
    """The chunk tasks of one worker that wait for their chunk in a task slot, until another task wants one.

    A chunk task only waits (for its session's actor), so it must never keep other work
    off its worker: it could leave the worker's task slots at once (Dask's long-running
    state, what :func:`distributed.secede` does for a thread). That costs a message to
    the scheduler and two transitions per chunk, on the worker's event loop, which holds
    the GIL while the engine thread steps the model: a chunk read one at a time (the
    closed loop of a player) pays it on every chunk. So a chunk task keeps its slot
    while nothing else waits for one, and all the chunk tasks holding one leave as soon
    as any task on the worker becomes ready to run (``ready``/``constrained``: another
    chunk future, the user's work on a chunk, a session actor being created here), or
    when a chunk task leaves the fast path (its session is elsewhere: :func:`fetch_chunk`).
    Added to its worker by the first chunk task there (:meth:`of`).
    """

    name = "turboserve-chunk-slots"

    def __init__(self, worker: Any) -> None:
        self._worker = weakref.ref(worker)
        self.holding: set[Any] = set()  # keys of chunk tasks executing in a slot
        self._armed = False

    @classmethod
    def of(cls, worker: Any) -> "SlotKeeper":
        """The worker's keeper (added to ``worker.plugins``, which Dask's state machine calls, on first use)."""
        keeper = worker.plugins.get(cls.name)
        if not isinstance(keeper, cls):
            keeper = worker.plugins[cls.name] = cls(worker)  # synchronous: no plugin_add round, no race
        return keeper

    def hold(self, key: Any) -> None:
        """Chunk task ``key`` keeps its slot, unless tasks wait for one already."""
        worker = self._worker()
        if worker.state.ready or worker.state.constrained:
            secede(worker, key)
        else:
            self.holding.add(key)

    def leave(self, key: Any) -> None:
        """Chunk task ``key`` leaves its slot now (it may wait long), or it ended."""
        if key in self.holding:
            self.holding.discard(key)
            secede(self._worker(), key)

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        # Called by the worker's state machine for each transition: leave right after it.
        if finish in ("ready", "constrained") and self.holding and not self._armed:
            self._armed = True
            asyncio.get_running_loop().call_soon(self._leave_all)

    def _leave_all(self) -> None:
        self._armed = False
        for key in list(self.holding):
            self.leave(key)


def secede(worker: Any, key: Any) -> None:
    """Task ``key`` leaves the worker's task slots (it only waits from now on)."""
    ts = worker.state.tasks.get(key)
    if ts is not None and ts.state == "executing":
        worker.handle_stimulus(SecedeEvent(key=key, compute_duration=0.0, stimulus_id=f"turboserve-secede-{time.time()}"))


async def fetch_chunk(session_id: str, index: int, worker_addr: str | None, actor_key: str | None,
                      key_name: str, access_token: str | None = None, chunk_timeout_s: float | None = None,
                      acked: int | None = None) -> Chunk:
    """The task of one chunk future: request chunk ``index`` and return it.

    ``worker_addr``/``actor_key`` say where the client last saw the session's actor;
    ``access_token`` is the session's (:mod:`workers.access`), checked by the actor and
    the scheduler. Raises :class:`SessionClosed` (the session was closed or is lost),
    :class:`~workers.errors.SessionAccessDenied` or the actor's typed refusal; a move
    on the way is followed. Raises :class:`~workers.errors.ChunkTimeout` when the
    session's actor did not make the chunk within ``chunk_timeout_s`` (the client's
    ``turboserve.client.chunk-timeout``; each actor found anew starts the wait again).
    ``acked``: its client had every chunk before this index when it submitted the task;
    every request acknowledges it, so an actor recovered from an older checkpoint drops
    the chunks it made again that the client has, and its unread window
    (``engine.max-unread-chunks``) lets it make this one (issue 13).
    """
    worker = get_worker()
    slots = SlotKeeper.of(worker)
    slots.hold((key_name, index))
    addr, key = worker_addr or worker.address, actor_key
    deadline = time.monotonic() + LOCATE_TIMEOUT_S
    if chunk_timeout_s is None:
        chunk_timeout_s = parse_timedelta(dask.config.get("turboserve.client.chunk-timeout", "300s"), default="s")
    since = time.monotonic()
    delay = 0.02
    while True:
        try:
            if key is None:
                raise SessionMoved(f"session {session_id!r} has no actor yet")
            wait = min(TAKE_TIMEOUT_S, max(0.05, chunk_timeout_s - (time.monotonic() - since)))
            actor = worker.state.actors.get(key) if addr == worker.address else None
            if isinstance(actor, SessionActor):
                if not actor.allows(access_token):
                    raise denied(session_id, access_token)
                await actor.request(index + 1, acked)
                chunk = await actor.take(index, wait)
            else:
                slots.leave((key_name, index))
                # Bounded: the actor's worker may have died (a future recomputed after its
                # session's worker was killed); Dask's own connect retries a refused
                # connection for 30 s before the search below could begin.
                rpc = TokenRPC(BoundedRPC(worker.rpc, addr), access_token)
                await call_actor(rpc, key, "request", index + 1, acked)
                chunk = await call_actor(rpc, key, "take", index, wait)
            if chunk is not None:
                return chunk
            if time.monotonic() - since >= chunk_timeout_s:
                raise ChunkTimeout.waiting(session_id, index, chunk_timeout_s, addr, retry="submit again")
            continue  # not made yet: ask again (the actor may have moved meanwhile)
        except (SessionMoved, KeyError, OSError) as exc:
            last: BaseException = exc
            slots.leave((key_name, index))  # a search (and a session actor made here) may follow
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise SessionClosed(f"session {session_id!r} is lost: no worker had it for "
                                f"{LOCATE_TIMEOUT_S:g} s (last: {last!r})")
        try:
            loc = await worker.scheduler.turboserve_locate(session_id=session_id, wake=True, timeout=remaining,
                                                         access_token=access_token)
        except (SessionClosed, SessionNotFound):
            raise
        except (TimeoutError, CapacityExceeded, OSError):
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)
            continue
        if loc.get("status") == "lost":
            raise SessionClosed(f"session {session_id!r} is lost: {loc.get('cause') or loc.get('why') or 'lost'}")
        if (loc["worker"], loc["actor_key"]) != (addr, key):
            since = time.monotonic()  # found on another actor: its wait starts now
        addr, key = loc["worker"], loc["actor_key"]
        if key is None:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)


# ------------------------------------------------------------------ the result, straight to its client

#: Worker RPC op that hands a chunk future's result to a client waiting for it (:func:`serve_result`).
RESULT_OP = "turboserve_chunk_result"

#: Per worker: ``key -> [asyncio.Future, ...]`` of the clients waiting in :func:`serve_result`.
_WAITERS: weakref.WeakKeyDictionary[Any, dict[Any, list[asyncio.Future]]] = weakref.WeakKeyDictionary()
_PENDING = object()  # a waiter's result when nothing came in time
#: Per worker: ``key -> digest`` of the access token its chunk task ran with (only a match is served).
_OWNERS: weakref.WeakKeyDictionary[Any, dict[Any, str]] = weakref.WeakKeyDictionary()


def _own(worker: Any, key: Any, access_token: str | None) -> None:
    """Record whose chunk ``key`` is (forgetting keys this worker no longer holds or runs)."""
    owners = _OWNERS.setdefault(worker, {})
    if len(owners) > 64:
        for old in [k for k in owners if k not in worker.data and k not in worker.state.tasks]:
            del owners[old]
    owners[key] = digest(access_token) if access_token else ""


def _granted(worker: Any, key: Any, access_token: str | None) -> bool:
    """Whether ``access_token`` is the one chunk ``key``'s task ran with (its session's)."""
    owner = _OWNERS.get(worker, {}).get(key)
    return owner is not None and (not owner or allowed((owner,), access_token))


async def chunk_task(session_id: str, index: int, worker_addr: str | None, actor_key: str | None,
                     key_name: str, *args: Any, **kwargs: Any) -> Chunk:
    """The task of one chunk future: :func:`fetch_chunk`, its chunk also handed to waiting clients.

    A client that called ``result()`` on the future waits in :func:`serve_result` on
    this worker; it gets the chunk as soon as the task has it, without the two round
    trips through the scheduler (task finished, then ``who_has``) that Dask's own
    ``result()`` makes. A failure (or a cancellation) sends those clients back to
    Dask's path, which raises the task's error.
    """
    worker = get_worker()
    key = (key_name, int(index))
    _own(worker, key, kwargs.get("access_token"))
    chunk: Chunk | None = None
    try:
        chunk = await fetch_chunk(session_id, index, worker_addr, actor_key, key_name, *args, **kwargs)
    finally:
        SlotKeeper.of(worker).holding.discard(key)
        waiting = [w for w in _WAITERS.get(worker, {}).pop(key, ()) if not w.done()]
        for waiter in waiting:
            waiter.set_result(chunk)
    if waiting:
        await asyncio.sleep(0)  # the waiting clients' answers leave before Dask's bookkeeping of the task
    return chunk


async def serve_result(worker: Any, key: Any, timeout: float, access_token: str | None = None) -> dict[str, Any]:
    """Worker handler of :data:`RESULT_OP`: the result of chunk future ``key`` once this worker has it.

    Only for the caller with the session's ``access_token`` (the one the key's task ran
    with, :mod:`workers.access`); anyone else gets ``{"status": "denied"}`` and no data.

    Answers ``{"status": "OK", "result": chunk}`` as soon as the key's task on this
    worker returns (at once when its data is here already), ``{"status": "elsewhere"}``
    when the task failed (the client then follows Dask's own path, which raises the
    task's error), or ``{"status": "pending"}`` when nothing came within ``timeout`` s
    (the task is still waiting for its chunk, or runs on another worker: the client asks
    again unless the scheduler has reported the key meanwhile).
    """
    key = (str(key[0]), int(key[1]))
    if key in worker.data:
        if not _granted(worker, key, access_token):
            return {"status": "denied"}
        return {"status": "OK", "result": to_serialize(worker.data[key])}
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    waiting = _WAITERS.setdefault(worker, {}).setdefault(key, [])
    waiting.append(waiter)
    # A plain future and a timer, not wait_for: the answer leaves one loop turn after the task returns.
    timer = loop.call_later(timeout, lambda: waiter.done() or waiter.set_result(_PENDING))
    try:
        chunk = await waiter
    finally:
        timer.cancel()
        if waiter in waiting:
            waiting.remove(waiter)
        if not waiting and _WAITERS.get(worker, {}).get(key) is waiting:
            del _WAITERS[worker][key]
    if chunk is _PENDING:
        return {"status": "pending"}
    if chunk is None:
        return {"status": "elsewhere"}
    if not _granted(worker, key, access_token):
        return {"status": "denied"}
    return {"status": "OK", "result": to_serialize(chunk)}
