"""A session handle's read path: where its actor is, and the calls that move chunks worker -> client.

:class:`ChunkChannel` holds the session's location (its worker and actor key, as last
seen), its :class:`~framework.read_cursor.ReadCursor` and the worker-direct calls on the
actor (``direct_to_workers``): a request raises the actor's high-water mark, a
long-poll brings the chunks that are ready and acknowledges those before, and a
stream's end acknowledges what arrived. A chunk future
(:meth:`ChunkChannel.chunk_future`) reads through the same cursor, so every index goes
to exactly one reader.

When the actor is gone (migrated, suspended, its worker died), the channel asks the
scheduler where the session is now (:meth:`SessionHandlers.locate
<framework.session_handlers.SessionHandlers.locate>`, which waits for a move or a
recovery to finish and wakes a suspended session), repeats the request with what was
read and goes on. Chunk indices are the stream's identity: an index already received is
never handed out again, so a recovery that regenerates chunks from an older checkpoint
shows no repeat, and the ack-based outbox shows no gap.

No wait is unbounded: a connection gives up after :data:`CONNECT_TIMEOUT_S`, a call to
the actor after its own wait plus :data:`RPC_GRACE_S`, a relocation after
:data:`RELOCATE_TIMEOUT_S` (then :class:`~framework.errors.SessionLost`), and a wait for
a chunk raises :class:`~workers.errors.ChunkTimeout` once no chunk arrived for
``turboserve.client.chunk-timeout``. What an actor's error means is the
:class:`~framework.session_fate.SessionFate`'s to say; the control calls (pause,
suspend, migrate, close) are :class:`~framework.session.Session`'s, which tells the
channel where they left the session (:meth:`ChunkChannel.moved_to`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

from distributed.actor import ProxyRPC

from framework.chunk_future import ChunkFuture
from framework.errors import SessionLost
from framework.read_cursor import ReadCursor
from framework.session_fate import SessionFate
from workers.access import TokenRPC
from workers.actor_rpc import BoundedRPC, call_actor
from workers.chunk import Chunk
from workers.chunk_futures import chunk_key, chunk_task
from workers.errors import (
    CapacityExceeded,
    ChunkTimeout,
    InvalidRequest,
    SessionClosed,
    SessionMoved,
    SessionNotFound,
    TransferError,
)

logger = logging.getLogger(__name__)

#: Most chunks one stream() or submit() round may ask for (a guard against typos).
MAX_CHUNKS_PER_CALL = 100_000
#: Seconds one long-poll waits on the worker before coming back empty.
POLL_TIMEOUT_S = 5.0
#: Seconds to wait for a connection to the session's worker before asking where it went.
CONNECT_TIMEOUT_S = 1.0
#: Seconds to keep looking for a session that moved or whose worker died (then SessionLost).
RELOCATE_TIMEOUT_S = 120.0
#: Seconds a call to the session's actor may take beyond its own wait before its worker
#: counts as not answering (a frozen process keeps its connections open and never replies).
RPC_GRACE_S = 5.0


class ChunkChannel:
    """The read path of one session handle (see the module docstring).

    Parameters
    ----------
    client
        The handle's ``distributed.Client``.
    session_id, access_token
        The session and the capability every call carries (:mod:`workers.access`).
    worker, actor_key
        Where the session's actor is, as the scheduler last said (``actor_key`` None:
        no actor now, e.g. suspended to disk; the first call relocates).
    fate
        The handle's :class:`SessionFate`, shared with its :class:`~framework.session.Session`.
    chunk_timeout_s
        Longest wait for a chunk while none arrives.
    """

    def __init__(self, client: Any, session_id: str, access_token: str | None, worker: str,
                 actor_key: str | None, fate: SessionFate, chunk_timeout_s: float) -> None:
        self.client = client
        self.session_id = session_id
        self.access = access_token
        self.worker = worker
        self.key = actor_key
        self.fate = fate
        self.chunk_timeout_s = chunk_timeout_s
        self.cursor = ReadCursor(0)  # indices asked for, received and read (attach: the count made)
        self.token = uuid.uuid4().hex[:8]  # this handle's part of its chunk futures' keys
        self._poll_lock: asyncio.Lock | None = None

    # ------------------------------------------------------------ where the actor is

    @property
    def scheduler(self) -> Any:
        """The scheduler's RPC handle, sending the session's access token with every call."""
        return TokenRPC(self.client.scheduler, self.access)

    def rpc_to(self, worker: str) -> Any:
        """An RPC handle on ``worker`` with the session's token (direct, connection bounded)."""
        if self.client.direct_to_workers:
            return TokenRPC(BoundedRPC(self.client.rpc, worker, CONNECT_TIMEOUT_S), self.access)
        return TokenRPC(ProxyRPC(self.client.scheduler, worker), self.access)

    def rpc(self) -> Any:
        """An RPC handle on the session's worker, as last seen."""
        return self.rpc_to(self.worker)

    def moved_to(self, worker: str, actor_key: str | None) -> None:
        """Where a control call (or a relocation) left the session."""
        self.worker, self.key = worker, actor_key

    async def attach(self, chunks_in_record: int) -> None:
        """Go on from the session's next chunk (a handle on a session opened elsewhere).

        The actor's count when it has one; the registry's otherwise (suspended to disk:
        exact, no chunk is in flight).
        """
        if self.key is not None:
            actor = await call_actor(self.rpc(), self.key, "info")
            self.cursor = ReadCursor(actor["chunk_index"])
        else:
            self.cursor = ReadCursor(chunks_in_record)

    async def relocate(self, cause: BaseException | None = None) -> None:
        """Find the session's actor again and repeat the outstanding request.

        Raises :class:`SessionLost` when the registry says the session is closed or
        gone, or when no actor answers within ``RELOCATE_TIMEOUT_S`` (the scheduler
        unreachable included).
        """
        fate = self.fate
        deadline = time.monotonic() + RELOCATE_TIMEOUT_S
        delay = 0.02
        last: BaseException | None = cause
        scheduler = self.scheduler
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise fate.lose(f"no worker or scheduler answered for {RELOCATE_TIMEOUT_S:g} s", last)
            try:
                loc = await asyncio.wait_for(
                    scheduler.turboserve_locate(session_id=self.session_id, wake=True, timeout=remaining),
                    remaining + 5.0,
                )
            except (SessionClosed, SessionNotFound) as exc:
                failure = fate.scheduler_failure(exc)
                if failure is exc:
                    raise
                raise failure from exc
            except (TimeoutError, CapacityExceeded, TransferError, OSError) as exc:
                # No worker for it yet, the scheduler unreachable, or the worker its wake-up
                # resume went to died meanwhile (the session stays suspended): try again.
                last = exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)
                continue
            if loc.get("status") == "lost":
                raise fate.lose("the scheduler gave it up", loc.get("cause") or loc.get("why") or "lost")
            if None not in (loc["worker"], self.worker) and loc["worker"] != self.worker:
                fate.note("relocated", from_worker=self.worker, to_worker=loc["worker"])
            self.moved_to(loc["worker"], loc["actor_key"])
            try:
                if self.key is None:
                    raise SessionMoved(f"session {self.session_id!r} has no actor yet")
                # With what was read: an actor recovered from an older checkpoint makes those
                # chunks again, and unacknowledged they would fill its unread window (issue 13).
                await self.send_request(acknowledge=True)
                return
            except Exception as exc:
                failure = fate.actor_failure(exc)
                if failure is not None:
                    raise failure from exc
                last = exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)

    # ------------------------------------------------------------ asking for chunks

    async def request(self, n: int, acknowledge: bool = False) -> int:
        """Ask for ``n`` more chunks; returns the index of the first one.

        ``acknowledge``: the request also acknowledges what was read (for a chunk future:
        a client that reads through futures polls no more, and a chunk it streamed last
        would otherwise hold the session at ``engine.max-unread-chunks``). A stream
        acknowledges with its polls.
        """
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_CHUNKS_PER_CALL:
            raise InvalidRequest(f"chunk count {n!r} is not an int in [0, {MAX_CHUNKS_PER_CALL}]")
        self.fate.check_usable()
        first = self.cursor.issue(n)
        if n and self.key is None:
            await self.relocate()
        elif n:
            try:
                await self.send_request(acknowledge)
            except Exception as exc:
                failure = self.fate.actor_failure(exc)
                if failure is not None:
                    raise failure from exc
                await self.relocate(exc)
        return first

    async def send_request(self, acknowledge: bool) -> None:
        """Tell the actor every chunk index asked for so far (``issued``), and with
        ``acknowledge`` what was read; bounded like any call to an actor."""
        acked = [self.cursor.read_prefix()] if acknowledge else []
        await asyncio.wait_for(call_actor(self.rpc(), self.key, "request", self.cursor.issued, *acked),
                               CONNECT_TIMEOUT_S + RPC_GRACE_S)

    async def acknowledge_received(self) -> None:
        """Tell the actor every chunk that arrived here (a stream's end: no next poll says it).

        A poll acknowledges the chunks before the one it asks for, so the chunks of the
        stream's last poll (several, when the worker ran ahead of a slow reader) would stay
        unacknowledged until the next burst, and with them the checkpoints past them. Best
        effort: a failure leaves it to the next poll.
        """
        if self.key is None or self.fate.closed:
            return
        try:
            await self.send_request(acknowledge=True)
        except Exception as exc:  # moved, suspended, its worker gone: the next poll acknowledges
            logger.debug("session %s: acknowledging the stream's end failed: %r", self.session_id, exc)

    # ------------------------------------------------------------ reading them

    async def poll_once(self, timeout: float = POLL_TIMEOUT_S) -> None:
        """One long-poll of the actor for the chunks from the read prefix on (relocating on a move)."""
        self.fate.check_usable()
        if self.key is None:
            await self.relocate()
        after = self.cursor.read_prefix()
        try:
            chunks = await call_actor(self.rpc(), self.key, "poll", after, timeout)
        except Exception as exc:
            failure = self.fate.actor_failure(exc)
            if failure is not None:
                if isinstance(failure, SessionClosed) and not isinstance(failure, SessionLost):
                    self.fate.closed = True
                raise failure from exc
            await self.relocate(exc)
            return
        self.cursor.receive(chunks)

    async def chunk(self, index: int) -> Chunk:
        """Wait for chunk ``index`` (already requested) and take it from the buffer.

        :class:`ChunkTimeout` when no chunk at all arrives for
        ``turboserve.client.chunk-timeout`` (each arrival, and finding the session on
        another actor, starts the wait again): the engine neither makes it nor fails, or
        its worker does not answer at all (a frozen process), within
        :data:`RPC_GRACE_S` more.
        """
        if self._poll_lock is None:
            self._poll_lock = asyncio.Lock()
        bound = self.chunk_timeout_s
        cursor = self.cursor
        since, seen, actor = time.monotonic(), cursor.arrivals, self.key
        while not cursor.has(index):
            remaining = bound - (time.monotonic() - since)
            if remaining <= 0:
                raise self._stalled(index, bound)
            async with self._poll_lock:
                if not cursor.has(index):
                    try:
                        await asyncio.wait_for(self.poll_once(min(POLL_TIMEOUT_S, max(remaining, 0.05))),
                                               remaining + RPC_GRACE_S)
                    except TimeoutError:
                        raise self._stalled(index, bound, answered=False) from None
            if cursor.arrivals != seen or self.key != actor:
                since, seen, actor = time.monotonic(), cursor.arrivals, self.key
        return cursor.take(index)

    def _stalled(self, index: int, bound: float, answered: bool = True) -> ChunkTimeout:
        """The typed error of a wait for chunk ``index`` that saw no chunk for ``bound`` s (noted as ``stalled``).

        ``answered`` False: the worker did not even answer the last poll (within :data:`RPC_GRACE_S` more).
        """
        exc = ChunkTimeout.waiting(self.session_id, index, bound, self.worker,
                                   unanswered_s=None if answered else RPC_GRACE_S)
        self.fate.note("stalled", chunk=index, why=str(exc), answered=answered)
        return exc

    def chunk_future(self, index: int) -> ChunkFuture:
        """Submit the task of chunk ``index`` (:func:`workers.chunk_futures.chunk_task`), already requested."""
        key = chunk_key(self.session_id, self.token, index)
        acked = self.cursor.read_prefix()  # carried by the task: a recovered actor learns what was read
        self.cursor.own(index)
        client = self.client
        submitted = client.submit(
            chunk_task, self.session_id, index, self.worker, self.key, key[0], access_token=self.access,
            chunk_timeout_s=self.chunk_timeout_s, acked=acked,
            key=key, workers=[self.worker], allow_other_workers=True, pure=False,
        )
        future = ChunkFuture(key, client, self.worker, self.access)  # the same key and state, a shorter result()
        submitted.release()
        self.cursor.attach(index, future.done_probe())
        return future
