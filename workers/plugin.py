"""The worker plugin: pins the worker's device, loads each model once, owns the engines.

Registered by the :class:`framework.Server` with ``client.register_plugin``; Dask runs
:meth:`ModelHost.setup` on every current and future worker. Session actors find the
host of their worker with :func:`workers.host_lookup.get_host`.

Dask counts a worker as running as soon as it registers, before this plugin has loaded
its model. Once the default model is loaded, :meth:`ModelHost.setup` logs an event on
the topic :data:`READY_TOPIC` (with the device memory free then, on a CUDA worker:
:func:`device_free_bytes`); the scheduler plugin offers a worker to placement and
migration only after that event (``turboserve.control.worker-ready-timeout``) and admits
sessions against that memory.
"""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import logging
import os
import pathlib
import sys
import threading
import time
from typing import Any

import dask.config
from dask.utils import parse_timedelta
from distributed import WorkerPlugin

from workers.actor_rpc import CALL_OP
from workers.chunk import Chunk
from workers.engine import Engine, EngineMetrics, EngineSettings
from workers.errors import UnknownModel
from workers.host_lookup import EXTENSION
from workers.step_scheduler import StepPlan

logger = logging.getLogger(__name__)

#: Stream-handler op on the scheduler that receives per-step chunk metrics.
METRICS_OP = "turboserve-chunks"
#: Event topic (``worker.log_event``) of a worker whose default model is loaded.
#: An event, not a stream op: the scheduler accepts it even without the turboserve plugin.
READY_TOPIC = "turboserve-ready"


def device_free_bytes(device: str) -> int | None:
    """Free bytes on CUDA ``device`` now (``torch.cuda.mem_get_info``); None on a CPU.

    Sent with the ready report (:data:`READY_TOPIC`, after the default model loaded): the
    scheduler's admission counts sessions against it (:meth:`framework.admission.Admission.memory_fit`).

    >>> device_free_bytes("cpu") is None
    True
    """
    if not str(device).startswith("cuda"):
        return None
    import torch

    free, _total = torch.cuda.mem_get_info(torch.device(device))
    return int(free)


def pick_device() -> str:
    """``cuda:0`` when this process sees a GPU (its own, via CUDA_VISIBLE_DEVICES), else ``cpu``."""
    import torch

    return "cuda:0" if torch.cuda.is_available() else "cpu"


def freeze_heap() -> None:
    """Collect once, then move every object alive to the permanent generation (``gc.freeze``).

    A worker's heap after a model load (the model, torch, Dask, every import) lives as long
    as the worker; a full collection would scan it again and again, holding the GIL for
    hundreds of milliseconds (the engine's step and the event loop wait: a chunk's tail).
    Frozen, a full collection scans only what came after (``turboserve.engine.gc-freeze``).
    """
    gc.collect()
    gc.freeze()


class ModelHost(WorkerPlugin):
    """Loads models on the worker's device and runs one :class:`Engine` per model.

    Parameters
    ----------
    model : str
        Preset loaded at set-up (others load on first use).
    engine : EngineSettings
    store : str or None
        Checkpoint store URL (``turboserve.state.store``); None disables checkpoints.
    weights_seed : int
        Seed of the random weights of presets without a checkpoint (``tiny``).

    Examples
    --------
    >>> client.register_plugin(ModelHost("tiny", EngineSettings(max_batch=4), "/tmp/ckpt"))  # doctest: +SKIP
    """

    name = "turboserve-model-host"
    idempotent = True

    def __init__(
        self,
        model: str,
        engine: EngineSettings,
        store: str | None,
        weights_seed: int = 0,
        weights: dict[str, str] | None = None,
    ) -> None:
        self.model = model
        self.weights = dict(weights or {})  # preset name -> diffusers-layout checkpoint
        self.engine_settings = engine
        self.store = store
        self.weights_seed = weights_seed
        self._engines: dict[str, Engine] = {}
        self._lock = threading.Lock()
        self._checkpoints: Any = None
        self.worker: Any = None
        self.device = "cpu"

    def __getstate__(self) -> dict[str, Any]:
        return {k: self.__dict__[k] for k in ("model", "engine_settings", "store", "weights_seed", "weights")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**{"engine" if k == "engine_settings" else k: v for k, v in state.items()})

    async def setup(self, worker: Any) -> None:
        """Pin the device, load the default model off the event loop, start its engine, report ready.

        The report (an event on :data:`READY_TOPIC`: the models loaded, and the error if
        the load failed) goes out either way, so that the scheduler stops waiting for it.
        """
        _shadow_guard()
        self.worker = worker
        self.device = pick_device()
        worker.extensions[EXTENSION] = self
        worker.handlers[CALL_OP] = self._handle_call
        worker.handlers["turboserve_group"] = self._handle_group  # workers.parallel_group.GROUP_OP
        worker.handlers["turboserve_chunk_result"] = self._handle_result  # workers.chunk_futures.RESULT_OP
        logger.info("turboserve host on %s: device %s (CUDA_VISIBLE_DEVICES=%s)",
                    worker.address, self.device, os.environ.get("CUDA_VISIBLE_DEVICES"))
        try:
            await asyncio.to_thread(self._load_default)
        except Exception as exc:
            worker.log_event(READY_TOPIC, {"models": [], "error": f"{type(exc).__name__}: {exc}"})
            raise
        worker.log_event(READY_TOPIC, {"models": sorted(self._engines), "error": None,
                                       "device_free": device_free_bytes(self.device)})

    def _load_default(self) -> None:
        # turboserve.engine.model-load-delay: stands for a GPU-sized load in tests and demos.
        delay = parse_timedelta(dask.config.get("turboserve.engine.model-load-delay", 0) or 0, default="s")
        if delay:
            time.sleep(delay)
        self.engine(self.model)

    async def _handle_call(self, key: str, method: str, args: Any = (), kwargs: Any = None,
                           access_token: str | None = None) -> dict[str, Any]:
        from workers.session_actor import handle_call

        return await handle_call(self.worker, key, method, args, kwargs, access_token)

    async def _handle_group(self, action: str, group_id: str, **kw: Any) -> dict[str, Any]:
        from workers.parallel_group import handle_group

        return await handle_group(self.worker, action, group_id, **kw)

    async def _handle_result(self, key: Any, timeout: float, access_token: str | None = None) -> dict[str, Any]:
        from workers.chunk_futures import serve_result

        return await serve_result(self.worker, key, timeout, access_token)

    def teardown(self, worker: Any) -> None:
        """Stop every engine (their threads end after the current step)."""
        for engine in list(self._engines.values()):
            engine.stop()
        self._engines.clear()
        worker.extensions.pop(EXTENSION, None)

    def engine(self, model: str) -> Engine:
        """The running engine of ``model`` on this worker (loading it on first use)."""
        with self._lock:
            engine = self._engines.get(model)
            if engine is None:
                engine = self._engines[model] = self._build(model)
                if dask.config.get("turboserve.engine.gc-freeze", True):
                    freeze_heap()
            return engine

    def _build(self, model: str) -> Engine:
        from kernels.model import StreamingVideoModel
        from kernels.presets import packaged_weights

        try:
            # A configured checkpoint, else the one the package ships for the preset (tiny-trained).
            path = self.weights.get(model) or packaged_weights(model)
            invariant = self.engine_settings.batch_invariant  # resolved by the client: every worker agrees
            if path:
                net = StreamingVideoModel.from_pretrained(path, preset=model, device=self.device,
                                                          batch_invariant=invariant)
            else:
                net = StreamingVideoModel.from_preset(model, device=self.device, weights_seed=self.weights_seed,
                                                      batch_invariant=invariant)
        except (KeyError, ValueError) as exc:
            raise UnknownModel(f"cannot load model preset {model!r} on {self.worker.address}: {exc}") from exc
        import torch

        return Engine(
            net,
            self.worker.address,
            self.engine_settings,
            device=torch.device(self.device),
            checkpoint=self._checkpoint if self.store else None,
            on_step=self._report,
        ).start()

    def metrics(self) -> dict[str, EngineMetrics]:
        """Per model: the counters of this worker's engine (steps, chunks, degraded chunks).

        >>> client.run(lambda dask_worker: get_host(dask_worker).metrics())  # doctest: +SKIP
        """
        with self._lock:
            engines = dict(self._engines)
        return {model: engine.metrics() for model, engine in engines.items()}

    def checkpoints(self) -> Any:
        """This worker's :class:`storage.CheckpointStore` (None without a store URL)."""
        if self.store is None:
            return None
        with self._lock:
            if self._checkpoints is None:
                from storage import CheckpointStore

                self._checkpoints = CheckpointStore(self.store)
            return self._checkpoints

    def _checkpoint(self, session_id: str, state: Any) -> None:
        self.checkpoints().save(session_id, state)

    def _report(self, plan: StepPlan, chunks: list[Chunk]) -> None:
        # Fire-and-forget metrics to the scheduler plugin over the worker's batched
        # stream; batched_send must run on the event loop.
        rows = [(c.session_id, c.index, c.latency_s, c.batch_size, c.t_done_s) for c in chunks]
        msg: dict[str, Any] = {"op": METRICS_OP, "rows": rows}
        if plan.degraded:  # the quality valve ran this step with fewer denoising steps
            msg["degraded"] = len(chunks)
        worker = self.worker
        worker.loop.add_callback(worker.batched_send, msg)


def _shadow_guard() -> None:
    """Keep the project's ``storage`` package from being shadowed in a worker.

    A Dask worker puts its local directory first on ``sys.path`` and spills into a
    ``storage/`` folder there. With an editable install served by a meta-path finder
    (setuptools' default), that folder is picked up as a namespace package named
    ``storage``. Putting the project root on ``sys.path`` lets the regular package win.
    """
    root = str(pathlib.Path(__file__).resolve().parents[1])
    spec = importlib.util.find_spec("storage") if "storage" not in sys.modules else None
    shadowed = sys.modules.get("storage") is not None and getattr(sys.modules["storage"], "__file__", None) is None
    if (spec is not None and spec.origin is None) or shadowed:
        sys.modules.pop("storage", None)
        if root not in sys.path:
            sys.path.append(root)
        importlib.invalidate_caches()
