"""One Dask actor per session: holds the session's state handle on its worker.

The actor is the session's mailbox: clients raise its request high-water mark
(:meth:`SessionActor.request`) and long-poll its outbox (:meth:`SessionActor.poll`)
directly, so chunk bytes go worker -> client without touching the scheduler. Every
method is ``async`` and therefore runs on the worker's event loop, never on the
worker's single shared actor thread; device work goes to the worker's engine thread.

Delivery is acknowledged: a chunk stays in the outbox until a poll asks for chunks after
it. When the state moves (migration, resume elsewhere), the new actor takes the
unacknowledged chunks with it, so the stream continues without a gap or a repeat.

Every actor keeps a short list of **events** (:meth:`SessionActor.events`): where its
state came from (``started``, ``restored`` at chunk k, ``regenerated`` from chunk 0 and
why, ``migrated`` from a worker), ``suspended``/``resumed``, and ``failed`` when the
engine could not run the session. Events are plain dicts (``kind``, ``t``, ``worker``,
``id`` and the fields of the kind) and travel with the state on a move between
workers; the client reads them with :meth:`framework.Session.events`.

Every move of the state is a two-phase transaction driven by the scheduler plugin
(:class:`framework.session_mechanisms.SessionActors`): the new actor
:meth:`~SessionActor.prepare`-s a copy (the source stays frozen and keeps its state),
the registry commits the new **ownership epoch**, the new actor
:meth:`~SessionActor.commit`-s (claims the epoch in the checkpoint store and starts
serving) and only then does the source :meth:`~SessionActor.release` its state. A failure
before the commit aborts the move and the source serves on at a fresh epoch. An actor
whose epoch is older than the one in the store is stale: its checkpoint saves are
refused (:class:`storage.CheckpointFenced`) and its polls hand out no chunk.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from typing import Any

from distributed import get_worker
from distributed.core import Status
from distributed.protocol import to_serialize

from kernels.state import SessionState
from policies.types import TIERS
from workers.access import allowed, denied
from workers.chunk import Chunk
from workers.engine import Detached
from workers.errors import InvalidRequest, SessionClosed, SessionMoved, TransferError
from workers.host_lookup import get_host
from workers.ids import new_id
from workers.state_source import StateSource
from workers.transfer import WireState

logger = logging.getLogger(__name__)

#: Where a new actor's state comes from (``source["kind"]`` of :meth:`SessionActor.prepare`).
SOURCES = ("new", "peer", "store")
#: Events one actor keeps (the oldest are dropped first).
MAX_EVENTS = 256
#: Worker states in which an engine error is the session's own (not the worker shutting down).
RUNNING = (Status.init, Status.running, Status.paused)


async def handle_call(worker: Any, key: str, method: str, args: Any = (), kwargs: Any = None,
                      access_token: str | None = None) -> dict[str, Any]:
    """Worker handler of :data:`workers.actor_rpc.CALL_OP`: ``await actor.method(*args, **kwargs)``.

    Like Dask's ``actor_execute`` for async methods, but a missing actor (the normal
    aftermath of a move) is an answer, not an error logged on the worker. A call whose
    ``access_token`` the actor does not accept (:meth:`SessionActor.allows`) is refused
    with :class:`~workers.errors.SessionAccessDenied` before the method runs.
    """
    actor = worker.state.actors.get(key)
    if not isinstance(actor, SessionActor):
        return {"status": "missing", "worker": worker.address}
    if not actor.allows(access_token):
        return {"status": "error", "exception": to_serialize(denied(actor.session_id, access_token))}
    if method.startswith("_") or not callable(getattr(SessionActor, method, None)):
        exc = InvalidRequest(f"{method!r} is not a method of a session actor")
        return {"status": "error", "exception": to_serialize(exc)}
    try:
        result = await getattr(actor, method)(*args, **(kwargs or {}))
    except Exception as exc:
        return {"status": "error", "exception": to_serialize(exc)}
    return {"status": "OK", "result": to_serialize(result)}


def _bounded_put(ops: collections.OrderedDict, op: str, value: Any) -> None:
    """``ops[op] = value``, keeping the newest :data:`MAX_EVENTS` ids."""
    ops[op] = value
    while len(ops) > MAX_EVENTS:
        ops.popitem(last=False)


class SessionActor:
    """The worker-side half of a session (create it with ``actor=True``).

    Parameters
    ----------
    session_id, model, prompt, seed, height, width
        The session's identity; ``(model, prompt, seed)`` define every frame.

    access : tuple of str
        Digests (:func:`workers.access.digest`) of the access tokens whose calls this
        actor serves: the session's (its client) and the control plane's. Empty: every
        call (an actor made by hand, as in tests).

    The checkpoint store (for ``offload("disk")`` and recovery) is the worker's
    (:meth:`workers.plugin.ModelHost.checkpoints`). The states themselves (fresh, from
    the checkpoint, from a peer, and chunks made again) come from a
    :class:`workers.state_source.StateSource` the actor holds.
    """

    def __init__(
        self,
        session_id: str,
        model: str,
        prompt: str,
        seed: int,
        height: int | None,
        width: int | None,
        access: tuple[str, ...] = (),
    ) -> None:
        self.session_id = session_id
        self._access = tuple(access)
        self.model = model
        self._worker = get_worker()
        self._host = get_host(self._worker)
        self._source = StateSource(session_id, model, prompt, seed, height, width, host=self._host, worker=self._worker)
        self._outbox: dict[int, Chunk] = {}
        self._want = 0
        self._next = 0  # index of the next chunk the state will produce
        self._acked = 0  # the client has every chunk before this index
        self._attached = False
        self._parked: SessionState | None = None  # state held while detached (host or device)
        self._parked_req: dict[int, float] = {}
        self._moved = False
        self._closed = False
        self._prepared: tuple | None = None  # (state, want, t_request, migrated) until commit
        self._epoch: int | None = None  # ownership epoch, set by commit
        self._error: BaseException | None = None
        self._wakeup: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._events: collections.deque[dict[str, Any]] = collections.deque(maxlen=MAX_EVENTS)
        self._schedule: str | None = None  # scalars["prompt.schedule"] of the state (set_prompt)
        self._switch_save: SessionState | None = None  # host copy at the last switch, until acknowledged
        #: Index of the first chunk a state loaded from the store makes; chunks before it that the
        #: client still lacks exist only if they were carried along (see :meth:`_regenerate_gap`).
        self._restored_at = 0
        #: The tier of the last :meth:`offload` that :meth:`restore` has not undone (None: not offloaded).
        self._offloaded: str | None = None
        #: The unread chunks of a suspension to disk until the actor is released (the registry
        #: committed it) or :meth:`restore` takes it back (the registry never heard of it).
        self._held: dict[int, Chunk] | None = None
        #: Suspensions and resumptions run one at a time; ``_done_ops`` are those that carried an
        #: ``op`` id (newest last), ``_undone_ops`` what :meth:`undo` did for an id (None: it
        #: had not arrived, and is refused when it does).
        self._control = asyncio.Lock()
        self._done_ops: collections.OrderedDict[str, str] = collections.OrderedDict()
        self._undone_ops: collections.OrderedDict[str, str | None] = collections.OrderedDict()

    def allows(self, access_token: str | None) -> bool:
        """Whether a call carrying ``access_token`` may reach this actor (see ``access``)."""
        return not self._access or allowed(self._access, access_token)

    # ------------------------------------------------------------ internals

    @property
    def _engine(self):
        return self._host.engine(self.model)

    def _event(self) -> asyncio.Event:
        if self._wakeup is None:
            self._loop = asyncio.get_running_loop()
            self._wakeup = asyncio.Event()
        return self._wakeup

    def _deliver(self, item: Chunk | BaseException) -> None:
        # Engine thread -> event loop.
        self._loop.call_soon_threadsafe(self._on_item, item)

    def _on_item(self, item: Chunk | BaseException) -> None:
        if isinstance(item, BaseException) and self._worker.status not in RUNNING:
            # The worker is shutting down (an autoscaler or cluster closing it): its engine
            # stops, or its RPC pool closes, under the step. Not the session's failure: the
            # client relocates, and the registry restores the session from its checkpoint
            # once the worker has left (issue 13).
            self._error = SessionMoved(f"session {self.session_id!r}: worker {self._worker.address} is shutting "
                                       f"down ({self._worker.status.name}; the step ended with {item!r})")
            self._attached = False
        elif isinstance(item, BaseException):
            self._error = item
            self._attached = False
            self._record("failed", chunk=self._next, why=f"the engine could not run it: {item!r}")
        else:
            self._outbox[item.index] = item
            self._next = max(self._next, item.index + 1)
        self._event().set()

    async def _on_engine(self, fn, *args) -> Any:
        return await asyncio.wrap_future(self._engine.call(fn, *args))

    def _attach(self, state: SessionState, want: int, t_request: dict[int, float], migrated: bool) -> None:
        self._event()
        self._schedule = state.scalars.get("prompt.schedule")  # the prompt switches so far (for a replay)
        self._next = state.chunk_index
        self._want = max(self._want, want, state.chunk_index)
        self._engine.attach(self.session_id, state, self._deliver, want=self._want, t_request=t_request, migrated=migrated)
        self._attached = True

    async def _detach(self) -> Detached:
        detached = await asyncio.wrap_future(self._engine.detach(self.session_id))
        self._attached = False
        self._want = max(self._want, detached.want)
        self._event().set()  # waiting pollers re-check: the state is off the engine now
        return detached

    def _record(self, kind: str, **fields: Any) -> dict[str, Any]:
        """Append an event (plain data) to the session's event list."""
        event = {"kind": kind, "t": time.time(), "worker": self._worker.address, "id": new_id(), **fields}
        self._events.append(event)
        return event

    def _check_open(self) -> None:
        if self._closed:
            raise SessionClosed(f"session {self.session_id!r} is closed; open a new session")
        if self._moved:
            raise SessionMoved(f"session {self.session_id!r} left worker {self._worker.address}")

    def _info(self, state: SessionState | None) -> dict[str, Any]:
        return {
            "worker": self._worker.address,
            "device": self._host.device,
            "chunk_index": self._next,
            "state_bytes": 0 if state is None else int(state.nbytes),
        }

    # ------------------------------------------------------------ lifecycle (scheduler side)

    async def prepare(self, source: dict[str, Any]) -> dict[str, Any]:
        """Phase one of a state move: create or fetch the state and hold it, not yet serving.

        ``source["kind"]``: ``"new"`` (fresh from the prompt and seed), ``"store"`` (the
        last checkpoint, or fresh if there is none: generation is deterministic, so the
        chunks after it are regenerated identically) or ``"peer"`` (a copy of the state
        and the unacknowledged chunks of the actor ``source["key"]`` on
        ``source["address"]``, over worker-to-worker comms; the source keeps its state
        until it is told to :meth:`release` it). Nothing is produced or handed out
        until :meth:`commit`. The answer carries ``owner_epoch``, the epoch the
        checkpoint store records for the session (0: none), so the registry can commit
        a higher one.
        """
        kind = source.get("kind")
        if kind not in SOURCES:
            raise InvalidRequest(f"unknown state source {kind!r}; expected one of {SOURCES}")
        self._check_open()
        self._event()
        self._events.extend(source.get("events", ()))  # carried by the control plane, if any
        want, t_request, migrated = int(source.get("want", 0)), {}, kind != "new"
        if kind == "new":
            state = await self._on_engine(self._source.fresh)
            self._record("started", from_chunk=0, why="new session")
        elif kind == "store":
            state, event = await self._on_engine(self._source.load)
            self._record(**event)
            self._outbox.update({c.index: c for c in source.get("unread", ())})
            self._restored_at = state.chunk_index
        else:
            state, payload, transport = await self._source.pull(source)
            self._outbox.update({c.index: c for c in payload["outbox"]})
            want, t_request = payload["want"], payload["t_request"]
            self._restored_at = int(payload.get("restored_at", 0))  # a gap not regenerated yet moves along
            migrated = source.get("migrated", True)
            self._events.extend(e for e in payload.get("events", ()) if e not in self._events)
            same = {"id": source["event_id"]} if source.get("event_id") else {}  # the registry records it too
            self._record("migrated", from_worker=source["address"], chunk=state.chunk_index, transport=transport, **same)
        self._prepared = (state, want, t_request, migrated)
        self._next = state.chunk_index
        store = self._host.checkpoints()
        stored = None if store is None else await asyncio.to_thread(store.owner_epoch, self.session_id)
        return {**self._info(state), "owner_epoch": stored or 0}

    async def commit(self, epoch: int) -> dict[str, Any]:
        """Phase two: this actor owns the session at ownership ``epoch`` and serves it.

        Claims the epoch in the checkpoint store (so the saves of any older owner are
        refused from now on, :meth:`storage.CheckpointStore.claim`), then attaches the
        prepared state to the engine. On a source whose move failed (it still holds
        its frozen state), it takes the session back at the new epoch; a host-parked
        state stays parked. Raises :class:`storage.CheckpointFenced` when the store
        records a higher epoch (a newer owner exists).
        """
        self._check_open()
        store = self._host.checkpoints()
        if store is not None:
            from storage import CheckpointFenced

            try:
                await asyncio.to_thread(store.claim, self.session_id, epoch)
            except CheckpointFenced:
                raise
            except Exception as exc:  # a damaged pointer document: serve unfenced, and say so
                logger.warning("session %s: could not record ownership epoch %d in %s: %r",
                               self.session_id, epoch, store.url, exc)
                self._record("unfenced", epoch=epoch, why=f"the store refused the epoch: {exc!r}")
        self._epoch = epoch
        if self._prepared is not None:
            (state, want, t_request, migrated), self._prepared = self._prepared, None
            self._attach(state, want, t_request, migrated)
            return {**self._info(state), "epoch": epoch}
        return {**(await self.thaw()), "epoch": epoch}

    async def abort(self) -> dict[str, Any]:
        """Drop a prepared state that was never committed (the move failed; the source serves on)."""
        self._prepared, self._outbox, self._moved = None, {}, True
        self._event().set()
        return self._info(None)

    async def release(self) -> dict[str, Any]:
        """The move committed elsewhere: drop the frozen state; readers go to the registry."""
        self._parked, self._outbox, self._moved = None, {}, True
        self._event().set()
        return self._info(None)

    # ------------------------------------------------------------ the client's stream

    async def request(self, until: int, acked: int | None = None) -> int:
        """Want chunks up to index ``until`` (exclusive); returns the next index to come.

        ``acked`` (optional): the client has every chunk before it, as :meth:`poll`'s
        ``after`` says. A client that reads through chunk futures polls no more, so
        without it a chunk it streamed last would stay unacknowledged and hold the
        session at ``engine.max-unread-chunks``.
        """
        self._check_open()
        if until < 0:
            raise InvalidRequest(f"chunk index {until} is negative; ask for an index >= 0")
        if acked is not None:
            self._acknowledge(acked)
        if not self._attached:
            if self._error is not None:
                raise self._error
            raise SessionMoved(f"session {self.session_id!r} is suspended on {self._worker.address}")
        self._want = max(self._want, until)
        return self._engine.request(self.session_id, until)

    async def poll(self, after: int, timeout: float = 5.0) -> list[Chunk]:
        """Chunks with index >= ``after``, waiting up to ``timeout`` s for the first one.

        Asking for ``after`` acknowledges (and drops) every chunk before it. Raises
        :class:`SessionMoved` once the state is gone and nothing is left to read.
        """
        self._acknowledge(after)
        if after < self._restored_at and self._attached:
            await self._regenerate_gap(after)
        event = self._event()
        deadline = time.monotonic() + timeout
        while not self._outbox:
            if self._error is not None:
                raise self._error
            self._check_open()
            if not self._attached:  # parked (suspended, or frozen for a move): ask the registry
                raise SessionMoved(f"session {self.session_id!r} is not on the device of {self._worker.address}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            event.clear()
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except asyncio.TimeoutError:
                return []
        chunks = [self._outbox[i] for i in sorted(self._outbox)]
        if await self._fenced():
            raise SessionMoved(f"session {self.session_id!r} has a newer owner than {self._worker.address} "
                               f"(epoch {self._epoch} is stale); ask the registry where it is")
        return chunks

    def _acknowledge(self, after: int) -> None:
        """The client has every chunk before ``after``: drop them, and let the engine make further ahead."""
        for i in [i for i in self._outbox if i < after]:
            del self._outbox[i]
        self._advance_ack(after)

    def _advance_ack(self, after: int) -> None:
        """Move the acknowledged prefix up to ``after``: the engine may make further ahead, a switch be saved."""
        if self._attached and after > self._acked:
            self._acked = after
            self._engine.ack(self.session_id, after)
            self._save_switch()

    async def _fenced(self) -> bool:
        """Whether a newer owner claimed the session in the checkpoint store: this actor is stale.

        A stale owner hands out no chunk; one that still produces (its worker was
        declared dead but lives on) is taken off the engine and drops its state.
        """
        store = self._host.checkpoints()
        if self._epoch is None or store is None:
            return False
        stored = await asyncio.to_thread(store.owner_epoch, self.session_id)
        if stored is None or stored <= self._epoch:
            return False
        if self._attached:
            try:
                await self._detach()
            except Exception:
                pass  # the engine already dropped it
            self._parked, self._outbox, self._moved = None, {}, True
        if not any(e["kind"] == "fenced" for e in self._events):
            self._record("fenced", epoch=self._epoch, owner_epoch=stored,
                         why="a newer owner claimed the session in the checkpoint store")
        return True

    async def take(self, index: int, timeout: float = 5.0) -> Chunk | None:
        """Hand chunk ``index`` to the task of its Dask future (:mod:`workers.chunk_futures`).

        Waits up to ``timeout`` s for it (None when it is not made yet). Taking a chunk
        takes it out of the outbox: from then on the task's result holds it, in this
        worker's memory, and the acknowledged prefix (checkpoints, flow control) is
        everything before the oldest chunk still in the outbox.

        A chunk handed out before (its future's data died with its worker after the
        session's checkpoint passed it, and Dask recomputes the future) is made again
        from the session's identity: a fresh state stepped ``index + 1`` times on the
        engine thread (generation is deterministic, so it is the same chunk).
        """
        event = self._event()
        deadline = time.monotonic() + timeout
        while index not in self._outbox:
            if self._error is not None:
                raise self._error
            self._check_open()
            if index < self._next:
                logger.warning("session %s: chunk %d was handed out before and its future's data is gone; "
                               "regenerating it from chunk 0 (%d steps)", self.session_id, index, index + 1)
                t0 = time.time()
                frames = await self._on_engine(self._source.replay, index, self._schedule)
                self._record("replayed", chunk=index, why="its future's data was lost with a worker")
                return Chunk(self.session_id, index, frames, time.time() - t0, self._worker.address, 1,
                             t0, t0, time.time())
            if not self._attached:
                raise SessionMoved(f"session {self.session_id!r} is not on the device of {self._worker.address}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            event.clear()
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except asyncio.TimeoutError:
                return None
        if await self._fenced():
            raise SessionMoved(f"session {self.session_id!r} has a newer owner than {self._worker.address}")
        chunk = self._outbox.pop(index)
        self._advance_ack(min(self._outbox, default=self._next))
        return chunk

    async def _regenerate_gap(self, after: int) -> None:
        """Make again the chunks from ``after`` on that the restored state starts past and nobody carried.

        A disk checkpoint can be ahead of what the client has read: ``offload("disk")``
        saves the state with its unread chunks, which travel in memory (the actor's
        answer, the registry, the actor that resumes the session). When the worker that
        holds them dies first (while the state is written, or after the resume
        committed) the session is recovered from that checkpoint without them, and its
        stream would wait for them for ever (issue 13). They are made again here, in one
        pass from a fresh state, when the client asks for them: generation is
        deterministic, so they are the same frames (not for chunks the quality valve had
        made with fewer denoising steps).
        """
        missing = [i for i in range(after, self._restored_at) if i not in self._outbox]
        if not missing:
            return
        logger.warning("session %s: chunks %d..%d were lost with a worker before the client read them; "
                       "regenerating them from chunk 0 (%d steps)", self.session_id, missing[0], missing[-1],
                       missing[-1] + 1)
        t0 = time.time()
        frames = await self._on_engine(self._source.replay_range, missing[0], missing[-1] + 1, self._schedule)
        t_done = time.time()
        for i in missing:
            if i not in self._outbox and not self._moved and not self._closed:
                self._outbox[i] = Chunk(self.session_id, i, frames[i - missing[0]], t_done - t0, self._worker.address,
                                        1, t0, t0, t_done)
        self._record("replayed", chunk=missing[0], chunks=len(missing),
                     why="unread chunks were lost with a worker; the checkpoint was past them")

    async def set_prompt(self, prompt: str) -> int:
        """Steer the session with ``prompt`` from the next chunk not started yet; returns its index.

        The state is taken off the engine at the chunk boundary, switched
        (:meth:`kernels.model.StreamingVideoModel.set_prompt`, which records the switch in
        the state) and attached again; a suspended (host-parked) state is switched where
        it is. Chunks made before the boundary (also one made ahead) keep the old prompt.
        With a checkpoint store the new schedule is recorded there before the switched
        state goes back on the engine (:meth:`storage.CheckpointStore.record_prompts`); if
        that write fails, the state goes back unswitched and the error is raised.
        """
        self._check_open()
        if not isinstance(prompt, str) or not prompt:
            raise InvalidRequest(f"a prompt is a non-empty string, got {prompt!r}")
        model = self._engine.model
        store = self._host.checkpoints()
        if self._attached:
            detached = await self._detach()
            try:
                state = await self._on_engine(model.set_prompt, detached.state, prompt)
                await self._record_switch(store, state)
            except BaseException:
                self._attach(detached.state, detached.want, detached.t_request, migrated=False)  # no switch
                raise
            copy = await self._on_engine(state.to, "cpu")
            self._attach(state, detached.want, detached.t_request, migrated=False)
        elif self._parked is not None:
            state = await self._on_engine(model.set_prompt, self._parked, prompt)
            await self._record_switch(store, state)
            self._parked = state
            copy = await self._on_engine(state.to, "cpu")
            self._schedule = state.scalars.get("prompt.schedule")
        else:
            raise SessionMoved(f"session {self.session_id!r} has no state on {self._worker.address}")
        self._record("prompt", chunk=state.chunk_index, prompt=prompt)
        if store is not None:
            # A recovery must not lose the switch: it was recorded in the store above,
            # before any chunk under it could be made (a recovery from an older checkpoint
            # makes it again, StateSource.load), and the switched state is checkpointed as
            # soon as the client holds every chunk before it (at once when it does already).
            self._switch_save = copy
            self._save_switch()
        return state.chunk_index

    async def _record_switch(self, store: Any, state: Any) -> None:
        """Record the switched state's prompt schedule in the checkpoint store (none: nothing to do)."""
        if store is not None:
            await asyncio.to_thread(store.record_prompts, self.session_id, state.scalars["prompt.schedule"])

    def _save_switch(self) -> None:
        """Checkpoint the state of the last prompt switch once every chunk before it is acknowledged."""
        copy = self._switch_save
        if copy is not None and self._acked >= copy.chunk_index and not self._moved:
            self._switch_save = None
            self._engine.save(self.session_id, copy)

    # ------------------------------------------------------------ control (scheduler side)

    async def pause(self) -> dict[str, Any]:
        """Idle on the device: no chunk beyond the one in flight."""
        self._check_open()
        if self._attached:
            self._want = self._engine.hold(self.session_id)
        return self._info(None)

    async def offload(self, tier: str, op: str | None = None) -> dict[str, Any]:
        """Take the state off the device at a chunk boundary: to host memory or to disk.

        ``op``: an id the control plane can abort the call by (:meth:`undo`).
        """
        async with self._control:
            self._check_op(op)
            info = await self._offload(tier)
            self._op_done(op, "offload")
            return info

    def _check_op(self, op: str | None) -> None:
        if op is not None and op in self._undone_ops:
            raise TransferError(f"session {self.session_id!r}: call {op} arrived on {self._worker.address} after "
                                "the control plane had given it up; nothing was done")

    def _op_done(self, op: str | None, kind: str) -> None:
        if op is not None:
            _bounded_put(self._done_ops, op, kind)

    async def undo(self, op: str) -> dict[str, Any]:
        """Abort the suspension or resumption ``op`` that the control plane gave up on (its answer was late).

        Done already: undone (a suspension is restored, to disk too, since the actor
        keeps the state until it is released; a resumption is offloaded to host memory
        again). Not arrived yet: refused when it arrives. The answer's ``undid`` says
        which (None: nothing had been done); asking again answers the same (the
        control plane repeats an ``undo`` whose answer it did not get).
        """
        async with self._control:
            if op not in self._undone_ops:
                kind = self._done_ops.pop(op, None)
                undid = None
                if kind == "offload":
                    await self._restore()
                    undid = "a suspension that arrived late"
                elif kind == "restore":
                    await self._offload("host")
                    undid = "a resumption that arrived late"
                _bounded_put(self._undone_ops, op, undid)
            return {**self._info(self._parked), "attached": self._attached, "undid": self._undone_ops[op]}

    async def _offload(self, tier: str) -> dict[str, Any]:
        self._check_open()
        if tier not in TIERS:
            raise InvalidRequest(f"unknown offload tier {tier!r}; expected one of {TIERS}")
        if tier == "disk" and self._host.checkpoints() is None:
            raise InvalidRequest("suspend to disk needs a checkpoint store (turboserve.state.store)")
        if self._attached:
            detached = await self._detach()
            self._parked, self._parked_req = detached.state, detached.t_request
        state = self._parked
        if tier == "host":
            # Into a reused (pinned where CUDA is) buffer of the engine's, back when resumed.
            self._parked = await self._on_engine(self._engine.offload, state)
            self._offloaded = "host"
            self._record("suspended", tier="host", chunk=state.chunk_index)
            if self._host.checkpoints() is not None and self._acked >= state.chunk_index:
                # A checkpoint too, not waited for: if this worker dies while the session
                # sleeps in its memory, recovery starts from here instead of further back.
                # (Only with nothing unread: a recovery must not skip unread chunks.)
                self._engine.save(self.session_id, self._parked)
            return self._info(state)
        await asyncio.wrap_future(self._engine.save(self.session_id, state))
        self._record("suspended", tier="disk", chunk=state.chunk_index)
        unread = [self._outbox[i] for i in sorted(self._outbox)]
        # Readers go to the registry. The state and the unread chunks stay here, out of reach,
        # until the actor is released (the registry committed the suspension) or restore() takes
        # the suspension back (the registry never got this answer: it gave up on it, issue 13).
        self._held, self._outbox = dict(self._outbox), {}
        self._offloaded, self._moved = "disk", True
        self._event().set()
        # The unread chunks travel with the record (rare: a reader that lags behind a
        # suspension), so the actor that resumes from the checkpoint can hand them out.
        # So do the events, for a control plane that passes them on (``source["events"]``).
        return {**self._info(state), "unread": unread, "events": list(self._events)}

    async def restore(self, op: str | None = None) -> dict[str, Any]:
        """Bring a host-parked state back onto this worker's device (``op``: as for :meth:`offload`)."""
        async with self._control:
            self._check_op(op)
            info = await self._restore()
            self._op_done(op, "restore")
            return info

    async def _restore(self) -> dict[str, Any]:
        # Also takes back a suspension to disk that was not committed (the actor not released
        # yet): how :meth:`undo` aborts a suspension whose answer the control plane gave up on.
        if self._held is not None and self._parked is not None and not self._closed:
            self._outbox, self._held, self._moved = {**self._held, **self._outbox}, None, False
        self._check_open()
        if self._attached:
            return self._info(None)
        state = await self._on_engine(self._source.to_device, self._parked)
        self._parked, self._offloaded = None, None
        self._attach(state, self._want, self._parked_req, migrated=False)
        self._record("resumed", chunk=state.chunk_index)
        return self._info(state)

    async def freeze(self) -> dict[str, Any]:
        """Stop at the next chunk boundary and keep the state for :meth:`export`."""
        self._check_open()
        if self._attached:
            detached = await self._detach()
            self._parked, self._parked_req = detached.state, detached.t_request
        return self._info(self._parked)

    async def thaw(self) -> dict[str, Any]:
        """Undo :meth:`freeze`: attach the frozen state again (a move failed before its commit)."""
        if self._moved or self._attached or self._parked is None:
            return self._info(None)
        if self._offloaded is not None:
            return self._info(self._parked)  # suspended (host-parked): stays suspended
        state, self._parked = self._parked, None
        self._attach(state, self._want, self._parked_req, migrated=False)
        return self._info(state)

    def _check_exportable(self) -> None:
        """Refuse an export while the state is served: the move it belongs to was given up.

        A move freezes its source first (the plugin's ``freeze``); a suspended source is
        parked already. A target whose ``prepare`` ran late (its worker was frozen and the
        scheduler aborted the move, handing the session back to this actor) must not take
        the state off the engine again: the session would stay parked while the registry
        has it served here (issue 13).
        """
        if self._attached:
            raise TransferError(f"session {self.session_id!r} is served on {self._worker.address}, not frozen "
                                "for a move: the move that asks for its state was given up")

    async def export(self) -> dict[str, Any]:
        """A copy of the frozen state and the unread chunks, for the actor that replaces this one.

        The state stays here until :meth:`release` (the move committed) or
        :meth:`commit` (it failed: this actor serves on). Only a frozen or suspended
        state is exported: an actor that serves refuses (:meth:`_check_exportable`).
        """
        self._check_open()
        self._check_exportable()
        if self._parked is None:
            raise TransferError(f"session {self.session_id!r} has no state on {self._worker.address} to export")
        # release=False: a device state keeps its tensors here, so a move that fails
        # after the export serves on from them (``commit``); ``release`` drops them.
        host = await self._on_engine(self._engine.offload, self._parked, False)
        # The source keeps its frozen state and outbox until the move commits (``release``)
        # or fails (``commit`` here again, at a new epoch).
        return {"state": WireState.of(host), **self._move_payload()}  # one out-of-band frame per tensor

    def _move_payload(self) -> dict[str, Any]:
        """What travels with the state of a move besides the state: the unread chunks, requests, events."""
        return {
            "outbox": [self._outbox[i] for i in sorted(self._outbox)],
            "want": self._want,
            "t_request": dict(self._parked_req),
            "events": list(self._events),
            "restored_at": self._restored_at,
        }

    async def export_p2p(self, peer_device: str) -> dict[str, Any]:
        """Like :meth:`export`, but the state goes over a private 2-rank process group.

        Returns the rendezvous at once and sends from a thread of its own (group set-up
        is collective and blocks until the receiver joins); NCCL when both ends are
        CUDA devices, gloo otherwise.
        """
        from workers.p2p import send_state
        from workers.p2p_group import Rendezvous

        self._check_open()
        self._check_exportable()
        if self._parked is None:
            raise TransferError(f"session {self.session_id!r} has no state on {self._worker.address} to export")
        both_cuda = peer_device.startswith("cuda") and self._parked.device.type == "cuda"
        host = self._worker.address.split("://")[-1].rsplit(":", 1)[0]
        rendezvous = Rendezvous.new("nccl" if both_cuda else "gloo", host=host)
        state = self._parked  # kept until the move commits (``release``) or fails (``commit``)
        payload = {"rendezvous": rendezvous, **self._move_payload()}
        self._sending = asyncio.ensure_future(asyncio.to_thread(send_state, state, rendezvous=rendezvous, timeout=60))
        return payload

    async def close(self) -> dict[str, Any]:
        """Drop the state; readers get :class:`SessionClosed`."""
        if self._attached:
            try:
                await self._detach()
            except Exception:
                pass  # the engine already dropped it (failed step)
        self._parked, self._outbox, self._closed, self._attached, self._held = None, {}, True, False, None
        self._event().set()
        return self._info(None)

    async def events(self) -> list[dict[str, Any]]:
        """What happened to the session, oldest first (see the module docstring).

        Answers after a close or a move too (the list stays with this actor until it is
        released), so a client can read why its stream ended.
        """
        return list(self._events)

    async def info(self) -> dict[str, Any]:
        """Where the session is and how far it got."""
        return {**self._info(self._parked), "attached": self._attached, "want": self._want,
                "unread": len(self._outbox), "moved": self._moved, "closed": self._closed,
                "offloaded": self._offloaded}
