"""The client's handle on one streaming session.

Chunks travel worker -> client: the session raises its actor's request high-water mark
and long-polls the actor directly (``direct_to_workers``), acknowledging what it got.
Control calls (pause, suspend, resume, migrate, close) go to the scheduler plugin.

When the actor is gone (migrated, suspended, its worker died), the session asks the
scheduler where the session is now (:meth:`TurboserveScheduler.locate`, which waits for
a move or a recovery to finish and wakes a suspended session), repeats its request and
goes on polling. Chunk indices are the stream's identity: an index already received is
never handed out again, so a recovery that regenerates chunks from an older checkpoint
shows no repeat, and the ack-based outbox shows no gap.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from typing import Any, AsyncIterator, Iterator

from distributed.actor import ProxyRPC
from distributed.core import send_recv

from framework import notebook
from workers.chunk import Chunk
from workers.errors import InvalidRequest, SessionClosed, SessionMoved, TransferError
from workers.session_actor import call_actor

logger = logging.getLogger(__name__)

#: Most chunks one stream() or submit() round may ask for (a guard against typos).
MAX_CHUNKS_PER_CALL = 100_000
#: Seconds one long-poll waits on the worker before coming back empty.
POLL_TIMEOUT_S = 5.0
#: Seconds to wait for a connection to the session's worker before asking where it went.
CONNECT_TIMEOUT_S = 1.0
#: Seconds to keep looking for a session that moved or whose worker died.
RELOCATE_TIMEOUT_S = 120.0


class _FastFailRPC:
    """Like ``client.rpc(addr)``, but connecting gives up after ``CONNECT_TIMEOUT_S``.

    Dask retries a refused connection until ``distributed.comm.timeouts.connect``
    (30 s); a session whose worker is gone should ask the scheduler where it went
    instead of waiting that long.
    """

    __slots__ = ("pool", "addr")

    def __init__(self, pool: Any, addr: str) -> None:
        self.pool, self.addr = pool, addr

    def __getattr__(self, op: str):
        async def call(**kwargs: Any) -> Any:
            comm = await self.pool.connect(self.addr, timeout=CONNECT_TIMEOUT_S)
            try:
                return await send_recv(comm=comm, op=op, **kwargs)
            finally:
                self.pool.reuse(self.addr, comm)

        return call


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
        self._issued = 0  # chunks asked for so far (request high-water mark)
        self._recv_next = 0  # every index below this has been received
        self._buffer: dict[int, Chunk] = {}
        self._poll_lock: asyncio.Lock | None = None
        self._closed = False
        #: What this client received: recent frames (``turboserve.notebook.keep-frames``), latencies.
        self.history = notebook.StreamHistory()

    def __repr__(self) -> str:
        return f"<Session {self.id} on {self._worker} issued={self._issued}>"

    # ------------------------------------------------------------ properties

    @property
    def worker(self) -> str:
        """Address of the worker that holds the session's actor (as last seen)."""
        return self._worker

    @property
    def status(self) -> str:
        """``active``, ``idle``, ``suspended``, ``migrating``, ``pending`` or ``closed`` (asks the scheduler)."""
        return self.record()["status"]

    def record(self) -> dict[str, Any]:
        """The scheduler's record of this session (status, worker, tier, chunks, state bytes)."""
        client = self._server.client
        return dict(client.sync(client.scheduler.turboserve_info, session_id=self.id))

    # ------------------------------------------------------------ Jupyter

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        return notebook.session_mimebundle(notebook.session_card(self))

    def video(self, fps: float | None = None) -> notebook.AnimatedGif | None:
        """The frames received lately as an inline animated GIF (None before the first chunk)."""
        return notebook.session_video(self, fps)

    def display_stream(self, n: int) -> list[Chunk]:
        """Like :meth:`stream`, updating one Jupyter display as each chunk arrives; returns the chunks."""
        return notebook.display_stream(self, n)

    # ------------------------------------------------------------ async core

    def _rpc(self) -> Any:
        client = self._server.client
        if client.direct_to_workers:
            return _FastFailRPC(client.rpc, self._worker)
        return ProxyRPC(client.scheduler, self._worker)

    async def _relocate(self) -> None:
        """Find the session's actor again and repeat the outstanding request."""
        deadline = time.monotonic() + RELOCATE_TIMEOUT_S
        delay = 0.02
        while True:
            loc = await self._server.client.scheduler.turboserve_locate(session_id=self.id, wake=True)
            self._worker, self._key = loc["worker"], loc["actor_key"]
            try:
                if self._key is None:
                    raise SessionMoved(f"session {self.id!r} has no actor yet")
                await call_actor(self._rpc(), self._key, "request", self._issued)
                return
            except SessionClosed:
                raise
            except (SessionMoved, KeyError, OSError) as exc:
                if time.monotonic() > deadline:
                    raise TransferError(f"lost track of session {self.id!r} for {RELOCATE_TIMEOUT_S} s: {exc!r}") from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)

    async def _request(self, n: int) -> int:
        """Ask for ``n`` more chunks; returns the index of the first one."""
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_CHUNKS_PER_CALL:
            raise InvalidRequest(f"chunk count {n!r} is not an int in [0, {MAX_CHUNKS_PER_CALL}]")
        if self._closed:
            raise SessionClosed(f"session {self.id!r} is closed; open a new one")
        first = self._issued
        self._issued += n
        if n and self._key is None:
            await self._relocate()
        elif n:
            try:
                await call_actor(self._rpc(), self._key, "request", self._issued)
            except SessionClosed:
                raise
            except (SessionMoved, KeyError, OSError):
                await self._relocate()
        return first

    async def _poll_once(self) -> None:
        if self._key is None:
            await self._relocate()
        try:
            chunks = await call_actor(self._rpc(), self._key, "poll", self._recv_next, POLL_TIMEOUT_S)
        except SessionClosed:
            self._closed = True
            raise
        except (SessionMoved, KeyError, OSError):
            await self._relocate()
            return
        for chunk in chunks:
            if chunk.index >= self._recv_next:
                self._buffer[chunk.index] = chunk
        while self._recv_next in self._buffer:
            self._recv_next += 1

    async def _chunk(self, index: int) -> Chunk:
        """Wait for chunk ``index`` (already requested) and take it from the buffer."""
        if self._poll_lock is None:
            self._poll_lock = asyncio.Lock()
        while index not in self._buffer:
            async with self._poll_lock:
                if index not in self._buffer:
                    await self._poll_once()
        chunk = self._buffer.pop(index)
        self.history.record(chunk)
        return chunk

    async def astream(self, n: int) -> AsyncIterator[Chunk]:
        """Async twin of :meth:`stream`."""
        first = await self._request(n)
        for index in range(first, first + n):
            yield await self._chunk(index)

    async def asubmit(self) -> Chunk:
        """Async twin of :meth:`submit`: the next chunk."""
        first = await self._request(1)
        return await self._chunk(first)

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
        if not self._closed:
            await self._server.client.scheduler.turboserve_close(session_id=self.id)
            self._closed = True
            self._buffer.clear()

    async def _control(self, op: str, **kw: Any) -> dict[str, Any]:
        if self._closed:
            raise SessionClosed(f"session {self.id!r} is closed; open a new one")
        loc = await getattr(self._server.client.scheduler, op)(session_id=self.id, **kw)
        self._worker, self._key = loc["worker"], loc["actor_key"]
        return loc

    # ------------------------------------------------------------ sync API

    def _sync(self, fn, *args: Any, **kw: Any) -> Any:
        return self._server.client.sync(fn, *args, **kw)

    def stream(self, n: int) -> Iterator[Chunk]:
        """Ask for the next ``n`` chunks and yield each as it arrives, in order.

        The request is sent at once (the worker produces ahead of the reader). A
        migration, suspension or worker loss on the way is invisible here, apart from
        the ``migrated`` flag and the latency of the chunk after it.
        """
        first = self._sync(self._request, n)
        for index in range(first, first + n):
            yield self._sync(self._chunk, index)

    def submit(self) -> concurrent.futures.Future:
        """The next chunk as a future (``.result(timeout)``, ``.done()``, callbacks).

        The request leaves before this returns, so several sessions' submits made
        back to back are batched together by their workers' engines.
        """
        first = self._sync(self._request, 1)
        loop = self._server.client.loop.asyncio_loop
        return asyncio.run_coroutine_threadsafe(self._chunk(first), loop)

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
        """Drop the session's state and actor; further calls raise :class:`SessionClosed`."""
        self._sync(self.aclose)
