"""The per-worker chunk engine: all due sessions of one device in one batched step.

The shape follows vLLM v1's engine core: :meth:`Engine.schedule` asks
:mod:`workers.step_scheduler` which sessions go into the next step (a plain
:class:`~workers.step_scheduler.StepPlan`, decided from a copy of the engine's sessions
and step times); :meth:`Engine.execute` runs it (one ``model.step`` over the plan's
states) and touches nothing else; :meth:`Engine.update` turns the output into
:class:`~workers.chunk.Chunk` records and hands them to each session's delivery callback.
This module is the mechanism around those decisions: the engine thread, the sessions'
request, acknowledgement and pause state, delivery, step timing and periodic checkpoints.

The engine runs on its own thread (not the worker's shared actor thread, which would
serialise every session actor behind the model). Everything that touches the device
(creating a session's state, moving it on or off the device) runs on that thread too,
through :meth:`Engine.call`, between two steps: so a call is also a chunk boundary,
which is what migration and suspension need.

When a step starts and which sessions join it (the batching window, chunks made ahead,
the quality valve) is :mod:`workers.step_scheduler`'s call. Flow control: a session
whose reader is ``max_unread`` chunks behind gets no more chunks until it reads (it is
not due; its acknowledgement wakes the engine).
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from kernels.state import SessionState
from storage.errors import CheckpointFenced
from storage.tiers import offload_to_host
from workers import step_scheduler
from workers.batching import BatchDecision
from workers.chunk import Chunk
from workers.engine_settings import EngineSettings
from workers.errors import SessionNotFound
from workers.host_buffers import HostBufferPool, HostCopy, ReceivePool
from workers.step_scheduler import EngineView, SessionView, StepPlan

logger = logging.getLogger(__name__)

#: Called by the engine thread with each new chunk, or with the exception that stopped it.
Deliver = Callable[["Chunk | BaseException"], None]



@dataclass(frozen=True, slots=True)
class EngineMetrics:
    """Counters of one engine since it started.

    Attributes
    ----------
    steps, chunks : int
        Steps run and chunks made (their ratio is the mean batch size formed).
    degraded_chunks : int
        Chunks made under the quality valve.
    waits : int
        Times a due step waited in the batching window.
    busy_s : float
        Seconds spent in model steps (against wall time: how busy the device was).
    """

    steps: int
    chunks: int
    degraded_chunks: int
    waits: int
    busy_s: float = 0.0

    @property
    def mean_batch(self) -> float:
        """Mean sessions per step (0 before the first step)."""
        return self.chunks / self.steps if self.steps else 0.0


@dataclass(slots=True)
class _Entry:
    """The engine's view of one attached session (mutated only under the engine lock)."""

    state: SessionState
    deliver: Deliver
    want: int  # produce chunks while state.chunk_index < want
    t_request: dict[int, float] = field(default_factory=dict)
    migrated: bool = False  # mark the next chunk as the first after a move
    acked: int = 0  # the client has every chunk before this index
    pending: list["HostCopy | SessionState"] = field(default_factory=list)  # host copies waiting for acks
    t_ready: float = 0.0  # when the reader's acknowledgement last let a blocked session through
    expect: bool = True  # its next request may come any moment (see workers.step_scheduler.decide)
    reading: bool = False  # its client asked and did not pause: chunks may be made ahead
    put_off: bool = False  # its first chunk was put after in-stream chunks once (split_due)

    def due(self, max_unread: int = 0) -> bool:
        if self.state.chunk_index >= self.want:
            return False
        return not max_unread or self.state.chunk_index - self.acked < max_unread

    def ahead(self, prearm: int, max_unread: int = 0) -> bool:
        """Its next chunk is not asked for yet but may be made ahead (``prearm`` beyond ``want``)."""
        if not self.reading or not self.want <= self.state.chunk_index < self.want + prearm:
            return False
        return not max_unread or self.state.chunk_index - self.acked < max_unread

    def view(self, session_id: str, max_unread: int, prearm: int) -> SessionView:
        """A copy of what the step decisions read of it (:mod:`workers.step_scheduler`)."""
        index = self.state.chunk_index
        return SessionView(
            session_id,
            (self.state.height, self.state.width),
            due=self.due(max_unread),
            ahead_by=index - self.want if prearm and self.ahead(prearm, max_unread) else None,
            oldest_request_s=min(self.t_request.values(), default=0.0),
            next_request_s=self.t_request.get(index),
            ready_s=self.t_ready,
            first=index == 0 and not self.put_off,
            expect=self.expect,
            reading=self.reading,
        )


@dataclass(frozen=True, slots=True)
class Detached:
    """A session taken out of the engine at a chunk boundary."""

    state: SessionState
    want: int
    t_request: dict[int, float]


class Engine:
    """Batches the due sessions of one worker into one model step per iteration.

    Parameters
    ----------
    model
        Object with ``step(list[SessionState]) -> list[np.ndarray]`` (``kernels.model``).
    worker : str
        Address written into every chunk.
    settings : EngineSettings
    checkpoint : callable, optional
        ``checkpoint(session_id, host_state)``, called off the engine thread with a host
        copy of the state every ``settings.checkpoint_every`` chunks.
    on_step : callable, optional
        ``on_step(plan, chunks)`` after each step (metrics); runs on the engine thread,
        so it must be quick.

    Examples
    --------
    >>> engine = Engine(model, "tcp://127.0.0.1:1234")        # doctest: +SKIP
    >>> engine.start()                                          # doctest: +SKIP
    >>> state = engine.call(model.new_session, "a fox", 0).result()   # doctest: +SKIP
    >>> engine.attach("s1", state, print, want=1)               # doctest: +SKIP
    """

    def __init__(
        self,
        model: Any,
        worker: str,
        settings: EngineSettings | None = None,
        *,
        device: Any = None,
        checkpoint: Callable[[str, SessionState], None] | None = None,
        on_step: Callable[[StepPlan, list[Chunk]], None] | None = None,
    ) -> None:
        self.model = model
        self.worker = worker
        self.settings = settings or EngineSettings()
        self.device = device
        self._checkpoint = checkpoint
        self._on_step = on_step
        self._entries: dict[str, _Entry] = {}
        self._commands: deque[tuple[Callable[..., Any], tuple, concurrent.futures.Future]] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._saver = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="turboserve-ckpt")
        #: Reused (pinned where CUDA is) host buffers of the periodic checkpoint copies.
        self.host_copies = HostBufferPool()
        #: Reused host buffers (pinned where CUDA is) that suspended states are parked in.
        self.parked_copies = ReceivePool(pin_memory=None)
        self._per_session_peak: float | None = None
        self._step_s: dict[int, float] = {}  # batch size -> recent step seconds (EWMA)
        self._step_min: dict[int, float] = {}  # batch size -> fastest step seconds (the shape, for join_ahead)
        self._valve_step_s: dict[int, float] = {}  # batch size -> recent degraded step seconds (the quality valve)
        self._free_s = -math.inf  # when the last step ended
        self.steps = 0
        self.chunks = 0
        self.degraded_chunks = 0
        self.waits = 0
        self.busy_s = 0.0
        self._stepping = False

    # ------------------------------------------------------------ lifecycle

    def start(self) -> "Engine":
        """Start the engine thread (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="turboserve-engine", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the current step; pending calls fail with ``RuntimeError``."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        while self._commands:
            _, _, fut = self._commands.popleft()
            fut.set_exception(RuntimeError("the engine stopped before running this call"))
        self._saver.shutdown(wait=True)

    # ------------------------------------------------------------ thread-safe API

    def call(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future:
        """Run ``fn(*args)`` on the engine thread between two steps; its future."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            if self._stopping:
                raise RuntimeError("the engine is stopped; no call can run on it")
            self._commands.append((fn, args, fut))
            self._cond.notify()
        return fut

    def attach(
        self,
        session_id: str,
        state: SessionState,
        deliver: Deliver,
        *,
        want: int | None = None,
        t_request: dict[int, float] | None = None,
        migrated: bool = False,
        acked: int | None = None,
    ) -> None:
        """Add a session whose state is on this engine's device.

        ``want`` is the exclusive index up to which chunks are wanted (default: none
        beyond the state's next chunk). ``acked``: the reader has every chunk before
        this index (default: the state's next chunk, so the unread window starts there).
        """
        entry = _Entry(
            state=state,
            deliver=deliver,
            want=state.chunk_index if want is None else want,
            t_request=dict(t_request or {}),
            migrated=migrated,
            acked=state.chunk_index if acked is None else acked,
        )
        with self._cond:
            if session_id in self._entries:
                raise ValueError(f"session {session_id!r} is already attached to this engine")
            self._entries[session_id] = entry
            self._cond.notify()

    def request(self, session_id: str, until: int, now: float | None = None) -> int:
        """Want chunks up to index ``until`` (exclusive); returns the next index to come.

        A lower ``until`` than already wanted changes nothing (requests are a high-water
        mark, so repeating one after a reconnect is harmless).
        """
        now = time.time() if now is None else now
        with self._cond:
            entry = self._entries.get(session_id)
            if entry is None:
                raise SessionNotFound(f"session {session_id!r} is not attached to the engine on {self.worker}")
            for i in range(max(entry.want, entry.state.chunk_index), until):
                entry.t_request.setdefault(i, now)
            entry.reading = True
            if until > entry.want:
                entry.want = until
                entry.expect = True
                self._cond.notify()
            return entry.state.chunk_index

    def ack(self, session_id: str, index: int) -> None:
        """The client has every chunk before ``index``: checkpoints up to it may be written."""
        with self._cond:
            entry = self._entries.get(session_id)
            if entry is None or index <= entry.acked:
                return
            blocked = entry.state.chunk_index < entry.want and not entry.due(self.settings.max_unread)
            entry.acked = index
            if blocked and entry.due(self.settings.max_unread):  # the reader caught up: go on
                entry.t_ready = time.time()
                self._cond.notify()
            ready = [c for c in entry.pending if _copied(c).chunk_index <= index]
            entry.pending = [c for c in entry.pending if _copied(c).chunk_index > index]
        for moot in ready[:-1]:  # the newest acknowledged one makes the older ones moot
            _release(moot)
        if ready:
            self._saver.submit(self._save, session_id, ready[-1])

    def hold(self, session_id: str) -> int:
        """Want no chunk beyond the ones in flight (pause); returns the next index."""
        with self._cond:
            entry = self._entries.get(session_id)
            if entry is None:
                raise SessionNotFound(f"session {session_id!r} is not attached to the engine on {self.worker}")
            entry.want = entry.state.chunk_index
            entry.t_request.clear()
            entry.expect = False
            entry.reading = False
            return entry.state.chunk_index

    def detach(self, session_id: str) -> concurrent.futures.Future:
        """Take a session out at the next chunk boundary; a future of :class:`Detached`."""
        return self.call(self._pop, session_id)

    def save(self, session_id: str, state: SessionState) -> concurrent.futures.Future:
        """Checkpoint ``state`` on the checkpoint thread, after any periodic save queued before.

        One thread writes every checkpoint of this engine, so two saves of one session
        never overlap.
        """
        if self._checkpoint is None:
            raise RuntimeError("this engine has no checkpoint store (turboserve.state.store)")
        return self._saver.submit(self._checkpoint, session_id, state)

    def offload(self, state: SessionState, release: bool = True) -> SessionState:
        """``state`` in host memory: a device state copied into a buffer of :attr:`parked_copies`.

        The suspend path (and host staging before a move) calls it through :meth:`call`,
        between two steps. The buffer comes back to the pool by itself when the host copy
        is gone (restored to the device, saved and dropped, sent); a state already on the
        host is returned as is (:func:`storage.tiers.offload_to_host`).
        """
        return offload_to_host(state, release=release, copy=lambda s: self.parked_copies.copy(s, non_blocking=True))

    def sessions(self) -> list[str]:
        """Ids of the attached sessions."""
        with self._cond:
            return list(self._entries)

    def metrics(self) -> EngineMetrics:
        """Counters since the engine started (steps, chunks, degraded chunks, waits, busy seconds)."""
        with self._cond:
            return EngineMetrics(self.steps, self.chunks, self.degraded_chunks, self.waits, self.busy_s)

    def idle(self) -> bool:
        """True when no step runs and none is due (benchmarks wait for it)."""
        with self._cond:
            return not self._stepping and not self._has_work()

    # ------------------------------------------------------------ the three stages

    def decide(self, now: float | None = None) -> BatchDecision:
        """Start the next step now, or wait (:func:`workers.step_scheduler.decide`).

        With ``settings.start_with_joins`` (off by default), the sessions
        :meth:`schedule` would put into a step starting now are not waited for when they
        are every reading or expected session.
        """
        now = time.time() if now is None else now
        cfg = self.settings
        joining = ()
        if cfg.batching and cfg.prearm_chunks and cfg.start_with_joins:
            joining = frozenset(self.schedule(now).session_ids)
        return step_scheduler.decide(now, self._view(), cfg, joining)

    def schedule(self, now: float | None = None) -> StepPlan:
        """The next step's sessions (:func:`workers.step_scheduler.schedule`).

        A session whose first chunk the plan puts after in-stream chunks is marked, so
        that its first chunk is put off at most once.
        """
        now = time.time() if now is None else now
        plan, put_off = step_scheduler.schedule(now, self._view(), self.settings)
        if put_off:
            with self._cond:
                for sid in put_off:
                    e = self._entries.get(sid)
                    if e is not None:
                        e.put_off = True
        return plan

    def _view(self) -> EngineView:
        """A copy of the sessions and step times the decisions read (taken under the lock)."""
        cfg = self.settings
        prearm = cfg.prearm_chunks if cfg.batching else 0
        memory_cap = self._memory_cap()
        with self._cond:
            return EngineView(
                tuple(e.view(sid, cfg.max_unread, prearm) for sid, e in self._entries.items()),
                step_s=dict(self._step_s),
                step_min=dict(self._step_min),
                valve_step_s=dict(self._valve_step_s),
                free_s=self._free_s,
                memory_cap=memory_cap,
            )

    def execute(self, plan: StepPlan) -> list[np.ndarray]:
        """One batched model step over the plan's states (advances each by one chunk)."""
        with self._cond:
            states = [self._entries[sid].state for sid in plan.session_ids]
        if plan.denoise_steps is None:
            return self.model.step(states)
        return self.model.step(states, denoise_steps=plan.denoise_steps)

    def update(self, plan: StepPlan, frames: list[np.ndarray], t_start: float, t_done: float) -> list[Chunk]:
        """Build the chunk records of a finished step and deliver them."""
        chunks = []
        ckpt: list[tuple[str, _Entry]] = []
        every = self.settings.checkpoint_every
        steps_used = plan.denoise_steps
        if steps_used is None:
            steps_used = getattr(getattr(self.model, "preset", None), "denoise_steps", None)
        with self._cond:
            for sid, out in zip(plan.session_ids, frames, strict=True):
                entry = self._entries[sid]
                index = entry.state.chunk_index - 1
                t_req = entry.t_request.pop(index, t_start)
                chunk = Chunk(
                    session_id=sid,
                    index=index,
                    frames=out,
                    latency_s=t_done - t_req,
                    worker=self.worker,
                    batch_size=plan.batch_size,
                    t_request_s=t_req,
                    t_start_s=t_start,
                    t_done_s=t_done,
                    migrated=entry.migrated,
                    degraded=plan.degraded,
                    denoise_steps=steps_used,
                )
                entry.migrated = False
                entry.expect = True
                chunks.append((entry, chunk))
                if every and self._checkpoint is not None and entry.state.chunk_index % every == 0:
                    ckpt.append((sid, entry))
        for entry, chunk in chunks:
            entry.deliver(chunk)
        for sid, entry in ckpt:
            # The copy is taken now: the next step replaces the state.
            try:
                copy = self._host_copy(entry.state)
            except Exception:  # a group's model could not merge its shards: no checkpoint this time
                logger.warning("checkpoint copy of session %s failed; skipped", sid, exc_info=True)
                continue
            with self._cond:
                ready = _copied(copy).chunk_index <= entry.acked
                if not ready:
                    entry.pending.append(copy)
            if ready:
                self._saver.submit(self._save, sid, copy)
        with self._cond:  # the counters move together: metrics() reads them under the lock
            self.steps += 1
            self.chunks += len(chunks)
            if plan.degraded:
                self.degraded_chunks += len(chunks)
        done = [c for _, c in chunks]
        if self._on_step is not None:
            self._on_step(plan, done)
        return done

    # ------------------------------------------------------------ internals

    def _pop(self, session_id: str) -> Detached:
        with self._cond:
            entry = self._entries.pop(session_id, None)
        if entry is None:
            raise SessionNotFound(f"session {session_id!r} is not attached to the engine on {self.worker}")
        for copy in entry.pending:  # never acknowledged here: the state itself goes on
            _release(copy)
        # A model serving a parallel group hands a session's state back whole (workers.parallel_group).
        export = getattr(self.model, "export_state", None)
        return Detached(entry.state if export is None else export(entry.state), entry.want, entry.t_request)

    def _host_copy(self, state: SessionState) -> "HostCopy | SessionState":
        """A host copy of ``state``: the model's own (a group's model merges its shards) or a pooled one."""
        copy = getattr(self.model, "host_copy", None)
        return self.host_copies.copy(state) if copy is None else copy(state)

    def _save(self, session_id: str, copy: "HostCopy | SessionState") -> None:
        state = _copied(copy)
        index = state.chunk_index
        try:
            self._checkpoint(session_id, state)
        except CheckpointFenced as exc:  # the session moved on (a newer owner serves it): as designed
            logger.info("checkpoint of session %s at chunk %d not written: %s", session_id, index, exc)
        except Exception:
            logger.warning("checkpoint of session %s at chunk %d failed", session_id, index, exc_info=True)
        finally:
            _release(copy)

    def _memory_cap(self) -> int:
        """Sessions that fit in free device memory, from the peak of earlier steps."""
        if self._per_session_peak is None or not self._on_cuda():
            return self.settings.max_batch
        import torch

        free, _ = torch.cuda.mem_get_info(self.device)
        return max(1, int(free // self._per_session_peak))

    def _on_cuda(self) -> bool:
        return self.device is not None and getattr(self.device, "type", str(self.device)).startswith("cuda")

    def _has_work(self) -> bool:
        return bool(self._commands) or any(e.due(self.settings.max_unread) for e in self._entries.values())

    def _run(self) -> None:
        wake: float | None = None  # waiting in the batching window until then
        while True:
            with self._cond:
                while not self._stopping and not self._has_work():
                    self._cond.wait()
                if wake is not None and not self._stopping and not self._commands:
                    # A request, an acknowledgement or a call ends the wait early.
                    self._cond.wait(max(0.0, wake - time.time()))
                if self._stopping:
                    return
                commands = list(self._commands)
                self._commands.clear()
            wake = None
            for fn, args, fut in commands:
                if not fut.set_running_or_notify_cancel():
                    continue
                try:
                    fut.set_result(fn(*args))
                except BaseException as exc:  # handed to the caller, not swallowed
                    fut.set_exception(exc)
            decision = self.decide()
            if not decision.start:
                if decision.wake_s is not None:
                    wake = decision.wake_s
                    self.waits += 1
                continue
            plan = self.schedule()
            if plan.batch_size:
                with self._cond:  # sessions left out of a step are not waited for again
                    for sid, e in self._entries.items():  # until they ask (or are served)
                        if sid not in plan.session_ids:
                            e.expect = False
                    self._stepping = True
                try:
                    self._step(plan)
                finally:
                    with self._cond:
                        self._stepping = False

    def _step(self, plan: StepPlan) -> None:
        measure = self._on_cuda()
        if measure:
            import torch

            torch.cuda.reset_peak_memory_stats(self.device)
            base = torch.cuda.memory_allocated(self.device)
        t_start = time.time()
        try:
            frames = self.execute(plan)
        except Exception as exc:
            logger.error("engine step over %s failed", plan.session_ids, exc_info=True)
            with self._cond:
                failed = [self._entries.pop(sid) for sid in plan.session_ids if sid in self._entries]
            for entry in failed:
                entry.deliver(exc)
            return
        t_done = time.time()
        with self._cond:
            self._free_s = t_done
            self.busy_s += t_done - t_start
            took = t_done - t_start
            if not plan.degraded:
                last = self._step_s.get(plan.batch_size)
                self._step_s[plan.batch_size] = took if last is None else 0.7 * last + 0.3 * took
                self._step_min[plan.batch_size] = min(took, self._step_min.get(plan.batch_size, math.inf))
            else:
                last = self._valve_step_s.get(plan.batch_size)
                self._valve_step_s[plan.batch_size] = took if last is None else 0.7 * last + 0.3 * took
        if measure:
            peak = (torch.cuda.max_memory_allocated(self.device) - base) / plan.batch_size
            self._per_session_peak = max(peak, self._per_session_peak or 0.0, 1.0)
        self.update(plan, frames, t_start, t_done)


def _copied(copy: "HostCopy | SessionState") -> SessionState:
    """The state of a checkpoint copy (pooled or the model's own)."""
    return copy.state if isinstance(copy, HostCopy) else copy


def _release(copy: "HostCopy | SessionState") -> None:
    """Give a pooled copy's buffer back (a model's own copy is left to the garbage collector)."""
    if isinstance(copy, HostCopy):
        copy.release()
