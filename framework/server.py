"""The public entry point: a :class:`Server` on a Dask cluster serves streaming sessions.

>>> from framework import Server
>>> with Server.local(n_workers=2, model="tiny") as server:         # doctest: +SKIP
...     s = server.open_session("a red fox running through snow", seed=0)
...     for chunk in s.stream(3):
...         print(chunk.index, chunk.frames.shape, chunk.worker)
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from distributed import Client, LocalCluster

from framework import config, notebook
from framework.limits import OpenLimits, validate_open
from framework.model_pools import models_of, pool_plan, worker_resources
from framework.scheduler_plugin import TurboserveScheduler
from framework.serving_settings import ServingSettings
from framework.session import Session
from framework.worker_env import ServingNanny
from storage.location import is_auto, resolve_store
from workers.access import new_token
from workers.encryption import encrypted
from workers.engine import EngineSettings
from workers.errors import InvalidRequest, UnknownWorker
from workers.plugin import ModelHost

logger = logging.getLogger(__name__)


class GpuLocalCluster(LocalCluster):
    """A LocalCluster with one worker process per GPU.

    Each worker sees every GPU, its own first (``CUDA_VISIBLE_DEVICES`` rotated, as
    dask-cuda does), so its device is ``cuda:0`` while peer-to-peer transfers can still
    reach the others. Every worker advertises the resource ``GPU=1``.
    """

    def __init__(self, gpus: list[int], **kwargs: Any) -> None:
        self._gpus = list(gpus)
        super().__init__(**kwargs)

    def new_worker_spec(self) -> dict[Any, dict[str, Any]]:
        used = {spec.get("options", {}).get("env", {}).get("CUDA_VISIBLE_DEVICES", "").split(",")[0]
                for spec in self.worker_spec.values()}
        free = [g for g in self._gpus if str(g) not in used]
        if not free:
            raise ValueError(f"cannot start more workers than the {len(self._gpus)} visible GPUs")
        i = self._gpus.index(free[0])
        order = self._gpus[i:] + self._gpus[:i]
        spec = dict(self.new_spec)
        options = dict(spec.get("options", {}))
        options["env"] = {**options.get("env", {}), "CUDA_VISIBLE_DEVICES": ",".join(map(str, order))}
        spec["options"] = options
        name = f"gpu-{free[0]}"
        return {name: spec}


def _start_pools(cluster: LocalCluster, plan: list[frozenset[str]]) -> None:
    """Start one worker per entry of ``plan``, advertising the resources of its models."""
    for pool in plan:
        ((name, spec),) = cluster.new_worker_spec().items()
        options = dict(spec.get("options", {}))
        kept = {k: v for k, v in (options.get("resources") or {}).items() if models_of({k: v}) is None}
        options["resources"] = {**kept, **worker_resources(sorted(pool))}
        cluster.worker_spec[name] = {**spec, "options": options}
    cluster.sync(cluster._correct_state)


def _visible_gpus() -> list[int]:
    try:
        import torch

        return list(range(torch.cuda.device_count()))
    except Exception:  # pragma: no cover - a broken CUDA install counts as none
        return []


class Server:
    """Streaming video sessions served by a Dask cluster.

    Parameters
    ----------
    address_or_client : str or distributed.Client
        Scheduler address, or a client to reuse (a direct-to-workers client is fastest:
        chunk bytes then go worker -> client without a proxy hop).
    model : str, optional
        Default model preset (``turboserve.model``).
    store : str, optional
        Checkpoint store URL (``turboserve.state.store``).
    max_batch, batching, checkpoint_every : optional
        Engine knobs (``turboserve.engine.*``, ``turboserve.state.checkpoint-every``).
    **settings
        Further :class:`~framework.serving_settings.ServingSettings` fields
        (``placement``, ``on_full``, ``max_sessions_per_worker``, ``offload_tier``, ...).

    control : bool, optional
        Start the closed control loop on the scheduler (placement, offload, and the
        autoscaling policy's decisions, which need an autoscaler attached: see
        :meth:`adapt`). Default ``turboserve.control.auto-start`` (true). A loop that
        already runs (another server started it) is kept as it is.
    security : distributed.security.Security, optional
        With a scheduler address: the TLS settings of the client it makes (needed for a
        ``tls://`` address; e.g. the cluster's ``Security``). What is and is not encrypted
        on a TLS cluster: :mod:`workers.encryption`.
    asynchronous : bool
        With a scheduler address: make an asynchronous client. On an asynchronous
        client, ``await Server(...)`` registers the plugins, and the ``a*`` methods
        (``aopen_session``, ``asessions``, ``astats``, ``aclose``; ``Session.astream``,
        ``asubmit``, ...) are the API.

    Notes
    -----
    Attaching to a cluster that already runs turboserve keeps its plugins (and their
    settings): the registry of its sessions is shared by every attached server.
    """

    def __init__(
        self,
        address_or_client: str | Client,
        *,
        model: str | None = None,
        store: str | None = None,
        max_batch: int | None = None,
        batching: bool | None = None,
        checkpoint_every: int | None = None,
        control: bool | None = None,
        asynchronous: bool = False,
        security: Any = None,
        **settings: Any,
    ) -> None:
        self._cluster: LocalCluster | None = None
        self._access: dict[str, str | None] = {}  # access token -> session id, of the sessions this server holds
        self._own_client = not isinstance(address_or_client, Client)
        if self._own_client:
            if encrypted(address_or_client) and security is None:
                raise InvalidRequest(
                    f"{address_or_client} is a TLS scheduler: pass its certificates, "
                    "Server(address, security=distributed.security.Security(tls_ca_file=..., "
                    "tls_client_cert=..., tls_client_key=..., require_encryption=True))"
                )
            self.client = Client(address_or_client, direct_to_workers=True, asynchronous=asynchronous,
                                 security=security)
        else:
            self.client = address_or_client
        try:
            self.settings = ServingSettings.from_config(model=model, store=store, **settings)
            self.engine_settings = EngineSettings.from_config(
                max_batch=max_batch, batching=batching, checkpoint_every=checkpoint_every,
            )
            self._auto_store = is_auto(self.settings.store)
            self._plugins: tuple[Any, ...] = ()
            self._control = bool(config.get("control.auto-start", control))
            if not self.client.asynchronous:
                self._make_plugins(self.client.scheduler_info(n_workers=0)["id"])
                for plugin in self._plugins:
                    self.client.register_plugin(plugin)
                if self._control:
                    self.client.sync(self._astart_control)
        except BaseException:
            if self._own_client and not self.client.asynchronous:
                self.client.close()
            raise

    def _make_plugins(self, cluster_id: str) -> None:
        """Resolve the store for this cluster (``auto``: a folder of its own) and build the plugins."""
        self.settings = replace(self.settings, store=resolve_store(self.settings.store, cluster_id))
        self._plugins = (
            TurboserveScheduler(self.settings),
            ModelHost(
                self.settings.model,
                self.engine_settings,
                self.settings.store,
                weights=dict(config.get("weights") or {}),
            ),
        )

    # ------------------------------------------------------------ asynchronous use

    def __await__(self):
        return self._astart().__await__()

    async def _astart(self) -> "Server":
        if self._own_client:
            await self.client
        if not self._plugins:
            self._make_plugins((await self.client.scheduler.identity(n_workers=0))["id"])
        for plugin in self._plugins:
            await self.client.register_plugin(plugin)
        if self._control:
            await self._astart_control()
        return self

    async def _astart_control(self, **overrides: Any) -> None:
        """Start the control loop unless it runs already (``control=True``, the default)."""
        from distributed.protocol.serialize import ToPickle

        from framework.control_settings import ControlSettings

        try:
            await self.client.scheduler.turboserve_control_start(settings=ToPickle(ControlSettings.from_config(**overrides)))
        except InvalidRequest as exc:  # another server started it with its own settings: keep that one
            logger.info("the control loop already runs on %s; kept as it is (%s)", self.client.scheduler.address, exc)

    async def __aenter__(self) -> "Server":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Async twin of :meth:`close` (for a server on an asynchronous client)."""
        if self._own_client:
            await self.client.close()

    async def asessions(self, include_closed: bool = False) -> list[dict[str, Any]]:
        """Async twin of :meth:`sessions`."""
        return list(await self.client.scheduler.turboserve_sessions(include_closed=include_closed,
                                                                    access_tokens=list(self._access)))

    async def astats(self) -> dict[str, Any]:
        """Async twin of :meth:`stats`."""
        return await self.client.scheduler.turboserve_stats()

    @classmethod
    def local(
        cls,
        n_workers: int | None = None,
        model: str | None = None,
        *,
        store: str | None = None,
        max_batch: int | None = None,
        batching: bool | None = None,
        checkpoint_every: int | None = None,
        settings: dict[str, Any] | None = None,
        adaptive: bool | None = None,
        models: Sequence[str] | Mapping[str, int] | None = None,
        **cluster_kwargs: Any,
    ) -> "Server":
        """A server on a new LocalCluster: one worker process per GPU, else CPU workers.

        Parameters
        ----------
        n_workers : int, optional
            Workers to start (default: the GPU count, else ``turboserve.cluster.n-workers``).
        model, store, max_batch, batching, checkpoint_every
            As for :class:`Server`.
        settings : dict, optional
            Further :class:`~framework.serving_settings.ServingSettings` fields.
        adaptive : bool, optional
            Run the closed control loop and session-aware autoscaling (:meth:`adapt`,
            bounds ``turboserve.autoscale.minimum``/``maximum``; with GPUs at most one
            worker per GPU). Default ``turboserve.control.auto-start`` (true); False: a
            fixed cluster of ``n_workers`` with no control loop.
        models : list or dict, optional
            Model pools (:mod:`framework.model_pools`): a list of presets every worker
            serves, or ``{preset: workers}`` (one pool per preset; ``n_workers`` then
            defaults to the sum). Each worker advertises ``model-<preset>`` resources;
            sessions go only to workers serving their model, and a model no worker
            serves is refused at open (``ModelNotServed``). Workers the autoscaler adds
            serve every listed model. None (default): every worker serves any model.
        **cluster_kwargs
            Passed to ``LocalCluster`` (e.g. ``dashboard_address``, ``memory_limit``).
        """
        gpus = _visible_gpus()
        plan = None
        if models is not None:
            if n_workers is None and not isinstance(models, Mapping):
                n_workers = len(gpus) or int(config.get("cluster.n-workers"))
            plan = pool_plan(models, n_workers)
            n_workers = len(plan)
            served = [m for pool in plan for m in sorted(pool)]
            if model is None and config.get("model") not in served:
                model = served[0]  # the default preset is not served: the first pool's model is
        if n_workers is None:
            n_workers = len(gpus) or int(config.get("cluster.n-workers"))
        if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 0:
            raise InvalidRequest(f"n_workers must be an int >= 0, got {n_workers!r}")
        kwargs: dict[str, Any] = {
            "n_workers": n_workers,
            "threads_per_worker": int(config.get("cluster.threads-per-worker")),
            "processes": True,
            "memory_limit": config.get("cluster.memory-limit"),
            "dashboard_address": config.get("cluster.dashboard-address"),
        }
        kwargs.update(cluster_kwargs)
        if kwargs["processes"]:  # workers without the nanny's allocator setting (framework.worker_env)
            kwargs.setdefault("worker_class", ServingNanny)
        if gpus:
            if n_workers > len(gpus):
                raise InvalidRequest(f"n_workers={n_workers} but only {len(gpus)} GPUs are visible")
            kwargs.setdefault("resources", {"GPU": 1})
        if plan is not None:  # every pool's workers added below, each with its own resources
            kwargs["n_workers"] = 0
            kwargs["resources"] = {**kwargs.get("resources", {}), **worker_resources(sorted(set().union(*plan)))}
        cluster: LocalCluster = GpuLocalCluster(gpus, **kwargs) if gpus else LocalCluster(**kwargs)
        try:
            if plan is not None:
                _start_pools(cluster, plan)
            client = Client(cluster, direct_to_workers=True)
            if plan is not None:
                client.wait_for_workers(len(plan))
        except BaseException:
            cluster.close()
            raise
        try:
            server = cls(client, model=model, store=store, max_batch=max_batch, batching=batching,
                         checkpoint_every=checkpoint_every, control=False, **(settings or {}))
        except BaseException:
            client.close()
            cluster.close()
            raise
        server._cluster = cluster
        server._own_client = True
        if config.get("control.auto-start", adaptive):
            try:
                maximum = min(int(config.get("autoscale.maximum")), len(gpus)) if gpus else None
                server.adapt(maximum=maximum)  # minimum: turboserve.autoscale.minimum, as configured
            except BaseException:
                server.close()
                raise
        return server

    # ------------------------------------------------------------ context

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Server {self.client.scheduler.address} workers={len(self.workers())}>"

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, str]:
        return notebook.server_mimebundle(notebook.server_card(self))

    def close(self) -> None:
        """Close the client; also the cluster (and every session) if this server started it."""
        if self._cluster is not None:
            try:
                self.client.sync(self.client.scheduler.turboserve_shutdown, release=True)
            except Exception:
                logger.debug("turboserve_shutdown failed", exc_info=True)
        if self._own_client:
            self.client.close()
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None
            if self._auto_store and self.settings.store:  # the cluster's own folder: nobody can adopt it
                shutil.rmtree(self.settings.store, ignore_errors=True)

    # ------------------------------------------------------------ public API

    @property
    def cluster(self) -> LocalCluster | None:
        """The LocalCluster this server started (None when attached)."""
        return self._cluster

    @property
    def dashboard_link(self) -> str:
        """URL of the Dask dashboard."""
        return self.client.dashboard_link

    def open_session(
        self,
        prompt: str,
        seed: int = 0,
        *,
        model: str | None = None,
        height: int | None = None,
        width: int | None = None,
        session_id: str | None = None,
        worker: str | None = None,
    ) -> Session:
        """Open a session: admitted, placed by the placement policy (or on ``worker``), started.

        The arguments are checked here first (:func:`framework.limits.validate_open`:
        seed in ``[0, 2**63)``, prompt size, resolution, model, session id), so a bad
        value is an :class:`~framework.errors.InvalidRequest` (or ``UnknownModel``)
        that names it, before anything reaches the scheduler or a worker.
        """
        validate_open(prompt, seed, model, height, width, session_id, limits=OpenLimits.from_config())
        token = self._new_token(session_id)  # ours before the scheduler answers (a queued open is listed as ours)
        try:
            info = self.client.sync(
                self.client.scheduler.turboserve_open, prompt=prompt, seed=seed, model=model, height=height,
                width=width, session_id=session_id, worker=worker, access_token=token,
            )
        except BaseException:
            self._access.pop(token, None)
            raise
        self._access[token] = info["id"]
        return Session(self, info)

    def _new_token(self, session_id: str | None) -> str:
        token = new_token()
        self._access[token] = session_id
        return token

    def session(self, session_id: str, access_token: str | None = None) -> Session:
        """A handle on an existing session: one this server opened, or one handed over with its token.

        ``access_token``: the ``Session.access_token`` of the session's opener (default: the
        token this server got when it opened the session). The handle goes on from the
        session's next chunk. Raises :class:`~framework.errors.SessionNotFound` for an
        unknown id, :class:`~framework.errors.SessionAccessDenied` without the session's token.
        """
        return self.client.sync(self._asession, session_id, access_token)

    async def _asession(self, session_id: str, access_token: str | None = None) -> Session:
        token = access_token or next((t for t, sid in self._access.items() if sid == session_id), None)
        info = await self.client.scheduler.turboserve_locate(session_id=session_id, wake=False, access_token=token)
        if token:
            self._access[token] = session_id  # handed over: listed with its prompt from now on
        session = Session(self, {**info, "access_token": token})
        await session._channel.attach(info["chunks"])  # from the session's next chunk on
        return session

    async def aopen_session(self, prompt: str, seed: int = 0, **kw: Any) -> Session:
        """Async twin of :meth:`open_session` (run it on the client's event loop)."""
        validate_open(prompt, seed, kw.get("model"), kw.get("height"), kw.get("width"), kw.get("session_id"),
                      limits=OpenLimits.from_config())
        token = self._new_token(kw.get("session_id"))
        try:
            info = await self.client.scheduler.turboserve_open(prompt=prompt, seed=seed, access_token=token, **kw)
        except BaseException:
            self._access.pop(token, None)
            raise
        self._access[token] = info["id"]
        return Session(self, info)

    def sessions(self, include_closed: bool = False) -> list[dict[str, Any]]:
        """Records of the sessions: id, status, worker, tier, chunks, state_bytes, ..., ``owned``.

        The prompt is shown only for the sessions this server opened (``owned``); other
        clients' sessions are listed without it.
        """
        return list(self.client.sync(self.client.scheduler.turboserve_sessions, include_closed=include_closed,
                                     access_tokens=list(self._access)))

    def workers(self) -> list[str]:
        """Addresses of the workers, sorted."""
        return sorted(self.client.scheduler_info(n_workers=-1)["workers"])

    def stats(self) -> dict[str, Any]:
        """Current metrics: sessions per status, chunks, latency p50/p99/max, per-worker load."""
        return self.client.sync(self.client.scheduler.turboserve_stats)

    def drain(self, worker: str, retire: bool = True) -> dict[str, Any]:
        """Move every session off ``worker`` (migrate, else suspend to disk), then retire it.

        Returns ``{"moved": [...], "suspended": [...], "retired": bool}``.
        """
        if worker not in self.workers():
            raise UnknownWorker(f"no worker {worker!r} in the cluster; known: {self.workers()}")
        name = None
        if self._cluster is not None:
            info = self.client.scheduler_info(n_workers=-1)["workers"].get(worker)
            if info is None:  # it left between the two looks (a worker dying or being retired)
                raise UnknownWorker(f"worker {worker!r} left the cluster; known: {self.workers()}")
            name = info.get("name")
        result = dict(self.client.sync(self.client.scheduler.turboserve_drain, worker=worker, retire=retire))
        result["moved"], result["suspended"] = list(result["moved"]), list(result["suspended"])
        if result["retired"] and self._cluster is not None and name in self._cluster.worker_spec:
            # A retired worker stays in LocalCluster.worker_spec otherwise, and scale(n)
            # would count it (DASK_NOTES section 3).
            del self._cluster.worker_spec[name]
        return result

    def parallelism(self) -> list[dict[str, Any]]:
        """Parallel groups: one row per group (``group_id``, ``degree``, ``workers``, ``leader``,
        ``model``, ``sessions``) and one per worker serving alone (degree 1)."""
        rows = self.client.sync(self.client.scheduler.turboserve_parallelism)
        return [{**r, "workers": list(r["workers"]), "sessions": list(r["sessions"])} for r in rows]

    def set_parallelism(self, degree: int, workers: list[str] | None = None) -> dict[str, Any]:
        """Merge ``workers`` (default: all) into groups of ``degree``, or split them back (``degree=1``).

        Sessions stream on through the change (it takes effect at a chunk boundary, with
        the same frames). Raises :class:`~framework.errors.ParallelismError` subclasses
        for a bad request, :class:`~framework.errors.UnknownWorker`, or
        :class:`~framework.errors.TransferError` when the change failed (nothing moved).
        """
        return dict(self.client.sync(self.client.scheduler.turboserve_set_parallelism, degree=degree,
                                     workers=None if workers is None else list(workers)))

    def start_control(self, **overrides: Any) -> None:
        """Run the closed control loop (:class:`framework.controller.ControlLoop`) on the scheduler.

        ``overrides`` are :class:`~framework.control_settings.ControlSettings` fields; the rest
        comes from ``turboserve.policies.*``, ``control.*`` and ``autoscale.*``.
        """
        from distributed.protocol.serialize import ToPickle

        from framework.control_settings import ControlSettings

        settings = ControlSettings.from_config(**overrides)
        self.client.sync(self.client.scheduler.turboserve_control_start, settings=ToPickle(settings))

    def adapt(self, minimum: int | None = None, maximum: int | None = None, interval: Any = None,
              wait_count: int | None = None, **control: Any) -> Any:
        """Autoscale this server's cluster with the autoscaling policy (starts the control loop).

        Bounds and delays default to ``turboserve.autoscale.*``; ``control`` are
        :class:`~framework.control_settings.ControlSettings` overrides. Returns the
        :class:`~framework.adaptive.SessionAdaptive`. Needs the cluster manager: for a
        server attached to a running cluster, call ``framework.adaptive.adapt(cluster)``
        where the cluster object lives.
        """
        from framework.adaptive import adapt

        if self._cluster is None:
            raise InvalidRequest("adapt() needs the cluster manager; call framework.adaptive.adapt(cluster) "
                                 "where the cluster object lives")
        kw = {"minimum": minimum, "maximum": maximum}
        self.start_control(**{k: v for k, v in kw.items() if v is not None}, **control)
        return adapt(self._cluster, minimum=minimum, maximum=maximum, interval=interval, wait_count=wait_count)
