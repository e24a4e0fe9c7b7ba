"""Parallel groups on the scheduler: which workers serve together, and the transformations.

:class:`ParallelGroups` is a collaborator of the scheduler plugin (as
:class:`~framework.session_mechanisms.SessionActors` is): it keeps the groups
(:class:`policies.types.ParallelGroup` records; a worker in none serves alone at
degree 1), checks a request to change them (typed errors, nothing changes on a
refusal) and drives the workers through the transformation over the worker RPC op
``turboserve_group`` (:mod:`workers.parallel_group`):

*merge* (``set_parallelism(k, workers)``): the leader (the worker that holds the
sessions, if any) opens a rendezvous, every rank joins the ``k``-rank process group,
and the leader's engine swaps its model for the group's at a chunk boundary. Its
sessions never stop: their states are re-sharded by heads at the next step. A
failure before the swap leaves every worker as it was (the old layout); a failure of
the first group step sends the group back to degree 1 with the full states.

*split* (``set_parallelism(1, workers)``): the leader merges every session's shards
back into its degree-1 state at a chunk boundary, and the ranks leave the group. The
sessions stay on the leader and stream on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

from framework import config
from framework.errors import BadDegree, InvalidRequest, TransferError, UnknownWorker, WorkerBusy, WorkerInGroup
from kernels.presets import get_preset
from policies.parallelism import head_degrees
from policies.types import ParallelGroup
from workers.actor_rpc import BoundedRPC, unwrap
from workers.ids import new_id

#: Worker RPC op of the group messages (``workers.parallel_group.GROUP_OP``).
GROUP_OP = "turboserve_group"


def choose_backend(devices: Sequence[dict[str, Any]]) -> str:
    """``nccl`` when every member is a distinct CUDA device with NCCL, else ``gloo``.

    ``devices`` are the members' answers (``device``, ``key``: the physical device,
    ``nccl``: available). Several ranks on one GPU, or any CPU member, use gloo (CUDA
    tensors then go through host memory).

    >>> choose_backend([{"device": "cuda:0", "key": "h/cuda/A", "nccl": True},
    ...                 {"device": "cuda:0", "key": "h/cuda/B", "nccl": True}])
    'nccl'
    >>> choose_backend([{"device": "cpu", "key": "h/cpu", "nccl": False}] * 2)
    'gloo'
    """
    cuda = all(str(d["device"]).startswith("cuda") and d["nccl"] for d in devices)
    distinct = len({d["key"] for d in devices}) == len(devices)
    return "nccl" if cuda and distinct else "gloo"


def model_degrees(model: str, max_degree: int | None = None) -> tuple[int, ...]:
    """The degrees a group serving preset ``model`` may have: every divisor of its attention
    heads (``kernels.presets``) up to ``max_degree`` (default
    ``turboserve.policies.parallelism-max-degree``).

    The one source of the degree set: the live control loop's parallelism policy
    (:meth:`framework.control_settings.ControlSettings.from_config`), ``set_parallelism``'s
    refusals (:meth:`ParallelGroups.set_parallelism`) and the simulated experiment
    (``experiments.parallelism``).

    >>> model_degrees("wan-14b", 8), model_degrees("wan-1.3b", 8), model_degrees("tiny", 8)
    ((1, 2, 4, 5, 8), (1, 2, 3, 4, 6), (1, 2))
    """
    return head_degrees(get_preset(model).num_heads, _max_degree(max_degree))


def _max_degree(value: int | None) -> int:
    cap = config.get("policies.parallelism-max-degree", value)
    if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
        raise ValueError(f"turboserve.policies.parallelism-max-degree must be a positive integer, got {cap!r}")
    return cap


def plan_groups(
    degree: int,
    workers: Sequence[str],
    sessions_on: Callable[[str], Sequence[str]],
    model_heads: int,
    max_degree: int | None = None,
) -> list[tuple[str, ...]]:
    """The groups of ``degree`` to form from free ``workers`` (leader first), or a typed refusal.

    A worker holding sessions leads a group (its sessions stay); every other member must
    hold none. Pure: ``sessions_on(worker)`` says what each worker holds; ``max_degree``
    (None: no cap) is the largest degree allowed.

    Raises
    ------
    BadDegree
        ``degree`` is not a divisor of ``len(workers)`` or of the model's heads, or is
        above ``max_degree``.
    WorkerBusy
        More workers hold sessions than there are groups to lead.
    """
    if len(workers) % degree:
        raise BadDegree(
            f"degree {degree} does not divide the {len(workers)} workers named ({list(workers)}); "
            f"name a multiple of {degree} workers"
        )
    fits = list(head_degrees(model_heads, max_degree if max_degree is not None else model_heads))
    if model_heads % degree:
        raise BadDegree(f"degree {degree} does not divide the model's {model_heads} attention heads "
                        f"(a group shards whole heads); use one of {fits}")
    if max_degree is not None and degree > max_degree:
        raise BadDegree(f"degree {degree} is above the largest allowed, {max_degree} "
                        f"(turboserve.policies.parallelism-max-degree); use one of {fits} or raise the maximum")
    busy = [w for w in workers if sessions_on(w)]
    free = [w for w in workers if not sessions_on(w)]
    n = len(workers) // degree
    if len(busy) > n:
        raise WorkerBusy(
            f"{len(busy)} workers hold sessions ({busy}) but {n} group(s) of {degree} have only {n} leader(s); "
            "drain the others first (server.drain(worker, retire=False))"
        )
    leaders = busy + free[: n - len(busy)]
    rest = free[n - len(busy):]
    return [(lead, *rest[i * (degree - 1):(i + 1) * (degree - 1)]) for i, lead in enumerate(leaders)]


class ParallelGroups:
    """The parallel groups of one cluster and their transformations (see the module docstring).

    Parameters
    ----------
    scheduler
        The Dask scheduler (``rpc``, ``workers``).
    sessions_on
        ``sessions_on(worker) -> session ids`` held there (the registry).
    model_of
        ``model_of(session_ids) -> preset name`` the group serves (the default model if none).
    changed
        Called after a transformation (capacity changed: wake the control loop).
    max_degree
        The largest degree a group may have; a degree must also divide the model's heads
        (:func:`model_degrees`). Default ``turboserve.policies.parallelism-max-degree``.
    """

    def __init__(
        self,
        scheduler: Any,
        sessions_on: Callable[[str], Sequence[str]],
        model_of: Callable[[Sequence[str]], str],
        changed: Callable[[], None],
        *,
        timeout_s: float = 60.0,
        max_degree: int | None = None,
    ) -> None:
        self.scheduler = scheduler
        #: The largest degree a group may have (default ``turboserve.policies.parallelism-max-degree``).
        self.max_degree = _max_degree(max_degree)
        self._sessions_on = sessions_on
        self._model_of = model_of
        self._changed = changed
        self.timeout_s = timeout_s
        self._groups: dict[str, ParallelGroup] = {}
        self._lock = asyncio.Lock()
        #: One row per finished transformation (what, workers, seconds, outcome).
        self.log: list[dict[str, Any]] = []

    # ------------------------------------------------------------ views

    def groups(self) -> list[ParallelGroup]:
        """The groups of degree > 1."""
        return list(self._groups.values())

    def group_of(self, worker: str) -> ParallelGroup | None:
        """The group ``worker`` is in, if any."""
        return next((g for g in self._groups.values() if worker in g.workers), None)

    def followers(self) -> set[str]:
        """Workers that follow in a group: they take no session of their own."""
        return {w for g in self._groups.values() for w in g.workers[1:]}

    def listing(self) -> list[dict[str, Any]]:
        """Every worker's place: one row per group, and one per worker serving alone (degree 1)."""
        rows = [
            {"group_id": g.group_id, "degree": g.degree, "workers": list(g.workers), "leader": g.leader,
             "model": g.model, "sessions": list(self._sessions_on(g.leader))}
            for g in self._groups.values()
        ]
        grouped = {w for g in self._groups.values() for w in g.workers}
        rows += [
            {"group_id": None, "degree": 1, "workers": [w], "leader": w, "model": None,
             "sessions": list(self._sessions_on(w))}
            for w in sorted(self.scheduler.workers) if w not in grouped
        ]
        return rows

    def forget_worker(self, worker: str) -> ParallelGroup | None:
        """A worker left: its group is gone; returns the group it was in, if any.

        The caller recovers the sessions: a lost leader's as any lost worker's, a lost
        follower's leader's after :meth:`abandon` (their shards cannot be merged any more).
        """
        g = self.group_of(worker)
        if g is not None:
            self._groups.pop(g.group_id, None)
            self._changed()
        return g

    def forget_group(self, group_id: str) -> ParallelGroup | None:
        """Drop the record of group ``group_id`` (its leader reported a failed step); returns it."""
        g = self._groups.pop(group_id, None)
        if g is not None:
            self._changed()
        return g

    async def fell_back(self, g: ParallelGroup) -> None:
        """The group's first step failed and its leader serves at degree 1: the ranks leave."""
        for w in g.workers:
            try:
                if w == g.leader:
                    await self._call(w, "dissolve", g.group_id, model=g.model)
                await self._call(w, "leave", g.group_id)
            except Exception as exc:
                self._log("leave", g.workers, time.perf_counter(), f"failed: {exc!r}")
        self._log("fell-back", g.workers, time.perf_counter(), "serving at degree 1")

    async def abandon(self, g: ParallelGroup, gone: str | None) -> None:
        """After ``gone`` left group ``g`` (None: a step failed): the leader drops the group and
        its sessions (the caller recovers them from their checkpoints). See :meth:`release_followers`."""
        if g.leader != gone and g.leader in self.scheduler.workers:
            try:
                await self._call(g.leader, "abandon", g.group_id, model=g.model, why=f"{gone or 'a rank'} failed")
            except Exception as exc:  # the leader may be going too; recovery goes on regardless
                self._log("abandon", g.workers, time.perf_counter(), f"failed: {exc!r}")
        self._log("abandon", g.workers, time.perf_counter(), f"{gone or 'a rank'} failed")

    async def release_followers(self, g: ParallelGroup, gone: str | None) -> None:
        """The surviving followers of an abandoned group leave it (all at once: one may hang)."""
        async def leave(w: str) -> None:
            try:
                await self._call(w, "leave", g.group_id)
            except Exception as exc:
                self._log("leave", [w], time.perf_counter(), f"failed: {exc!r}")

        await asyncio.gather(*(leave(w) for w in g.workers[1:] if w != gone and w in self.scheduler.workers))

    # ------------------------------------------------------------ the request

    async def set_parallelism(self, degree: int, workers: Sequence[str] | None = None) -> dict[str, Any]:
        """Merge ``workers`` (default: all) into groups of ``degree``, or split them back (``degree=1``).

        Returns ``{"formed": [...], "split": [...], "seconds": s}``.

        Raises
        ------
        InvalidRequest
            ``degree`` is not a positive integer, or a worker is named twice.
        UnknownWorker
            A worker is not in the cluster.
        BadDegree, WorkerInGroup, WorkerBusy
            See :func:`plan_groups` (a degree not among :func:`model_degrees` of the model
            the workers serve); a worker in a group the request does not split whole.
        TransferError
            A transformation failed; its workers are back in their old layout.
        """
        if isinstance(degree, bool) or not isinstance(degree, int) or degree < 1:
            raise InvalidRequest(f"degree must be a positive integer, got {degree!r}")
        names = sorted(self.scheduler.workers) if workers is None else list(workers)
        if len(set(names)) != len(names):
            raise InvalidRequest(f"a worker is named twice in {names}")
        unknown = [w for w in names if w not in self.scheduler.workers]
        if unknown:
            raise UnknownWorker(f"no worker {unknown} in the cluster; known: {sorted(self.scheduler.workers)}")
        async with self._lock:
            t0 = time.perf_counter()
            if degree == 1:
                split = await self._split_all(names)
                return {"formed": [], "split": split, "seconds": time.perf_counter() - t0}
            in_groups = {w: g for w in names if (g := self.group_of(w)) is not None}
            if in_groups:
                g = next(iter(in_groups.values()))
                if all(gg.degree == degree and set(gg.workers) <= set(names) for gg in in_groups.values()):
                    names = [w for w in names if w not in in_groups]  # already as asked
                else:
                    raise WorkerInGroup(
                        f"worker {next(iter(in_groups))} is in group {g.group_id!r} of degree {g.degree} "
                        f"({list(g.workers)}); split it first: set_parallelism(1, {list(g.workers)})"
                    )
            if not names:
                return {"formed": [], "split": [], "seconds": time.perf_counter() - t0}
            models = {self._model_of(self._sessions_on(w)) for w in names if self._sessions_on(w)}
            if len(models) > 1:
                raise InvalidRequest(f"the workers serve several models {sorted(models)}; a group serves one")
            model = models.pop() if models else self._model_of(())
            plan = plan_groups(degree, names, self._sessions_on, get_preset(model).num_heads, self.max_degree)
            formed = []
            for members in plan:
                formed.append(await self._merge(members, model))
            return {"formed": formed, "split": [], "seconds": time.perf_counter() - t0}

    # ------------------------------------------------------------ transformations

    async def _call(self, worker: str, action: str, group_id: str, **kw: Any) -> Any:
        """One group message to ``worker``; a worker that went away, never answers or lost another rank
        during the step is a TransferError.

        A bare ``CommClosedError`` must not leave a scheduler handler: Dask's server takes
        it for the *caller's* connection closing and drops that connection (seen in the
        chaos suite: the leader SIGKILLed during ``set_parallelism``).
        """
        bound = self.timeout_s + 30
        try:
            # The connection bounded apart (BoundedRPC): a member that died fails the call
            # within the actor connect bound (5 s), not after Dask's 30 s of connect retries.
            resp = await asyncio.wait_for(
                getattr(BoundedRPC(self.scheduler.rpc, worker), GROUP_OP)(action=action, group_id=group_id, **kw),
                bound)
        except asyncio.TimeoutError:
            raise TransferError(f"worker {worker} did not answer {action!r} of group {group_id!r} "
                                f"within {bound:.0f} s (turboserve.control.group-timeout + 30 s)") from None
        except OSError as exc:  # CommClosedError and other connection failures
            raise TransferError(f"worker {worker} went away during {action!r} of group {group_id!r} "
                                f"({exc!r})") from exc
        if resp.get("status") != "OK":
            error = unwrap(resp.get("exception"))
            if isinstance(error, OSError):  # its own call to another rank failed (a follower died in a split)
                raise TransferError(f"worker {worker} could not complete {action!r} of group {group_id!r}: "
                                    f"another rank went away ({error!r})") from error
            raise error
        return unwrap(resp.get("result"))

    async def _merge(self, members: tuple[str, ...], model: str) -> dict[str, Any]:
        group_id = new_id()
        t0 = time.perf_counter()
        lead = members[0]
        where = await self._call(lead, "port", group_id)
        backend = choose_backend(await asyncio.gather(*(self._call(w, "device", group_id) for w in members)))
        joins = [
            self._call(w, "join", group_id, rank=r, degree=len(members), address=where["host"], port=where["port"],
                       model=model, followers=list(members[1:]) if r == 0 else [], backend=backend,
                       timeout_s=self.timeout_s)
            for r, w in enumerate(members)
        ]
        results = await asyncio.gather(*joins, return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            await self._undo(members, group_id, model)
            self._log("merge", members, t0, f"failed: {failed[0]!r}")
            raise TransferError(
                f"could not form a group of {list(members)}: {failed[0]!r}; they serve at degree 1 as before"
            ) from failed[0]
        group = ParallelGroup(group_id, tuple(members), len(members), model)
        self._groups[group_id] = group
        self._changed()
        row = self._log("merge", members, t0, "ok", sessions=results[0].get("sessions", 0))
        return {**row, "group_id": group_id}

    async def _undo(self, members: Sequence[str], group_id: str, model: str) -> None:
        for w in members:
            try:
                if w == members[0]:
                    await self._call(w, "dissolve", group_id, model=model)
                await self._call(w, "leave", group_id)
            except Exception:
                pass  # it never joined

    async def _split_all(self, names: Sequence[str]) -> list[dict[str, Any]]:
        targets = []
        for w in names:
            g = self.group_of(w)
            if g is None or g in targets:
                continue
            if not set(g.workers) <= set(names):
                raise WorkerInGroup(
                    f"worker {w} is in group {g.group_id!r} with {[x for x in g.workers if x not in names]}, "
                    f"not named; split a group whole: set_parallelism(1, {list(g.workers)})"
                )
            targets.append(g)
        return [await self._split(g) for g in targets]

    async def _split(self, g: ParallelGroup) -> dict[str, Any]:
        t0 = time.perf_counter()
        out = await self._call(g.leader, "dissolve", g.group_id, model=g.model)
        for w in g.workers:
            await self._call(w, "leave", g.group_id)
        self._groups.pop(g.group_id, None)
        self._changed()
        return {**self._log("split", g.workers, t0, "ok", sessions=out["sessions"], steps=out["steps"]),
                "group_id": g.group_id, "broken": out["broken"]}

    def _log(self, what: str, members: Sequence[str], t0: float, outcome: str, **extra: Any) -> dict[str, Any]:
        row = {"what": what, "workers": list(members), "seconds": time.perf_counter() - t0, "outcome": outcome,
               "t": time.time(), **extra}
        self.log.append(row)
        return row


__all__ = ["ParallelGroups", "choose_backend", "model_degrees", "plan_groups"]
