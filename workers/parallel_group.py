"""A parallel group of k Dask workers serving its sessions together (the worker side).

The group's **leader** keeps its ordinary :class:`~workers.engine.Engine`: its session
actors, batching, flow control and chunk delivery are unchanged. Only the engine's
model is swapped, at a chunk boundary (:meth:`Engine.call`), for a :class:`GroupModel`,
which steps the sessions at degree ``k`` (:class:`kernels.parallel.ParallelModel`)
and, before each step, tells every **follower** over Dask's worker-to-worker comms
which sessions the step holds (:class:`FollowerRank` runs the same step on its own
thread, and the collectives inside pair the ranks up). The followers' own engines
stay idle: a follower serves nothing alone while it is in a group.

Re-sharding is lazy and local to a chunk boundary: a degree-1 state in a group step
(every session the leader held when the group formed, and any session placed on or
moved to the group later) is cut by heads there and then, the followers' shards going
with that step's command; until the step succeeds the leader keeps the full state, and
if it fails the group falls back to degree 1 with it (:attr:`GroupModel.broken`).
Every state that leaves the engine (detach for a move or a suspension, a checkpoint
copy) is merged back first (:meth:`GroupModel.export_state`, :meth:`GroupModel.host_copy`),
so nothing outside the group ever sees a shard. :meth:`GroupModel.dissolve` merges every
session back in place (the split to degree 1).

Messages are one worker RPC op, :data:`GROUP_OP`, dispatched by :func:`handle_group`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from distributed.protocol import to_serialize

from kernels.parallel import ParallelModel, RankGroup, connect_group, layout, merge_shards, shard_state
from kernels.state import SessionState
from workers.actor_rpc import BoundedRPC
from workers.errors import InvalidRequest, SessionMoved, TransferError
from workers.transfer import WireState

logger = logging.getLogger(__name__)

#: Worker RPC op of every group message (join, step, take, dissolve, leave).
GROUP_OP = "turboserve_group"
#: Scheduler stream op a leader sends when a group step failed (``group_id``, ``why``, ``sessions_lost``).
GROUP_FAILED_OP = "turboserve-group-failed"
#: Where a worker keeps its group roles (``worker.extensions``).
EXTENSION = "turboserve-groups"
#: Scalar naming a session's shards across the ranks of a group.
SHARD_KEY = "shard.key"
#: Seconds a rank waits for the others (joining, each step).
DEFAULT_TIMEOUT_S = 60.0


def _wire(state: SessionState) -> WireState:
    return WireState.of(state if state.device.type == "cpu" else state.to("cpu"))


class FollowerRank:
    """Rank ``r > 0`` of a group on a follower worker: its shards and its step thread."""

    def __init__(self, group_id: str, model: Any, group: RankGroup, timeout_s: float) -> None:
        self.group_id = group_id
        self.model = model
        self.group = group
        self.parallel = ParallelModel(model, group, group.rank, group.degree, timeout_s=timeout_s)
        self.shards: dict[str, SessionState] = {}
        self.steps = 0
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"turboserve-group-{group_id}")

    def run(self, fn: Callable[..., Any], *args: Any) -> "asyncio.Future[Any]":
        """``fn(*args)`` on this rank's thread (steps and takes run in the leader's order)."""
        return asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    def step(self, keys: Sequence[str], denoise_steps: int | None, new: dict[str, WireState]) -> None:
        """The follower's half of one group step (the leader runs its half at the same time)."""
        for key, wire in new.items():
            self.shards[key] = wire.to_state().to(self.model.device)
        missing = [k for k in keys if k not in self.shards]
        if missing:
            raise TransferError(f"group {self.group_id!r} rank {self.group.rank} has no shard of {missing}")
        self.parallel.step([self.shards[k] for k in keys], denoise_steps=denoise_steps)
        self.steps += 1

    def take(self, key: str, release: bool) -> WireState:
        """This rank's shard of ``key`` on the host (dropped here with ``release``)."""
        shard = self.shards.pop(key) if release else self.shards[key]
        return _wire(shard)

    def close(self) -> None:
        self._thread.shutdown(wait=False)
        self.group.close()


class GroupModel:
    """The leader engine's model while its worker leads a group (see the module docstring).

    Any attribute but the ones below is the plain model's (``preset``, ``new_session``...).

    Parameters
    ----------
    model
        The leader's :class:`kernels.model.StreamingVideoModel`.
    group
        The leader's end (rank 0) of the group.
    followers
        Follower addresses in rank order (rank 1, 2, ...).
    send
        ``send(address, message) -> concurrent future`` of the follower's answer
        (a :data:`GROUP_OP` call); called from the engine thread.
    """

    def __init__(
        self,
        model: Any,
        group: RankGroup,
        group_id: str,
        followers: Sequence[str],
        send: Callable[[str, dict[str, Any]], concurrent.futures.Future],
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        on_failure: Callable[[str, bool], None] | None = None,
    ) -> None:
        self.plain = model
        #: ``on_failure(why, sessions_lost)``, once, when a group step fails (tells the scheduler).
        self._on_failure = on_failure
        self.group = group
        self.group_id = group_id
        self.followers = tuple(followers)
        self.degree = len(self.followers) + 1
        self.parallel = ParallelModel(model, group, 0, self.degree, timeout_s=timeout_s)
        self._send = send
        self._timeout_s = timeout_s
        self._states: dict[str, SessionState] = {}  # sharded sessions by key
        #: Set when a step failed before any state depended on the group: it serves at degree 1 since.
        self.broken: str | None = None
        #: Set when a follower is gone: the shards cannot be merged any more (see :meth:`abandon`).
        self.lost: str | None = None
        self.steps = 0
        #: Seconds the first steps spent cutting states and sending shards (the re-shard cost).
        self.reshard_s = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.plain, name)

    # ------------------------------------------------------------ the step

    def step(self, states: Sequence[SessionState], *, denoise_steps: int | None = None) -> list[np.ndarray]:
        """One chunk of every state at the group's degree (frames come from this rank)."""
        if self.broken is not None:
            return self.plain.step(states, denoise_steps=denoise_steps)
        t0 = time.perf_counter()
        backups: dict[int, tuple[dict, dict]] = {}
        new: list[dict[str, WireState]] = [{} for _ in self.followers]
        keys = []
        for s in states:
            if layout(s) == (0, 1):
                key = uuid.uuid4().hex
                backups[id(s)] = (s.tensors, dict(s.scalars))
                s.scalars[SHARD_KEY] = key
                for r in range(1, self.degree):
                    new[r - 1][key] = _wire(shard_state(s, r, self.degree))
                lead = shard_state(s, 0, self.degree)
                s.tensors, s.scalars = lead.tensors, lead.scalars
                self._states[key] = s
            keys.append(str(s.scalars[SHARD_KEY]))
        if backups:
            self.reshard_s += time.perf_counter() - t0
        try:
            pending = [
                self._send(addr, {"action": "step", "group_id": self.group_id, "keys": keys,
                                  "denoise_steps": denoise_steps, "new": new[i]})
                for i, addr in enumerate(self.followers)
            ]
            frames = self.parallel.step(states, denoise_steps=denoise_steps)
            for fut in pending:
                fut.result(self._timeout_s)
        except Exception as exc:
            if len(backups) == len(states) and self.steps == 0:
                # Nothing depends on the group yet: back to degree 1 with the full states.
                for s in states:
                    s.tensors, s.scalars = backups[id(s)]
                self._states.clear()
                self.broken = f"the group's first step failed: {exc!r}"
                logger.warning("group %s: %s; serving at degree 1", self.group_id, self.broken)
                self._report(self.broken, False)
                return self.plain.step(states, denoise_steps=denoise_steps)
            # The followers' shards are gone or out of step: the sessions restart from their
            # checkpoints (the scheduler does it when it sees the worker leave); the clients
            # ask the registry where the sessions went instead of giving up on them.
            if self.lost is None:
                self.lost = f"a group step failed: {exc!r}"
                self._report(self.lost, True)
            raise SessionMoved(
                f"parallel group {self.group_id!r} lost a rank ({exc!r}); its sessions restart from their checkpoints"
            ) from exc
        self.steps += 1
        return frames

    def _report(self, why: str, sessions_lost: bool) -> None:
        if self._on_failure is not None:
            try:
                self._on_failure(why, sessions_lost)
            except Exception:
                logger.warning("group %s: could not report its failure", self.group_id, exc_info=True)

    # ------------------------------------------------------------ states leaving the group

    def _merged(self, state: SessionState, release: bool) -> SessionState:
        if layout(state) == (0, 1) or self.lost is not None:
            return state  # whole already, or (lost) a shard the caller drops: recovery uses the checkpoint
        key = str(state.scalars[SHARD_KEY])
        try:
            futures = [
                self._send(addr, {"action": "take", "group_id": self.group_id, "key": key, "release": release})
                for addr in self.followers
            ]
            shards = [state.to("cpu")] + [f.result(self._timeout_s).to_state() for f in futures]
        except Exception as exc:
            # A follower is gone: the shards cannot be merged; the scheduler restarts the
            # sessions from their checkpoints (the caller's copy or move fails).
            if self.lost is None:
                self.lost = f"merging a session's shards failed: {exc!r}"
                self._report(self.lost, True)
            raise
        merged = merge_shards(shards)
        merged.scalars.pop(SHARD_KEY, None)
        if release:
            self._states.pop(key, None)
        return merged

    def export_state(self, state: SessionState) -> SessionState:
        """The degree-1 state of a session leaving the engine (its followers' shards dropped)."""
        merged = self._merged(state, release=True)
        return merged if merged is state else merged.to(self.plain.device)

    def host_copy(self, state: SessionState) -> SessionState:
        """A degree-1 host copy of a session's state (a checkpoint); the shards stay."""
        merged = self._merged(state, release=False)
        return merged.to("cpu") if merged is state else merged

    def abandon(self, why: str) -> None:
        """A follower is gone: stop stepping at degree ``k``; the sessions' shards are now useless."""
        self.lost = why
        self._states.clear()

    def dissolve(self) -> int:
        """Merge every session back into its degree-1 state, in place; returns how many."""
        n = 0
        for key, state in list(self._states.items()):
            merged = self.export_state(state)
            state.tensors, state.scalars = merged.tensors, merged.scalars
            n += 1
        return n


# ------------------------------------------------------------------ worker handler


def _roles(worker: Any) -> dict[str, Any]:
    return worker.extensions.setdefault(EXTENSION, {})


def _sender(worker: Any) -> Callable[[str, dict[str, Any]], concurrent.futures.Future]:
    loop = worker.loop.asyncio_loop

    async def call(address: str, msg: dict[str, Any]) -> Any:
        # Bounded connect: a peer that died fails the call in seconds, not Dask's 30 s of retries.
        resp = await getattr(BoundedRPC(worker.rpc, address), GROUP_OP)(**{k: to_serialize(v) for k, v in msg.items()})
        if resp.get("status") != "OK":
            raise resp.get("exception") or TransferError(f"group call {msg['action']!r} to {address} failed")
        return resp.get("result")

    return lambda address, msg: asyncio.run_coroutine_threadsafe(call(address, msg), loop)


async def handle_group(worker: Any, action: str, group_id: str, **kw: Any) -> dict[str, Any]:
    """Worker handler of :data:`GROUP_OP`; answers ``{"status": "OK", "result": ...}`` or the error."""
    try:
        result = await _dispatch(worker, action, group_id, **kw)
    except Exception as exc:
        logger.warning("group %s: %s on %s failed: %r", group_id, action, worker.address, exc)
        return {"status": "error", "exception": to_serialize(exc)}
    return {"status": "OK", "result": to_serialize(result)}


async def _dispatch(worker: Any, action: str, group_id: str, **kw: Any) -> Any:
    from workers.host_lookup import get_host

    roles = _roles(worker)
    if action == "port":  # the leader hosts the group's rendezvous store
        from workers.p2p_group import free_port

        host = worker.address.split("://")[-1].rsplit(":", 1)[0]
        return {"host": host, "port": free_port(host)}
    if action == "device":  # what the backend choice needs to know of each member
        import torch.distributed as dist

        from workers.p2p_group import device_key

        device = get_host(worker).device
        return {"device": device, "key": device_key(device), "nccl": dist.is_nccl_available()}
    if action == "join":
        return await _join(worker, get_host(worker), roles, group_id, **kw)
    if action == "abandon":  # a follower died: drop every session (the scheduler recovers them)
        engine = get_host(worker).engine(kw["model"])
        gm = roles.get(group_id)
        if isinstance(gm, GroupModel):
            gm.abandon(kw.get("why", "a follower left"))
        dropped = []
        for sid in engine.sessions():
            try:
                await asyncio.wrap_future(engine.detach(sid))
            except Exception:
                pass
            dropped.append(sid)

        def plain() -> None:
            if isinstance(engine.model, GroupModel):
                engine.model = engine.model.plain

        await asyncio.wrap_future(engine.call(plain))
        roles.pop(group_id, None)
        if isinstance(gm, GroupModel):
            gm.group.close(abort=True)
        return {"dropped": dropped}
    role = roles.get(group_id)
    if role is None:
        raise InvalidRequest(f"worker {worker.address} is not in group {group_id!r}")
    if action == "step":
        return await role.run(role.step, kw["keys"], kw["denoise_steps"], kw["new"])
    if action == "take":
        return await role.run(role.take, kw["key"], kw["release"])
    if action == "dissolve":  # the leader: merge back at a chunk boundary, then plain model again
        engine = get_host(worker).engine(kw["model"])

        def split() -> dict[str, Any]:
            gm = engine.model
            n = gm.dissolve() if isinstance(gm, GroupModel) else 0
            engine.model = gm.plain if isinstance(gm, GroupModel) else gm
            return {"sessions": n, "steps": getattr(gm, "steps", 0), "broken": getattr(gm, "broken", None)}

        t0 = time.perf_counter()
        out = await asyncio.wrap_future(engine.call(split))
        out["split_s"] = time.perf_counter() - t0
        return out
    if action == "leave":
        roles.pop(group_id, None)
        role.close() if isinstance(role, FollowerRank) else role.group.close()
        return {"left": worker.address}
    raise InvalidRequest(f"unknown group action {action!r}")


async def _join(
    worker: Any, host: Any, roles: dict[str, Any], group_id: str, *, rank: int, degree: int, address: str,
    port: int, model: str, followers: Sequence[str] = (), backend: str = "gloo",
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> dict[str, Any]:
    """Join the group's process group, then take the role of rank ``rank``."""
    if group_id in roles:
        raise InvalidRequest(f"worker {worker.address} is already in group {group_id!r}")
    engine = host.engine(model)
    t0 = time.perf_counter()
    device = torch.device(host.device) if backend == "nccl" else None
    group = await asyncio.to_thread(connect_group, address, port, rank, degree, backend=backend,
                                    group_id=group_id, timeout_s=timeout_s, device=device)
    joined_s = time.perf_counter() - t0
    if rank:
        roles[group_id] = FollowerRank(group_id, engine.model, group, timeout_s)
        return {"rank": rank, "join_s": joined_s}
    def report(why: str, sessions_lost: bool) -> None:  # engine thread -> the scheduler, over the batched stream
        msg = {"op": GROUP_FAILED_OP, "group_id": group_id, "why": why, "sessions_lost": sessions_lost}
        worker.loop.add_callback(worker.batched_send, msg)

    gm = GroupModel(engine.model, group, group_id, followers, _sender(worker), timeout_s=timeout_s,
                    on_failure=report)

    def install() -> int:
        engine.model = gm
        return len(engine.sessions())

    roles[group_id] = gm
    sessions = await asyncio.wrap_future(engine.call(install))
    return {"rank": 0, "join_s": joined_s, "sessions": sessions}


__all__ = ["DEFAULT_TIMEOUT_S", "EXTENSION", "FollowerRank", "GROUP_FAILED_OP", "GROUP_OP", "GroupModel", "handle_group"]
