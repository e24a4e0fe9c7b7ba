"""The client's handle on one streaming session.

Chunks travel worker -> client: the session raises its actor's request high-water mark
and long-polls the actor directly (``direct_to_workers``), acknowledging what it got.
Control calls (pause, suspend, resume, migrate, close) go to the scheduler plugin.

When the actor is gone (migrated, suspended, its worker died), the session asks the
scheduler where the session is now (:meth:`SessionHandlers.locate
<framework.session_handlers.SessionHandlers.locate>`, which waits for
a move or a recovery to finish and wakes a suspended session), repeats its request and
goes on polling. Chunk indices are the stream's identity: an index already received is
never handed out again, so a recovery that regenerates chunks from an older checkpoint
shows no repeat, and the ack-based outbox shows no gap.

A session that cannot be served any more raises :class:`~framework.errors.SessionLost`
(with its ``cause``) from its stream, its futures and its control calls, never a bare
``CommClosedError``: closed by the server or another client, the engine unable to run
it, or not found again within :data:`RELOCATE_TIMEOUT_S`. :meth:`Session.close` always
returns within :data:`CLOSE_TIMEOUT_S`. :meth:`Session.events` says what happened.

No wait for a chunk is unbounded: a session whose engine neither makes the chunk a
reader (a stream or a chunk future) asked for nor fails raises
:class:`~workers.errors.ChunkTimeout` once no chunk arrived for
``turboserve.client.chunk-timeout``; the session stays open.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

from dask.utils import parse_timedelta
from distributed import Future
from distributed.actor import ProxyRPC

from framework import config, notebook
from framework.chunk_future import ChunkFuture
from framework.read_cursor import ReadCursor
from framework.errors import SessionAccessDenied, SessionLost
from workers.chunk import Chunk
from workers.errors import (
    CapacityExceeded,
    ChunkTimeout,
    InvalidRequest,
    SessionClosed,
    SessionMoved,
    SessionNotFound,
    TransferError,
    TurboserveError,
)
from workers.access import TokenRPC
from workers.actor_rpc import BoundedRPC, call_actor
from workers.chunk_futures import chunk_key, chunk_task

logger = logging.getLogger(__name__)

#: Most chunks one stream() or submit() round may ask for (a guard against typos).
MAX_CHUNKS_PER_CALL = 100_000
#: Seconds one long-poll waits on the worker before coming back empty.
POLL_TIMEOUT_S = 5.0
#: Seconds to wait for a connection to the session's worker before asking where it went.
CONNECT_TIMEOUT_S = 1.0
#: Seconds to keep looking for a session that moved or whose worker died (then SessionLost).
RELOCATE_TIMEOUT_S = 120.0
#: Seconds close() waits for the scheduler to confirm (then it returns anyway, logging why).
CLOSE_TIMEOUT_S = 30.0
#: Seconds events() waits for the session's actor or the scheduler.
EVENTS_TIMEOUT_S = 10.0
#: Seconds a call to the session's actor may take beyond its own wait before its worker
#: counts as not answering (a frozen process keeps its connections open and never replies).
RPC_GRACE_S = 5.0


class Session:
    """A streaming session opened by :meth:`framework.Server.open_session`.

    Attributes
    ----------
    id, prompt, seed, model, height, width : as opened
    fps : int
        Playback rate; one chunk plays for ``frames / fps`` seconds.
    frames : int
        Pixel frames per chunk.

    Examples
    --------
    >>> s = server.open_session("a red fox running through snow", seed=0)   # doctest: +SKIP
    >>> [c.index for c in s.stream(3)]                                       # doctest: +SKIP
    [0, 1, 2]
    >>> s.submit().result().index                                            # doctest: +SKIP
    3
    """

    def __init__(self, server: Any, info: dict[str, Any]) -> None:
        self._server = server
        self.id: str = info["id"]
        self.prompt: str = info["prompt"]
        self.seed: int = info["seed"]
        self.model: str = info["model"]
        self.height: int = info["height"]
        self.width: int = info["width"]
        self.fps: int = info["fps"]
        self.frames: int = info["frames"]
        self._worker: str = info["worker"]
        self._key: str = info["actor_key"]
        self._access: str | None = info.get("access_token")  # the capability (workers.access)
        self._cursor = ReadCursor(0)  # indices asked for, received and read (attach: the count made)
        self._token = uuid.uuid4().hex[:8]  # this handle's part of its chunk futures' keys
        self._poll_lock: asyncio.Lock | None = None
        self._closed = False
        self._closing = False  # this handle asked to close (a SessionClosed is then expected)
        self._lost: SessionLost | None = None
        self._events: list[dict[str, Any]] = []  # read from actors, plus this client's own
        #: Longest wait for a chunk while none arrives (``turboserve.client.chunk-timeout``).
        self._chunk_timeout_s = float(parse_timedelta(config.get("client.chunk-timeout"), default="s"))
        #: ``(chunk, prompt)`` of every switch made through this handle (:meth:`set_prompt`).
        self.prompts: list[tuple[int, str]] = [(0, self.prompt)]
        #: What this client received: recent frames (``turboserve.notebook.keep-frames``), latencies.
        self.history = notebook.StreamHistory()

    def __repr__(self) -> str:
        return f"<Session {self.id} on {self._worker} issued={self._cursor.issued}>"

    # ------------------------------------------------------------ properties

    @property
    def worker(self) -> str:
        """Address of the worker that holds the session's actor (as last seen)."""
        return self._worker

    @property
    def access_token(self) -> str | None:
        """The session's access token: whoever holds it may read, steer and close the session.

        Only the client that opened it gets it. Hand the session over on purpose by giving
        it to another client, which calls ``server.session(id, access_token=token)``.
        """
        return self._access

    @property
    def _scheduler(self) -> Any:
        """The scheduler's RPC handle, sending this session's access token with every call."""
        return TokenRPC(self._server.client.scheduler, self._access)

    @property
    def status(self) -> str:
        """``active``, ``idle``, ``suspended``, ``migrating``, ``pending`` or ``closed`` (asks the scheduler)."""
        return self.record()["status"]

    def record(self) -> dict[str, Any]:
        """The scheduler's record of this session (status, worker, tier, chunks, state bytes)."""
        client = self._server.client
        return dict(client.sync(client.scheduler.turboserve_info, session_id=self.id, access_token=self._access))

    # ------------------------------------------------------------ Jupyter

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        return notebook.session_mimebundle(notebook.session_card(self))

    def video(self, fps: float | None = None) -> notebook.AnimatedGif | None:
        """The frames received lately as an inline animated GIF (None before the first chunk)."""
        return notebook.session_video(self, fps)

    def panel(self, scale: int = 3) -> Any:
        """A Jupyter panel that drives this session: prompt box, play/pause, live video (:mod:`framework.panel`)."""
        from framework.panel import SessionPanel

        return SessionPanel(self, scale)

    def display_stream(self, n: int) -> list[Chunk]:
        """Like :meth:`stream`, updating one Jupyter display as each chunk arrives; returns the chunks."""
        return notebook.display_stream(self, n)

    # ------------------------------------------------------------ async core

    # ------------------------------------------------------------ events and failures

    def _note(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Record an event seen by this client (``source: "client"``)."""
        event = {"kind": kind, "t": time.time(), "worker": None, "source": "client", **fields}
        self._events.append(event)
        return event

    def _merge_events(self, events: list[dict[str, Any]]) -> None:
        seen = {e.get("id") for e in self._events if e.get("id")}
        self._events.extend(e for e in events if e.get("id") not in seen)

    def _session_lost(self, what: str, cause: BaseException | str | None) -> SessionLost:
        """Mark the session lost (every later call raises the same error) and return the error."""
        if self._lost is None:
            why = cause if isinstance(cause, str) or cause is None else f"{type(cause).__name__}: {cause}"
            self._lost = SessionLost(f"session {self.id!r} is lost: {what}" + (f" ({why})" if why else ""),
                                     self.id, why)
            self._note("lost", why=str(self._lost))
            logger.warning("%s", self._lost)
        return self._lost

    def _actor_failure(self, exc: BaseException) -> BaseException | None:
        """What an error from the session's actor means: None (relocate) or the error to raise."""
        if isinstance(exc, (SessionMoved, KeyError, OSError)) or _pool_closed(exc):
            return None
        if isinstance(exc, SessionClosed):
            if self._closing or self._closed:
                return exc
            return self._session_lost("it was closed by the server or another client", exc)
        if isinstance(exc, TurboserveError):
            return exc  # a refusal of this request (InvalidRequest, ...): the session is fine
        return self._session_lost("its worker could not run it", exc)

    def _check_usable(self) -> None:
        if self._lost is not None:
            raise self._lost
        if self._closed:
            raise SessionClosed(f"session {self.id!r} is closed; open a new one")

    async def aevents(self) -> list[dict[str, Any]]:
        """Async twin of :meth:`events`."""
        if not self._closed:
            try:
                key, worker = self._key, self._worker
                if key is None:
                    raise SessionMoved("no actor yet")
                try:
                    fetched = await asyncio.wait_for(call_actor(self._rpc_to(worker), key, "events"), EVENTS_TIMEOUT_S)
                except (SessionMoved, KeyError, OSError):
                    # Moved on: read the current actor's list (without touching the stream's own).
                    loc = await asyncio.wait_for(
                        self._scheduler.turboserve_info(session_id=self.id), EVENTS_TIMEOUT_S
                    )
                    if loc.get("actor_key") is None:
                        raise SessionMoved("no actor now") from None
                    fetched = await asyncio.wait_for(
                        call_actor(self._rpc_to(loc["worker"]), loc["actor_key"], "events"), EVENTS_TIMEOUT_S
                    )
                self._merge_events(list(fetched))
            except (TimeoutError, TurboserveError, OSError, KeyError):
                pass  # no actor to ask (suspended to disk, lost, closed): what was seen stays
            try:  # what the registry saw (it outlives an actor that died with its worker)
                recorded = await asyncio.wait_for(
                    self._scheduler.turboserve_events(session_id=self.id), EVENTS_TIMEOUT_S
                )
                self._merge_events(list(recorded))
            except (TimeoutError, TurboserveError, OSError, KeyError):
                pass
        return sorted((dict(e) for e in self._events), key=lambda e: e.get("t") or 0.0)

    def events(self) -> list[dict[str, Any]]:
        """What happened to the session, oldest first: a list of plain dicts.

        Every event has ``kind``, ``t`` (Unix time) and ``worker`` (None for events this
        client saw itself, which also carry ``source: "client"``). Kinds:

        ``started``
            a state from chunk 0 (``why``: a new session, no checkpoint yet, no store);
        ``restored``
            from the session's verified checkpoint at ``from_chunk``;
        ``regenerated``
            the checkpoint was refused (``why`` names the check it failed, ``error`` its
            type: damaged, foreign, another version), so the session starts over from
            ``from_chunk`` 0 and regenerates the same chunks (generation is
            deterministic; chunks the client already has are not handed out again);
        ``migrated``
            moved at ``chunk`` from ``from_worker`` (``transport``);
        ``suspended`` / ``resumed``
            offloaded to ``tier`` at ``chunk`` / back on a device;
        ``failed``
            the engine could not run it (``why``);
        ``replayed``
            a chunk future's data died with its worker after the checkpoint had passed
            the chunk; Dask recomputed the future and the actor made ``chunk`` again
            from a fresh state (deterministic: the same frames); or chunks not read yet
            died with a worker while the disk checkpoint was past them, and the actor
            made ``chunks`` of them again from ``chunk`` on;
        ``relocated``
            this client found the session on another worker (``from_worker``, ``to_worker``);
        ``lost``
            the session cannot be served (``why``, the :class:`SessionLost` message);
        ``close-unconfirmed``
            :meth:`close` returned without the scheduler's answer (``why``).

        The actor's list travels with the state between workers (and through a
        suspension to disk). The registry on the scheduler records, with ``source:
        "registry"``: ``migrated`` (to ``worker`` from ``from_worker`` at ``chunk``; the
        same event as the actor's, shown once), ``worker-lost`` (the session's actor died
        with ``worker`` after ``chunk`` chunks, ``why``) and ``recovered`` (back on
        ``worker`` from the checkpoint at ``from_chunk``), so they outlive an actor that
        died with its worker; that actor's other events are only here if this client
        read them before. It also records ``suspend-aborted`` / ``resume-aborted`` (a
        suspension or resumption failed before its commit: ``why``, and where the session
        ``stays``), ``settled`` (the worker of an unanswered suspension or resumption
        answered again, and what the late call did there was undone: ``undid``, None when
        it had done nothing), ``settle-failed`` and ``unfenced`` (``why``). Waits at most ``EVENTS_TIMEOUT_S`` per source.

        Examples
        --------
        >>> [e["kind"] for e in s.events()]                          # doctest: +SKIP
        ['started', 'relocated', 'regenerated']
        """
        return self._sync(self.aevents)

    def _rpc_to(self, worker: str) -> Any:
        client = self._server.client
        if client.direct_to_workers:
            return TokenRPC(BoundedRPC(client.rpc, worker, CONNECT_TIMEOUT_S), self._access)
        return TokenRPC(ProxyRPC(client.scheduler, worker), self._access)

    def _rpc(self) -> Any:
        return self._rpc_to(self._worker)

    async def _relocate(self, cause: BaseException | None = None) -> None:
        """Find the session's actor again and repeat the outstanding request.

        Raises :class:`SessionLost` when the registry says the session is closed or
        gone, or when no actor answers within ``RELOCATE_TIMEOUT_S`` (the scheduler
        unreachable included).
        """
        deadline = time.monotonic() + RELOCATE_TIMEOUT_S
        delay = 0.02
        last: BaseException | None = cause
        scheduler = self._scheduler
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._session_lost(f"no worker or scheduler answered for {RELOCATE_TIMEOUT_S:g} s", last)
            try:
                loc = await asyncio.wait_for(
                    scheduler.turboserve_locate(session_id=self.id, wake=True, timeout=remaining), remaining + 5.0
                )
            except SessionClosed as exc:
                if self._closing:
                    raise
                raise self._session_lost("it was closed by the server or another client", exc) from exc
            except SessionNotFound as exc:
                raise self._session_lost("the scheduler no longer knows it", exc) from exc
            except (TimeoutError, CapacityExceeded, TransferError, OSError) as exc:
                # No worker for it yet, the scheduler unreachable, or the worker its wake-up
                # resume went to died meanwhile (the session stays suspended): try again.
                last = exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)
                continue
            if loc.get("status") == "lost":
                raise self._session_lost("the scheduler gave it up", loc.get("cause") or loc.get("why") or "lost")
            if None not in (loc["worker"], self._worker) and loc["worker"] != self._worker:
                self._note("relocated", from_worker=self._worker, to_worker=loc["worker"])
            self._worker, self._key = loc["worker"], loc["actor_key"]
            try:
                if self._key is None:
                    raise SessionMoved(f"session {self.id!r} has no actor yet")
                # With what was read: an actor recovered from an older checkpoint makes those
                # chunks again, and unacknowledged they would fill its unread window (issue 13).
                await self._send_request(acknowledge=True)
                return
            except Exception as exc:
                failure = self._actor_failure(exc)
                if failure is not None:
                    raise failure from exc
                last = exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)

    async def _request(self, n: int, acknowledge: bool = False) -> int:
        """Ask for ``n`` more chunks; returns the index of the first one.

        ``acknowledge``: the request also acknowledges what was read (for a chunk future:
        a client that reads through futures polls no more, and a chunk it streamed last
        would otherwise hold the session at ``engine.max-unread-chunks``). A stream
        acknowledges with its polls.
        """
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_CHUNKS_PER_CALL:
            raise InvalidRequest(f"chunk count {n!r} is not an int in [0, {MAX_CHUNKS_PER_CALL}]")
        self._check_usable()
        first = self._cursor.issue(n)
        if n and self._key is None:
            await self._relocate()
        elif n:
            try:
                await self._send_request(acknowledge)
            except Exception as exc:
                failure = self._actor_failure(exc)
                if failure is not None:
                    raise failure from exc
                await self._relocate(exc)
        return first

    async def _send_request(self, acknowledge: bool) -> None:
        """Tell the actor every chunk index asked for so far (``issued``), and with
        ``acknowledge`` what was read; bounded like any call to an actor."""
        acked = [self._cursor.read_prefix()] if acknowledge else []
        await asyncio.wait_for(call_actor(self._rpc(), self._key, "request", self._cursor.issued, *acked),
                               CONNECT_TIMEOUT_S + RPC_GRACE_S)

    async def _poll_once(self, timeout: float = POLL_TIMEOUT_S) -> None:
        self._check_usable()
        if self._key is None:
            await self._relocate()
        after = self._cursor.read_prefix()
        try:
            chunks = await call_actor(self._rpc(), self._key, "poll", after, timeout)
        except Exception as exc:
            failure = self._actor_failure(exc)
            if failure is not None:
                if isinstance(failure, SessionClosed) and not isinstance(failure, SessionLost):
                    self._closed = True
                raise failure from exc
            await self._relocate(exc)
            return
        self._cursor.receive(chunks)

    async def _chunk(self, index: int) -> Chunk:
        """Wait for chunk ``index`` (already requested) and take it from the buffer.

        :class:`ChunkTimeout` when no chunk at all arrives for
        ``turboserve.client.chunk-timeout`` (each arrival, and finding the session on
        another actor, starts the wait again): the engine neither makes it nor fails, or
        its worker does not answer at all (a frozen process), within
        :data:`RPC_GRACE_S` more.
        """
        if self._poll_lock is None:
            self._poll_lock = asyncio.Lock()
        bound = self._chunk_timeout_s
        cursor = self._cursor
        since, seen, actor = time.monotonic(), cursor.arrivals, self._key
        while not cursor.has(index):
            remaining = bound - (time.monotonic() - since)
            if remaining <= 0:
                raise self._stalled(index, bound)
            async with self._poll_lock:
                if not cursor.has(index):
                    try:
                        await asyncio.wait_for(self._poll_once(min(POLL_TIMEOUT_S, max(remaining, 0.05))),
                                               remaining + RPC_GRACE_S)
                    except TimeoutError:
                        raise self._stalled(index, bound, answered=False) from None
            if cursor.arrivals != seen or self._key != actor:
                since, seen, actor = time.monotonic(), cursor.arrivals, self._key
        chunk = cursor.take(index)
        self.history.record(chunk)
        return chunk

    def _stalled(self, index: int, bound: float, answered: bool = True) -> ChunkTimeout:
        """The typed error of a wait for chunk ``index`` that saw no chunk for ``bound`` s (noted as ``stalled``).

        ``answered`` False: the worker did not even answer the last poll (within :data:`RPC_GRACE_S` more).
        """
        exc = ChunkTimeout.waiting(self.id, index, bound, self._worker, unanswered_s=None if answered else RPC_GRACE_S)
        self._note("stalled", chunk=index, why=str(exc), answered=answered)
        return exc

    async def astream(self, n: int) -> AsyncIterator[Chunk]:
        """Async twin of :meth:`stream`."""
        first = await self._request(n)
        for index in range(first, first + n):
            yield await self._chunk(index)
        await self._acknowledge_received()

    async def _acknowledge_received(self) -> None:
        """Tell the actor every chunk that arrived here (a stream's end: no next poll says it).

        A poll acknowledges the chunks before the one it asks for, so the chunks of the
        stream's last poll (several, when the worker ran ahead of a slow reader) would stay
        unacknowledged until the next burst, and with them the checkpoints past them. Best
        effort: a failure leaves it to the next poll.
        """
        if self._key is None or self._closed:
            return
        try:
            await self._send_request(acknowledge=True)
        except Exception as exc:  # moved, suspended, its worker gone: the next poll acknowledges
            logger.debug("session %s: acknowledging the stream's end failed: %r", self.id, exc)

    async def asubmit(self) -> Chunk:
        """Async twin of :meth:`submit`: the next chunk (awaited through its Dask future)."""
        future = await self.asubmit_future()
        try:
            chunk = await future
        except SessionClosed as exc:
            if self._closing or self._closed or isinstance(exc, SessionLost):
                raise
            raise self._session_lost("its chunk future found it closed or lost", exc) from exc
        self.history.record(chunk)
        return chunk

    async def asubmit_future(self) -> Future:
        """Async twin of :meth:`submit` that returns the :class:`distributed.Future` itself."""
        index = await self._request(1, acknowledge=True)
        return self._chunk_future(index)

    def _chunk_future(self, index: int) -> ChunkFuture:
        """Submit the task of chunk ``index`` (:func:`workers.chunk_futures.chunk_task`)."""
        key = chunk_key(self.id, self._token, index)
        acked = self._cursor.read_prefix()  # carried by the task: a recovered actor learns what was read
        self._cursor.own(index)
        client = self._server.client
        submitted = client.submit(
            chunk_task, self.id, index, self._worker, self._key, key[0], access_token=self._access,
            chunk_timeout_s=self._chunk_timeout_s, acked=acked,
            key=key, workers=[self._worker], allow_other_workers=True, pure=False,
        )
        future = ChunkFuture(key, client, self._worker, self._access)  # the same key and state, a shorter result()
        submitted.release()
        self._cursor.attach(index, future.done_probe())
        return future

    async def aset_prompt(self, prompt: str) -> int:
        """Async twin of :meth:`set_prompt`."""
        self._check_usable()
        for attempt in range(3):
            try:
                if self._key is None:
                    raise SessionMoved(f"session {self.id!r} has no actor yet")
                index = await call_actor(self._rpc(), self._key, "set_prompt", prompt)
                break
            except Exception as exc:
                failure = self._actor_failure(exc)
                if failure is not None or attempt == 2:
                    raise (failure or exc) from exc
                await self._relocate(exc)
        self.prompts.append((int(index), prompt))
        try:  # for listings and cards only: the switch itself is made
            await self._scheduler.turboserve_prompt(session_id=self.id, index=int(index), prompt=prompt)
        except (OSError, TurboserveError) as exc:
            logger.debug("session %s: the scheduler did not note its new prompt: %r", self.id, exc)
        return int(index)

    async def apause(self) -> None:
        """Async twin of :meth:`pause`."""
        await self._control("turboserve_pause")

    async def asuspend(self, to: str | None = None) -> None:
        """Async twin of :meth:`suspend`."""
        await self._control("turboserve_suspend", tier=to)

    async def aresume(self, worker: str | None = None) -> None:
        """Async twin of :meth:`resume`."""
        await self._control("turboserve_resume", worker=worker)

    async def amigrate(self, worker: str, transport: str | None = None) -> None:
        """Async twin of :meth:`migrate`."""
        await self._control("turboserve_migrate", target=worker, transport=transport)

    async def aclose(self) -> None:
        """Async twin of :meth:`close`."""
        if self._closed:
            return
        self._closing = True
        try:
            await asyncio.wait_for(self._scheduler.turboserve_close(session_id=self.id), CLOSE_TIMEOUT_S)
        except (SessionClosed, SessionNotFound):
            pass  # closed already (by the server, or another handle)
        except SessionAccessDenied:
            raise  # not this handle's session (a wrong token): nothing was closed
        except (TimeoutError, OSError, TurboserveError) as exc:
            self._note("close-unconfirmed", why=f"{type(exc).__name__}: {exc}")
            logger.warning("closing session %s: no answer from the scheduler within %s s (%r); "
                           "this handle is closed, the server may still hold the session", self.id, CLOSE_TIMEOUT_S, exc)
        finally:
            self._closed = True
            self._cursor.clear()

    async def _control(self, op: str, **kw: Any) -> dict[str, Any]:
        self._check_usable()
        try:
            loc = await getattr(self._scheduler, op)(session_id=self.id, **kw)
        except SessionClosed as exc:
            if self._closing:
                raise
            raise self._session_lost("it was closed by the server or another client", exc) from exc
        except SessionNotFound as exc:
            raise self._session_lost("the scheduler no longer knows it", exc) from exc
        except OSError as exc:  # CommClosedError: the scheduler, or the session's worker, went away mid-call
            raise await self._control_failure(op, exc) from exc
        self._worker, self._key = loc["worker"], loc["actor_key"]
        return loc

    async def _control_failure(self, op: str, exc: BaseException) -> BaseException:
        """The typed error of a control call that failed on a connection: lost, or a failed move."""
        try:
            rec = await asyncio.wait_for(
                self._scheduler.turboserve_info(session_id=self.id), EVENTS_TIMEOUT_S
            )
        except (TimeoutError, OSError) as again:
            return self._session_lost("the scheduler could not be reached", again)
        except TurboserveError as gone:
            return self._session_lost("the scheduler no longer knows it", gone)
        if rec.get("status") in ("closed", "lost"):
            return self._session_lost(f"{op} found it {rec['status']}", exc)
        # The scheduler answers: the session's worker died under the call; recovery brings it back.
        return TransferError(
            f"{op.removeprefix('turboserve_')} of session {self.id!r} failed ({type(exc).__name__}: {exc}); "
            f"the session is {rec.get('status')} now (a lost worker's sessions are recovered from their "
            "checkpoints); try again"
        )

    # ------------------------------------------------------------ sync API

    def _sync(self, fn, *args: Any, **kw: Any) -> Any:
        return self._server.client.sync(fn, *args, **kw)

    def stream(self, n: int) -> Iterator[Chunk]:
        """Ask for the next ``n`` chunks and yield each as it arrives, in order.

        The request is sent at once (the worker produces ahead of the reader). A
        migration, suspension or worker loss on the way is invisible here, apart from
        the ``migrated`` flag and the latency of the chunk after it. Once all ``n`` are
        read, the worker learns they arrived, so its checkpoints may pass them.
        """
        first = self._sync(self._request, n)
        for index in range(first, first + n):
            yield self._sync(self._chunk, index)
        self._sync(self._acknowledge_received)

    def submit(self) -> Future:
        """The next chunk as a :class:`distributed.Future` whose result is the :class:`Chunk`.

        A real Dask future (key ``("turboserve-chunk-<session>-<handle>", index)``):
        ``.result(timeout)``, ``distributed.wait``, ``as_completed``, ``client.gather``
        and passing it to ``client.submit`` all work, and the chunk shows in the task
        stream. Its bytes stay on the session's worker until gathered (worker -> client,
        never through the scheduler). The request leaves before this returns, so
        several sessions' submits made back to back are batched together by their
        workers' engines. Chunk indices are handed out once, in order, whichever way
        they are read (futures and :meth:`stream` may be mixed); a future whose worker
        dies is recomputed by Dask, and the chunk is the same (the session is recovered
        and generation is deterministic), however often that happens while the session
        is served: such deaths do not count towards Dask's ``KilledWorker`` limit
        (:meth:`framework.scheduler_plugin.TurboserveScheduler.transition`).

        A future's chunk is not added to :attr:`history` (it never reaches this client
        unless gathered); :meth:`asubmit` and :meth:`stream` add theirs.
        """
        index = self._sync(self._request, 1, True)
        return self._chunk_future(index)

    def set_prompt(self, prompt: str) -> int:
        """Steer the stream with ``prompt`` from the next chunk boundary; returns that chunk's index.

        The switch happens at the first chunk the worker has not started (chunks already
        made, also one made ahead of a request, keep the old prompt): the session's
        prompt embedding changes, its KV cache of recent frames stays
        (:meth:`kernels.model.StreamingVideoModel.set_prompt`). The switch is part of the
        session's state, so it survives a suspension, a migration and a checkpoint, and
        generation stays deterministic: the same prompts at the same chunk indices give
        the same frames. :attr:`prompts` lists the switches made through this handle.

        Examples
        --------
        >>> k = s.set_prompt("the fox turns into a bird")         # doctest: +SKIP
        >>> [c.index for c in s.stream(2)][-1] >= k               # doctest: +SKIP
        True
        """
        return self._sync(self.aset_prompt, prompt)

    def pause(self) -> None:
        """Stop producing (after the chunk in flight); the state stays on the device."""
        self._sync(self.apause)

    def suspend(self, to: str | None = None) -> None:
        """Offload the state off the device: ``to="host"`` (pinned when CUDA) or ``"disk"`` (zarr).

        Default: ``turboserve.state.offload-tier``. Streaming again resumes it.
        """
        self._sync(self.asuspend, to)

    def resume(self, worker: str | None = None) -> None:
        """Bring the state back on a device: ``worker``, or where it was / placement says."""
        self._sync(self.aresume, worker)

    def migrate(self, worker: str, transport: str | None = None) -> None:
        """Move the session to ``worker`` at a chunk boundary; the stream goes on without a gap.

        ``transport``: ``"host"`` (staged through host memory over Dask's worker-to-worker
        comms), ``"p2p"`` (a private 2-rank NCCL/gloo group) or ``"auto"`` (p2p when both
        ends are CUDA devices); default ``turboserve.state.transport``.
        """
        self._sync(self.amigrate, worker, transport)

    def close(self) -> None:
        """Drop the session's state and actor; further calls raise :class:`SessionClosed`.

        Always returns, within ``CLOSE_TIMEOUT_S``: when the scheduler does not confirm
        in time (or cannot be reached) the handle is closed anyway, the event
        ``close-unconfirmed`` says so and a warning is logged.
        """
        self._sync(self.aclose)


def _pool_closed(exc: BaseException) -> bool:
    """Whether ``exc`` is Dask's bare ``RuntimeError`` of a closed connection pool.

    ``ConnectionPool.connect`` raises it when the pool of the process making the call
    was closed: the session's worker shutting down (an autoscaler or the cluster
    closing it) while it served the call. That worker is going away, not the session:
    relocate, as for a worker that died (issue 13: the chaos suite lost a session to it).
    """
    return type(exc) is RuntimeError and "ConnectionPool is closed" in str(exc)
