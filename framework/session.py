"""The client's handle on one streaming session.

Chunks travel worker -> client through the handle's read path
(:class:`~framework.chunk_channel.ChunkChannel`: requests, long-polls and
acknowledgements sent to the session's actor directly, relocation after a move or a
worker's death, chunk futures); control calls (pause, suspend, resume, migrate, close)
go to the scheduler plugin, and tell the channel where they left the session.

A session that cannot be served any more raises :class:`~framework.errors.SessionLost`
(with its ``cause``) from its stream, its futures and its control calls, never a bare
``CommClosedError``: closed by the server or another client, the engine unable to run
it, or not found again within :data:`~framework.chunk_channel.RELOCATE_TIMEOUT_S`
(:class:`~framework.session_fate.SessionFate` keeps that state and the events seen).
:meth:`Session.close` always returns within :data:`CLOSE_TIMEOUT_S`.
:meth:`Session.events` says what happened.

No wait for a chunk is unbounded: a session whose engine neither makes the chunk a
reader (a stream or a chunk future) asked for nor fails raises
:class:`~workers.errors.ChunkTimeout` once no chunk arrived for
``turboserve.client.chunk-timeout``; the session stays open.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

from dask.utils import parse_timedelta
from distributed import Future

from framework import config, notebook
from framework.chunk_channel import ChunkChannel
from framework.errors import SessionAccessDenied, SessionLost
from framework.session_fate import SessionFate
from workers.actor_rpc import call_actor
from workers.chunk import Chunk
from workers.errors import (
    SessionClosed,
    SessionMoved,
    SessionNotFound,
    TransferError,
    TurboserveError,
)

logger = logging.getLogger(__name__)

#: Seconds close() waits for the scheduler to confirm (then it returns anyway, logging why).
CLOSE_TIMEOUT_S = 30.0
#: Seconds events() waits for the session's actor or the scheduler.
EVENTS_TIMEOUT_S = 10.0


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
        self._fate = SessionFate(self.id)
        #: The read path: where the actor is, the chunk indices asked for, received and read;
        #: it holds the session's access token (the capability, workers.access).
        self._channel = ChunkChannel(
            server.client, self.id, info.get("access_token"), info["worker"], info["actor_key"], self._fate,
            float(parse_timedelta(config.get("client.chunk-timeout"), default="s")),
        )
        #: ``(chunk, prompt)`` of every switch made through this handle (:meth:`set_prompt`).
        self.prompts: list[tuple[int, str]] = [(0, self.prompt)]
        #: What this client received: recent frames (``turboserve.notebook.keep-frames``), latencies.
        self.history = notebook.StreamHistory()

    def __repr__(self) -> str:
        return f"<Session {self.id} on {self.worker} issued={self._channel.cursor.issued}>"

    # ------------------------------------------------------------ properties

    @property
    def worker(self) -> str:
        """Address of the worker that holds the session's actor (as last seen)."""
        return self._channel.worker

    @property
    def access_token(self) -> str | None:
        """The session's access token: whoever holds it may read, steer and close the session.

        Only the client that opened it gets it. Hand the session over on purpose by giving
        it to another client, which calls ``server.session(id, access_token=token)``.
        """
        return self._channel.access

    @property
    def _scheduler(self) -> Any:
        """The scheduler's RPC handle, sending this session's access token with every call."""
        return self._channel.scheduler

    @property
    def status(self) -> str:
        """``active``, ``idle``, ``suspended``, ``migrating``, ``pending`` or ``closed`` (asks the scheduler)."""
        return self.record()["status"]

    def record(self) -> dict[str, Any]:
        """The scheduler's record of this session (status, worker, tier, chunks, state bytes)."""
        client = self._server.client
        return dict(client.sync(client.scheduler.turboserve_info, session_id=self.id, access_token=self.access_token))

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

    # ------------------------------------------------------------ events

    async def aevents(self) -> list[dict[str, Any]]:
        """Async twin of :meth:`events`."""
        fate, channel = self._fate, self._channel
        if not fate.closed:
            try:
                key, worker = channel.key, channel.worker
                if key is None:
                    raise SessionMoved("no actor yet")
                try:
                    fetched = await asyncio.wait_for(call_actor(channel.rpc_to(worker), key, "events"), EVENTS_TIMEOUT_S)
                except (SessionMoved, KeyError, OSError):
                    # Moved on: read the current actor's list (without touching the stream's own).
                    loc = await asyncio.wait_for(
                        self._scheduler.turboserve_info(session_id=self.id), EVENTS_TIMEOUT_S
                    )
                    if loc.get("actor_key") is None:
                        raise SessionMoved("no actor now") from None
                    fetched = await asyncio.wait_for(
                        call_actor(channel.rpc_to(loc["worker"]), loc["actor_key"], "events"), EVENTS_TIMEOUT_S
                    )
                fate.merge(list(fetched))
            except (TimeoutError, TurboserveError, OSError, KeyError):
                pass  # no actor to ask (suspended to disk, lost, closed): what was seen stays
            try:  # what the registry saw (it outlives an actor that died with its worker)
                recorded = await asyncio.wait_for(
                    self._scheduler.turboserve_events(session_id=self.id), EVENTS_TIMEOUT_S
                )
                fate.merge(list(recorded))
            except (TimeoutError, TurboserveError, OSError, KeyError):
                pass
        return sorted((dict(e) for e in fate.events), key=lambda e: e.get("t") or 0.0)

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

    # ------------------------------------------------------------ reading chunks

    async def _chunk(self, index: int) -> Chunk:
        """Chunk ``index`` (already requested) from the read path, kept in :attr:`history`."""
        chunk = await self._channel.chunk(index)
        self.history.record(chunk)
        return chunk

    async def astream(self, n: int) -> AsyncIterator[Chunk]:
        """Async twin of :meth:`stream`."""
        first = await self._channel.request(n)
        for index in range(first, first + n):
            yield await self._chunk(index)
        await self._channel.acknowledge_received()

    async def asubmit(self) -> Chunk:
        """Async twin of :meth:`submit`: the next chunk (awaited through its Dask future)."""
        future = await self.asubmit_future()
        try:
            chunk = await future
        except SessionClosed as exc:
            if self._fate.closing or self._fate.closed or isinstance(exc, SessionLost):
                raise
            raise self._fate.lose("its chunk future found it closed or lost", exc) from exc
        self.history.record(chunk)
        return chunk

    async def asubmit_future(self) -> Future:
        """Async twin of :meth:`submit` that returns the :class:`distributed.Future` itself."""
        index = await self._channel.request(1, acknowledge=True)
        return self._channel.chunk_future(index)

    async def aset_prompt(self, prompt: str) -> int:
        """Async twin of :meth:`set_prompt`."""
        self._fate.check_usable()
        channel = self._channel
        for attempt in range(3):
            try:
                if channel.key is None:
                    raise SessionMoved(f"session {self.id!r} has no actor yet")
                index = await call_actor(channel.rpc(), channel.key, "set_prompt", prompt)
                break
            except Exception as exc:
                failure = self._fate.actor_failure(exc)
                if failure is not None or attempt == 2:
                    raise (failure or exc) from exc
                await channel.relocate(exc)
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
        fate = self._fate
        if fate.closed:
            return
        fate.closing = True
        try:
            await asyncio.wait_for(self._scheduler.turboserve_close(session_id=self.id), CLOSE_TIMEOUT_S)
        except (SessionClosed, SessionNotFound):
            pass  # closed already (by the server, or another handle)
        except SessionAccessDenied:
            raise  # not this handle's session (a wrong token): nothing was closed
        except (TimeoutError, OSError, TurboserveError) as exc:
            fate.note("close-unconfirmed", why=f"{type(exc).__name__}: {exc}")
            logger.warning("closing session %s: no answer from the scheduler within %s s (%r); "
                           "this handle is closed, the server may still hold the session", self.id, CLOSE_TIMEOUT_S, exc)
        finally:
            fate.closed = True
            self._channel.cursor.clear()

    async def _control(self, op: str, **kw: Any) -> dict[str, Any]:
        fate = self._fate
        fate.check_usable()
        try:
            loc = await getattr(self._scheduler, op)(session_id=self.id, **kw)
        except (SessionClosed, SessionNotFound) as exc:
            failure = fate.scheduler_failure(exc)
            if failure is exc:
                raise
            raise failure from exc
        except OSError as exc:  # CommClosedError: the scheduler, or the session's worker, went away mid-call
            raise await self._control_failure(op, exc) from exc
        self._channel.moved_to(loc["worker"], loc["actor_key"])
        return loc

    async def _control_failure(self, op: str, exc: BaseException) -> BaseException:
        """The typed error of a control call that failed on a connection: lost, or a failed move."""
        try:
            rec = await asyncio.wait_for(
                self._scheduler.turboserve_info(session_id=self.id), EVENTS_TIMEOUT_S
            )
        except (TimeoutError, OSError) as again:
            return self._fate.lose("the scheduler could not be reached", again)
        except TurboserveError as gone:
            return self._fate.lose("the scheduler no longer knows it", gone)
        if rec.get("status") in ("closed", "lost"):
            return self._fate.lose(f"{op} found it {rec['status']}", exc)
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
        first = self._sync(self._channel.request, n)
        for index in range(first, first + n):
            yield self._sync(self._chunk, index)
        self._sync(self._channel.acknowledge_received)

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
        index = self._sync(self._channel.request, 1, True)
        return self._channel.chunk_future(index)

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

