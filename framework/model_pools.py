"""Model pools: which model presets a worker serves, written as Dask worker resources.

A worker serves model ``m`` when it advertises the resource ``model-<m>`` (any amount):
``dask worker tcp://... --resources "model-tiny=1"``, ``LocalCluster(resources=...)``, or
``Server.local(models=...)``, which sets them. A worker that advertises no ``model-*``
resource serves any model (loaded on demand), as before pools. The scheduler plugin reads
the resources of each worker (:func:`models_of`), the control loop shows them to the
policies as ``WorkerView.models``, and the policies place, migrate and resume a session
only on a worker that serves its model (``policies.types.WorkerView.serves``).

A session for a model no worker of the cluster serves is refused at ``open`` with
:class:`~framework.errors.ModelNotServed` (whatever ``admission.on-full`` says: the
autoscaler starts workers like the ones it has, so waiting would not bring one). When
the model's pool exists but is full, ``admission.on-full`` applies (queue or refuse).

>>> sorted(worker_resources(["tiny", "wan-1.3b"]))
['model-tiny', 'model-wan-1.3b']
>>> models_of({"GPU": 1, "model-tiny": 1}), models_of({"GPU": 1})
(frozenset({'tiny'}), None)
>>> [sorted(m) for m in pool_plan({"tiny": 2, "wan-1.3b": 1}, None)]
[['tiny'], ['tiny'], ['wan-1.3b']]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from framework.errors import InvalidRequest, ModelNotServed, UnknownModel
from kernels.presets import PRESETS

#: Resource-name prefix of a served model (``model-tiny``).
RESOURCE_PREFIX = "model-"

Models = frozenset[str] | None  # None: serves any model


def resource_name(model: str) -> str:
    """The Dask resource a worker serving ``model`` advertises."""
    return RESOURCE_PREFIX + model


def worker_resources(models: Iterable[str]) -> dict[str, float]:
    """Resources of a worker serving ``models`` (one unit each)."""
    return {resource_name(m): 1 for m in models}


def models_of(resources: Mapping[str, float] | None) -> Models:
    """The models a worker with ``resources`` serves; None when it names none (it serves any)."""
    if not resources:
        return None
    models = frozenset(k[len(RESOURCE_PREFIX):] for k in resources if k.startswith(RESOURCE_PREFIX))
    return models or None


def pool_plan(models: Iterable[str] | Mapping[str, int], n_workers: int | None) -> list[frozenset[str]]:
    """The models of each worker ``Server.local(models=...)`` starts.

    A list (or set) of presets: every one of ``n_workers`` workers serves all of them. A
    mapping preset -> count: that many workers serve that preset only (``n_workers``,
    when given, must equal the sum). Raises ``UnknownModel`` for a preset that does not
    exist and ``InvalidRequest`` for an empty or inconsistent request.
    """
    if isinstance(models, str):
        models = [models]
    if isinstance(models, Mapping):
        counts = dict(models)
        for m, n in counts.items():
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise InvalidRequest(f"models={dict(models)!r}: each pool needs an int >= 1 workers, got {m!r}: {n!r}")
        total = sum(counts.values())
        if n_workers is not None and n_workers != total:
            raise InvalidRequest(f"n_workers={n_workers} but models={counts!r} asks for {total} workers; "
                                 "give one of them, or make them agree")
        plan = [frozenset({m}) for m, n in counts.items() for _ in range(n)]
    else:
        names = list(models)
        if n_workers is None:
            raise InvalidRequest("models as a list needs n_workers (or give a dict: preset -> workers)")
        plan = [frozenset(names)] * n_workers
    names = sorted(set().union(*plan)) if plan else []
    if not names:
        raise InvalidRequest(f"models={models!r} names no model; give presets from {sorted(PRESETS)}")
    unknown = [m for m in names if m not in PRESETS]
    if unknown:
        raise UnknownModel(f"unknown model preset(s) {unknown} in models=; known: {sorted(PRESETS)}")
    return plan


def check_served(model: str, workers: Mapping[str, Models], worker: str | None = None) -> None:
    """Raise :class:`~framework.errors.ModelNotServed` when no worker (or not ``worker``) serves ``model``.

    ``workers`` maps each worker's address to its models (None: any). A cluster with no
    worker yet refuses nothing (the autoscaler may still start one).

    >>> check_served("tiny", {"w1": frozenset({"tiny"}), "w2": None})
    >>> check_served("wan-1.3b", {"w1": frozenset({"tiny"})})
    Traceback (most recent call last):
    ...
    framework.errors.ModelNotServed: no worker serves model 'wan-1.3b' (served: ['tiny']); start a worker with the resource 'model-wan-1.3b' (dask worker ... --resources "model-wan-1.3b=1", or Server.local(models=[...])), or open the session with a served model
    """
    if worker is not None:
        models = workers.get(worker)
        if worker in workers and models is not None and model not in models:
            raise ModelNotServed(
                f"worker {worker!r} does not serve model {model!r} (it serves {sorted(models)}); "
                f"name a worker with the resource {resource_name(model)!r}, or leave worker= out"
            )
        return
    if not workers or any(m is None or model in m for m in workers.values()):
        return
    served = sorted(set().union(*workers.values()))
    raise ModelNotServed(
        f"no worker serves model {model!r} (served: {served}); start a worker with the resource "
        f"{resource_name(model)!r} (dask worker ... --resources \"{resource_name(model)}=1\", "
        f"or Server.local(models=[...])), or open the session with a served model"
    )
