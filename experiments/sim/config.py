"""Configuration records of a simulation: the cluster knobs and the three policies."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable

from dask.utils import parse_timedelta

from experiments.sim.latency import LatencySpec
from framework import config as tconfig
from framework.control_settings import gpu_memory_bytes
from policies.registry import make
from policies.types import ParallelStepModel, Policy


def _seconds(value: Any) -> float:
    return float(parse_timedelta(value, default="s"))


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _from_yaml(key: str, convert: Callable[[Any], Any]) -> Any:
    """A field whose default is ``turboserve.<key>`` (framework/turboserve.yaml), read when a record is made."""
    return field(default_factory=lambda: convert(tconfig.get(key)))


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Knobs of one simulated cluster.

    A knob the YAML holds takes its default from the resolved ``turboserve.*`` dask
    config (``framework/turboserve.yaml``, one source) when the record is made:
    ``SimConfig()`` equals ``SimConfig.from_config()``. The others (cluster size, what
    to record, the latency model) are the experiment's.

    Parameters
    ----------
    initial_workers
        Workers running (warm, already paid for) at time 0.
    min_workers, max_workers
        Bounds the simulator enforces on ``ScaleTo`` (a larger target is clipped and counted
        as a refusal).
    interval_s
        Control tick: every ``interval_s`` the policies see a snapshot and act.
    slo_s
        Per-chunk latency target; ``None`` means each session's playback period
        (``chunk_frames / fps``).
    worker_startup_s, migrate_bytes_per_s, offload_bytes_per_s, gpu_memory_bytes
        Mechanism costs (``turboserve.simulator.*``).
    migration_fixed_s
        Fixed cost of every migration, on top of ``state_bytes / migrate_bytes_per_s``
        (new actor, state hand-over, restart): the session's next chunk cannot start
        before the copy start plus both. 0 (the default) charges the bandwidth only.
    max_batch
        Most sessions in one coalesced step (``turboserve.engine.max-batch``).
    oracle_hints
        Pass each suspended session's true next activation time to the policies.
    record_chunks
        Keep every chunk row (False keeps only latencies and per-chunk SLO flags, for
        very long runs).
    end_s
        Stop at this virtual time (default: the last trace event).
    measure_from_s
        Start of the measurement window: a run's summary (latency statistics over the
        chunks asked for from then on, GPU-hours, migrations, offloads and degraded
        chunks from then on) and its oracle leave out the time before. The run itself
        starts at 0 as always, so each policy enters the window with the cluster and
        the state it provisioned for itself (a warm-up, not a different start). 0
        (default): the whole run.
    latency
        The step-time model (:class:`~experiments.sim.latency.LatencySpec`: the model
        preset's profile, a named profile, or the parametric ``t1 * (1 + a (b - 1))``).
    align_phases
        Phase alignment of coalesced steps (``turboserve.simulator.align-phases``): a
        step that starts for due sessions also makes the next chunk of sessions due
        within one period, while batching pays and no due chunk misses its deadline.
        Off: a step takes only the sessions due at its start.
    quality_valve
        Run a step whose predicted time misses the SLO with fewer denoising steps
        (``turboserve.simulator.quality-valve``); its chunks are counted as degraded.
    valve_step_ratio
        Time of a degraded step as a share of the full one
        (``turboserve.simulator.valve-step-ratio``; see the YAML for the derivation).
    place_on_arrival
        Place a session when it arrives or comes back from suspension, as live admission
        does (``turboserve.simulator.place-on-arrival``); False: at the next control tick.
    placement_batch
        Batch slots per worker that the policies see (``WorkerView.max_batch``), when
        fewer than the engine's ``max_batch``: with the quality valve, the engine may run
        a degraded step of more sessions than the policies place on a worker (the valve
        absorbs a transient overflow; it is not capacity to fill). None: ``max_batch``.
    parallel
        How a step's time changes at parallel degree ``k``
        (:class:`~policies.types.ParallelStepModel`, built per model by
        :func:`experiments.sim.models.parallel_model`); None: no parallel groups.
    transform_fixed_s
        Fixed pause of a group transformation (form or split) on top of re-sharding the
        sessions' KV over the link (``turboserve.simulator.parallel.transform-fixed-s``).
    """

    initial_workers: int = 1
    min_workers: int = 0
    max_workers: int = 1_000_000
    interval_s: float = _from_yaml("control.interval", _seconds)
    slo_s: float | None = _from_yaml("slo-s", _optional_float)
    worker_startup_s: float = _from_yaml("simulator.worker-startup-s", _seconds)
    migrate_bytes_per_s: float = _from_yaml("simulator.migrate-bytes-per-s", float)
    migration_fixed_s: float = _from_yaml("simulator.migration-fixed-s", _seconds)
    offload_bytes_per_s: float = _from_yaml("simulator.offload-bytes-per-s", float)
    gpu_memory_bytes: float = field(default_factory=lambda: float(gpu_memory_bytes()))
    max_batch: int = _from_yaml("engine.max-batch", int)
    oracle_hints: bool = False
    record_chunks: bool = True
    end_s: float | None = None
    measure_from_s: float = 0.0
    latency: LatencySpec = LatencySpec()
    align_phases: bool = _from_yaml("simulator.align-phases", bool)
    quality_valve: bool = _from_yaml("simulator.quality-valve", bool)
    valve_step_ratio: float = _from_yaml("simulator.valve-step-ratio", float)
    placement_batch: int | None = None
    place_on_arrival: bool = _from_yaml("simulator.place-on-arrival", bool)
    parallel: ParallelStepModel | None = None
    transform_fixed_s: float = _from_yaml("simulator.parallel.transform-fixed-s", _seconds)

    def __post_init__(self) -> None:
        if not 0 < self.valve_step_ratio <= 1:
            raise ValueError(f"valve_step_ratio must be in (0, 1], got {self.valve_step_ratio}")
        if self.interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {self.interval_s}")
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.placement_batch is not None and not 1 <= self.placement_batch <= self.max_batch:
            raise ValueError(f"placement_batch must be in [1, max_batch={self.max_batch}] or None, got {self.placement_batch}")
        if not 0 <= self.min_workers <= self.max_workers:
            raise ValueError(f"need 0 <= min_workers <= max_workers, got {self.min_workers}, {self.max_workers}")
        if self.migrate_bytes_per_s <= 0 or self.offload_bytes_per_s <= 0:
            raise ValueError("migrate_bytes_per_s and offload_bytes_per_s must be > 0")
        if not 0 <= self.transform_fixed_s < float("inf"):
            raise ValueError(f"transform_fixed_s must be finite and >= 0 seconds, got {self.transform_fixed_s}")
        if not 0 <= self.measure_from_s < float("inf"):
            raise ValueError(f"measure_from_s must be finite and >= 0 seconds, got {self.measure_from_s}")
        if not 0 <= self.migration_fixed_s < float("inf"):
            raise ValueError(f"migration_fixed_s must be finite and >= 0 seconds, got {self.migration_fixed_s}")

    @classmethod
    def from_config(cls, **overrides: Any) -> "SimConfig":
        """``SimConfig(**overrides)``, with None overrides left out and unknown names refused."""
        known = {f.name for f in fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise ValueError(f"unknown SimConfig fields {sorted(unknown)}; known: {sorted(known)}")
        return cls(**{k: v for k, v in overrides.items() if v is not None})

    def with_(self, **changes: Any) -> "SimConfig":
        """A copy with ``changes`` applied."""
        return replace(self, **changes)


@dataclass(frozen=True, slots=True)
class PolicySpec:
    """A policy by registry name and parameters (plain data: picklable, printable)."""

    kind: str
    name: str
    params: dict[str, Any] = field(default_factory=dict)

    def build(self) -> Policy:
        """Make a fresh policy object through :func:`policies.registry.make`."""
        return make(self.kind, self.name, **self.params)

    def label(self) -> str:
        """``name`` or ``name(k=v,...)``."""
        if not self.params:
            return self.name
        return f"{self.name}({','.join(f'{k}={v}' for k, v in sorted(self.params.items()))})"


@dataclass(frozen=True, slots=True)
class PolicySet:
    """The three policies one simulated (or live) run uses, with a label for results.

    Examples
    --------
    >>> ps = PolicySet.of("least-loaded", "fixed", "never", autoscaling_params={"n": 4})
    >>> ps.label
    'least-loaded+fixed(n=4)+never'
    """

    placement: PolicySpec | Policy
    autoscaling: PolicySpec | Policy
    offload: PolicySpec | Policy
    name: str | None = None
    #: A ``parallelism`` policy (:mod:`policies.parallelism`), or None: every worker alone.
    parallelism: PolicySpec | Policy | None = None

    @classmethod
    def of(
        cls,
        placement: str,
        autoscaling: str,
        offload: str,
        *,
        placement_params: dict[str, Any] | None = None,
        autoscaling_params: dict[str, Any] | None = None,
        offload_params: dict[str, Any] | None = None,
        name: str | None = None,
    ) -> "PolicySet":
        """Build from registry names and parameter dicts."""
        return cls(
            PolicySpec("placement", placement, dict(placement_params or {})),
            PolicySpec("autoscaling", autoscaling, dict(autoscaling_params or {})),
            PolicySpec("offload", offload, dict(offload_params or {})),
            name,
        )

    @property
    def label(self) -> str:
        """The run's policy label: ``name`` if given, else the three specs joined by ``+``."""
        if self.name:
            return self.name
        specs = (self.placement, self.autoscaling, self.offload)
        if self.parallelism is not None:
            specs += (self.parallelism,)
        return "+".join(
            s.label() if isinstance(s, PolicySpec) else str(getattr(s, "name", type(s).__name__)) for s in specs
        )

    def build(self) -> tuple[Policy, ...]:
        """(placement, autoscaling, offload[, parallelism]) policy objects.

        Specs are built afresh; a policy object given directly is used as is (policies
        keep their state explicit, so one object can serve several runs).
        """
        specs = (self.placement, self.autoscaling, self.offload)
        if self.parallelism is not None:
            specs += (self.parallelism,)
        return tuple(p.build() if isinstance(p, PolicySpec) else p for p in specs)
