"""The control loop's configuration: :class:`ControlSettings` and where its defaults come from.

The settings resolve ``turboserve.*`` (``framework.config``) once; the built-in
policies' parameters come from :func:`default_policy_params` (the same mapping the
simulator's paper sets use), the default latency model from a preset's measured CPU
profile (:func:`profile_points`) and the step model of parallel groups from the preset's
geometry (:func:`parallel_step_model`, which the simulator uses too).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from policies.combined import Combined
from policies.registry import make
from policies.types import DEFAULT_WORKER_MEMORY_BYTES, BatchLatencyModel, ParallelStepModel

logger = logging.getLogger(__name__)


def _seconds(value: Any) -> float:
    from dask.utils import parse_timedelta

    return float(parse_timedelta(value, default="s"))


def _config(key: str) -> Any:
    from framework import config

    return config.get(key)


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def gpu_memory_bytes() -> int:
    """A GPU worker's device memory: ``turboserve.simulator.gpu-memory-bytes``.

    null (the default): :data:`policies.types.DEFAULT_WORKER_MEMORY_BYTES` (80 GiB), the
    policies' own size of a worker, so that the figure is written once.
    """
    value = _config("simulator.gpu-memory-bytes")
    return DEFAULT_WORKER_MEMORY_BYTES if value is None else int(float(value))


def _optional_seconds(value: Any) -> float | None:
    return None if value is None else _seconds(value)


@dataclass(frozen=True, slots=True)
class ControlSettings:
    """The resolved configuration of the control loop (build with :meth:`from_config`).

    Every field not given is read from ``turboserve.*`` (defaults and their documentation
    in ``framework/turboserve.yaml``); :meth:`from_config` also fills the built-in
    policies' parameters and the preset's latency profile.

    Parameters
    ----------
    interval_s
        Control tick in (trace) seconds (``turboserve.control.interval``).
    placement, autoscaling, offload
        Registry names of the three policies (``turboserve.policies.*``).
    placement_params, autoscaling_params, offload_params
        Keyword parameters of each policy (defaults from ``turboserve.control.*`` and
        ``turboserve.autoscale.*`` for the built-in names).
    parallelism, parallelism_params
        Registry name and parameters of the parallelism policy (``fixed``, ``adaptive``;
        ``turboserve.policies.parallelism``); None: the loop forms and splits no groups
        (``server.set_parallelism`` still does).
    parallel
        How a step's time changes with a group's degree (:func:`parallel_step_model` of
        the served preset), in wall seconds like ``latency_points``; the snapshot's
        ``parallel``. None: the policies' ideal default (no communication, efficiency 1).
    minimum, maximum
        Bounds on the number of workers (``turboserve.autoscale.minimum/maximum``).
    slo_s
        Per-chunk latency target in (trace) seconds; None: the median playback period
        of the open sessions (``turboserve.slo-s``).
    max_batch
        Most sessions in one coalesced step (``turboserve.engine.max-batch``).
    valve_batch
        The engines' quality valve (``turboserve.engine.quality-valve.batch``, b*; 0:
        off). When on and below ``max_batch``, the policies place and size for it and
        see ``max_batch`` as the valve's batch (``WorkerView.valve_batch``), as in the
        simulator.
    worker_memory_bytes
        Device memory a policy may hand out per worker.
    latency_points
        ``((batch_size, step_s), ...)`` in wall seconds: the latency model used until
        (or, with ``measure=False``, instead of) live measurements. Default: the
        preset's measured CPU profile (``kernels/profiles/<model>-cpu.csv``) when it
        exists, else one step of 0.1 s.
    measure
        Learn the latency model from the workers' recent chunks.
    worker_startup_s
        Expected wall seconds from a scale-up to a usable worker, for the policies
        (``turboserve.autoscale.worker-startup-s``).
    time_scale
        Trace seconds per wall second (1: real time).
    """

    interval_s: float = field(default_factory=lambda: _seconds(_config("control.interval")))
    placement: str = field(default_factory=lambda: _config("policies.placement"))
    autoscaling: str = field(default_factory=lambda: _config("policies.autoscaling"))
    offload: str = field(default_factory=lambda: _config("policies.offload"))
    placement_params: dict[str, Any] = field(default_factory=dict)
    autoscaling_params: dict[str, Any] = field(default_factory=dict)
    offload_params: dict[str, Any] = field(default_factory=dict)
    minimum: int = field(default_factory=lambda: int(_config("autoscale.minimum")))
    maximum: int = field(default_factory=lambda: int(_config("autoscale.maximum")))
    slo_s: float | None = field(default_factory=lambda: _optional_float(_config("slo-s")))
    max_batch: int = field(default_factory=lambda: int(_config("engine.max-batch")))
    valve_batch: int = field(default_factory=lambda: int(_config("engine.quality-valve.batch")))
    worker_memory_bytes: int = field(default_factory=gpu_memory_bytes)
    latency_points: tuple[tuple[int, float], ...] = ((1, 0.1),)
    measure: bool = True
    worker_startup_s: float = field(default_factory=lambda: _seconds(_config("autoscale.worker-startup-s")))
    time_scale: float = 1.0
    parallelism: str | None = None
    parallelism_params: dict[str, Any] = field(default_factory=dict)
    parallel: ParallelStepModel | None = None

    def __post_init__(self) -> None:
        if not self.interval_s > 0:
            raise ValueError(f"control.interval must be > 0 seconds, got {self.interval_s!r}")
        if not 0 <= self.minimum <= self.maximum:
            raise ValueError(f"need 0 <= autoscale.minimum <= autoscale.maximum, got {self.minimum}, {self.maximum}")
        if not self.time_scale > 0:
            raise ValueError(f"time_scale must be > 0 (trace seconds per wall second), got {self.time_scale!r}")
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch!r}")
        BatchLatencyModel(*zip(*self.latency_points))  # validates the points

    @classmethod
    def from_config(cls, **overrides: Any) -> "ControlSettings":
        """Read ``turboserve.*`` (``framework.config``); non-None ``overrides`` win.

        Policy parameters given in ``overrides`` are merged over the configured ones.
        """
        from framework import config

        placement = overrides.pop("placement", None) or config.get("policies.placement")
        autoscaling = overrides.pop("autoscaling", None) or config.get("policies.autoscaling")
        offload = overrides.pop("offload", None) or config.get("policies.offload")
        slo = config.get("slo-s")
        max_batch = int(overrides.get("max_batch") or config.get("engine.max-batch"))
        memory = gpu_memory_bytes()
        params = default_policy_params(placement, autoscaling, offload, max_batch=max_batch, worker_memory=memory)
        for kind in ("placement", "autoscaling", "offload"):
            params[kind].update(overrides.pop(f"{kind}_params", None) or {})
        values: dict[str, Any] = {
            "interval_s": _seconds(config.get("control.interval")),
            "placement": placement,
            "autoscaling": autoscaling,
            "offload": offload,
            "placement_params": params["placement"],
            "autoscaling_params": params["autoscaling"],
            "offload_params": params["offload"],
            "minimum": int(config.get("autoscale.minimum")),
            "maximum": int(config.get("autoscale.maximum")),
            "slo_s": None if slo is None else float(slo),
            "max_batch": max_batch,
            "valve_batch": int(config.get("engine.quality-valve.batch")),
            "worker_memory_bytes": memory,
            "worker_startup_s": _seconds(config.get("autoscale.worker-startup-s")),
        }
        points = profile_points(str(config.get("model")))
        if points:
            values["latency_points"] = points
        values["parallelism"] = overrides.pop("parallelism", None) or config.get("policies.parallelism")
        values["parallelism_params"] = dict(overrides.pop("parallelism_params", None) or {})
        if values["parallelism"] and "degrees" not in values["parallelism_params"]:
            from framework.parallelism import model_degrees  # the served model's degrees, as the simulator's

            values["parallelism_params"]["degrees"] = model_degrees(str(config.get("model")))
        values["parallel"] = parallel_step_model(str(config.get("model")))
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "interval_s" in overrides and overrides["interval_s"] is not None:
            values["interval_s"] = _seconds(overrides["interval_s"])
        return cls(**values)

    def build(self) -> Combined:
        """The three policies (and the parallelism one, if named), deciding together on one capacity ledger."""
        return Combined(
            make("placement", self.placement, **self.placement_params),
            make("autoscaling", self.autoscaling, **self.autoscaling_params),
            make("offload", self.offload, **self.offload_params),
            make("parallelism", self.parallelism, **self.parallelism_params) if self.parallelism else None,
        )

    @property
    def label(self) -> str:
        """``placement+autoscaling+offload``, the policy label of results."""
        return f"{self.placement}+{self.autoscaling}+{self.offload}"


def profile_points(model: str, folder: Any = None) -> tuple[tuple[int, float], ...]:
    """``(batch_size, step_s)`` of ``kernels/profiles/<model>-cpu.csv`` (median per batch), or ``()``.

    The measured CPU profile of a preset, used as the latency model until live
    chunks have been measured. Rows at the smallest ``context_frames`` only;
    ``folder`` replaces ``kernels/profiles``.
    """
    import csv
    import pathlib
    import statistics

    root = pathlib.Path(__file__).resolve().parents[1] / "kernels" / "profiles" if folder is None else folder
    path = pathlib.Path(root) / f"{model}-cpu.csv"
    if not path.is_file():
        return ()
    with path.open() as f:
        rows = [r for r in csv.DictReader(line for line in f if not line.lstrip().startswith("#"))]
    if not rows or not {"batch_size", "step_s"} <= set(rows[0]):
        logger.warning("latency profile %s lacks batch_size,step_s columns; ignored", path)
        return ()
    ctx = [float(r.get("context_frames") or 0) for r in rows]
    by_batch: dict[int, list[float]] = {}
    for r, c in zip(rows, ctx):
        if c == min(ctx):
            by_batch.setdefault(int(r["batch_size"]), []).append(float(r["step_s"]))
    return tuple((b, statistics.median(v)) for b, v in sorted(by_batch.items()))


def parallel_step_model(
    model: str,
    *,
    efficiency: float | None = None,
    link_bytes_per_s: float | None = None,
    collective_latency_s: float | None = None,
    batch_scales_with_degree: bool | None = None,
    height: int | None = None,
    width: int | None = None,
) -> ParallelStepModel:
    """The :class:`~policies.types.ParallelStepModel` of preset ``model`` (Ulysses by heads).

    The bytes come from the preset's geometry (``alltoall_bytes_per_chunk``), the fixed
    part from its collectives (2 all-to-alls per layer and forward, ``denoise_steps + 1``
    forwards a chunk); the link, latency and efficiency default to
    ``turboserve.simulator.parallel.*``. The one source of the step model: the live
    control loop's snapshot (:meth:`ControlSettings.from_config`) and the simulator
    (``experiments.sim.models.parallel_model``).
    """
    from framework import config
    from kernels.presets import get_preset

    preset = get_preset(model)
    h = preset.default_height if height is None else int(height)
    w = preset.default_width if width is None else int(width)

    def pick(value: Any, key: str) -> Any:
        return config.get(f"simulator.parallel.{key}") if value is None else value

    collectives = 2 * preset.num_layers * (preset.denoise_steps + 1)
    return ParallelStepModel(
        efficiency=float(pick(efficiency, "efficiency")),
        comm_latency_s=collectives * float(pick(collective_latency_s, "collective-latency-s")),
        comm_bytes_per_session=float(preset.alltoall_bytes_per_chunk(h, w)),
        link_bytes_per_s=float(pick(link_bytes_per_s, "link-bytes-per-s")),
        batch_scales_with_degree=bool(pick(batch_scales_with_degree, "batch-scales-with-degree")),
    )


def _keep_from_newcomers_s(config: Any) -> float | None:
    """``control.keep-idle-from-newcomers-s``, null meaning ``autoscale.provision-idle-s``."""
    own = config.get("control.keep-idle-from-newcomers-s")
    return _optional_seconds(config.get("autoscale.provision-idle-s") if own is None else own)


def default_policy_params(
    placement: str, autoscaling: str, offload: str, *, max_batch: int, worker_memory: int
) -> dict[str, dict[str, Any]]:
    """Parameters of the built-in policies from ``turboserve.control.*`` / ``autoscale.*``.

    The same mapping the simulator's paper sets use, so that a live run and a simulated
    one with the same configuration run the same policies.
    """
    from framework import config

    out: dict[str, dict[str, Any]] = {"placement": {}, "autoscaling": {}, "offload": {}}
    if placement == "migration-aware":
        out["placement"] = {
            "min_gain": float(config.get("control.migration-gain")),
            "rebalance_above_slo": bool(config.get("control.rebalance-above-slo")),
            "keep_idle_slots": bool(config.get("control.keep-idle-slots")),
            # by default as long as the autoscaler pays for a kept slot, no newcomer takes it
            "keep_idle_s": _keep_from_newcomers_s(config),
            "max_drain_migrations": int(config.get("control.max-drain-migrations")),
            "valve_admission": bool(config.get("control.valve-admission")),
            "valve_budget": _optional_float(config.get("control.valve-budget")),
            "valve_lend_active": bool(config.get("control.valve-lend-active")),
            "valve_lend_at_max": bool(config.get("control.valve-lend-at-max")),
        }
    if autoscaling == "hpa":
        out["autoscaling"] = {
            "target_utilisation": float(config.get("autoscale.target-utilisation")),
            "tolerance": float(config.get("autoscale.tolerance")),
            "downscale_stabilisation_s": float(config.get("autoscale.downscale-stabilisation-s")),
            "upscale_delay_s": float(config.get("autoscale.upscale-delay-s")),
        }
    elif autoscaling == "load-driven":
        out["autoscaling"] = {
            "target_utilisation": float(config.get("autoscale.load-driven-utilisation")),
            "downscale_delay_s": _optional_seconds(config.get("autoscale.load-driven-downscale-delay-s")),
            "worker_max_batch": int(max_batch),
            "worker_memory_bytes": int(worker_memory),
            "provision_idle": bool(config.get("control.keep-idle-slots")),
            "provision_idle_s": _optional_seconds(config.get("autoscale.provision-idle-s")),
            "provision_returns": bool(config.get("autoscale.provision-returns")),
            "admission_wait_share": _optional_float(config.get("autoscale.admission-wait-share")),
            # an SLO below one step: buy GPUs only for gains placement would move a session for
            "unmet_slo_slack": float(config.get("control.migration-gain")),
            "spare_workers": int(config.get("autoscale.spare-workers")),
        }
    if offload == "idle-timeout":
        out["offload"]["idle_s"] = float(config.get("control.idle-offload-s"))
    return out
