"""Workload specs as plain data: from and to dicts, and from a YAML file."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

from traces.distributions import Dist, Family
from traces.rates import rate_from_dict
from traces.spec import ClientSpec, RateWindows, Variant, WorkloadSpec


def _variant_from_dict(data: dict[str, Any]) -> Variant:
    return Variant(**{k: (float(v) if k == "weight" else (str(v) if k == "model" else int(v)))
                      for k, v in data.items()})


def client_from_dict(data: dict[str, Any]) -> ClientSpec:
    """Build a :class:`ClientSpec` from plain data (the ``clients`` entries of a YAML spec).

    Keys: ``id`` (or ``client_id``), ``rate`` (a number, or rate windows
    ``{window_s, rates, cvs, families}``), ``interarrival``, ``cv``, ``shape``,
    ``lifetime``/``active``/``idle`` (``{family, mean, cv, max}`` or ``null``), ``mix``
    (list of variants), ``weight``.
    """
    data = dict(data)
    known = {"id", "client_id", "rate", "interarrival", "cv", "shape", "lifetime", "active",
             "idle", "mix", "weight"}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown client keys {sorted(unknown)}; known: {sorted(known)}")
    kwargs: dict[str, Any] = {"client_id": str(data.pop("id", data.pop("client_id", "")))}
    for key in ("rate", "cv", "weight"):
        if key in data and not (key == "rate" and isinstance(data[key], dict)):
            kwargs[key] = float(data[key])
    if isinstance(data.get("rate"), dict):
        w = dict(data["rate"])
        if set(w) != {"window_s", "rates", "cvs", "families"}:
            raise ValueError(
                f"rate windows need exactly window_s, rates, cvs, families; got {sorted(w)}"
            )
        kwargs["rate"] = RateWindows(
            tuple(map(float, w["rates"])), tuple(map(float, w["cvs"])),
            tuple(map(str, w["families"])), float(w["window_s"]),
        )
    if "interarrival" in data:
        kwargs["interarrival"] = data["interarrival"]
    if "shape" in data:
        kwargs["shape"] = None if data["shape"] is None else rate_from_dict(data["shape"])
    for key in ("lifetime", "active", "idle"):
        if key in data:
            kwargs[key] = None if data[key] is None else Dist.from_dict(data[key])
    if "mix" in data:
        kwargs["mix"] = tuple(_variant_from_dict(v) for v in data["mix"])
    return ClientSpec(**kwargs)


def spec_from_dict(data: dict[str, Any]) -> WorkloadSpec:
    """Build a :class:`WorkloadSpec` from plain data (a parsed YAML spec).

    Keys: ``clients`` (list; an entry may carry ``replicas: N`` to make N copies named
    ``ID-0 .. ID-N-1``), ``client_defaults`` (keys every client entry starts from),
    ``duration_s``, ``rate`` (see :func:`traces.rates.rate_from_dict`),
    ``total_rate``, ``scale``, ``warmup_s``, ``offset_s``, ``seed``, ``grid_s``.
    """
    data = dict(data)
    known = {"clients", "client_defaults", "duration_s", "rate", "total_rate", "scale",
             "warmup_s", "offset_s", "seed", "grid_s", "description"}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown workload keys {sorted(unknown)}; known: {sorted(known)}")
    if "clients" not in data or "duration_s" not in data:
        raise ValueError("a workload spec needs 'clients' and 'duration_s'")
    clients: list[ClientSpec] = []
    defaults = dict(data.get("client_defaults") or {})
    for entry in data["clients"]:
        entry = {**defaults, **dict(entry)}
        replicas = int(entry.pop("replicas", 1))
        base = client_from_dict(entry)
        if replicas == 1:
            clients.append(base)
        else:
            clients.extend(replace(base, client_id=f"{base.client_id}-{i}") for i in range(replicas))
    return WorkloadSpec(
        clients=tuple(clients),
        duration_s=float(data["duration_s"]),
        rate=rate_from_dict(data.get("rate")),
        total_rate=None if data.get("total_rate") is None else float(data["total_rate"]),
        scale=float(data.get("scale", 1.0)),
        warmup_s=float(data.get("warmup_s", 0.0)),
        offset_s=float(data.get("offset_s", 0.0)),
        seed=int(data.get("seed", 0)),
        grid_s=float(data.get("grid_s", 5.0)),
    )


def load_spec(path: str | os.PathLike[str]) -> WorkloadSpec:
    """Read a YAML workload spec (see :func:`spec_from_dict` for the keys)."""
    import yaml

    if not os.path.exists(path):
        raise FileNotFoundError(f"workload spec {os.fspath(path)!r} does not exist")
    with open(path) as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict):
        raise ValueError(f"workload spec {os.fspath(path)!r} must be a YAML mapping")
    return spec_from_dict(data)


def client_to_dict(client: ClientSpec) -> dict[str, Any]:
    """Plain-data form of a client; inverse of :func:`client_from_dict`."""
    rate: Any = client.rate
    if isinstance(rate, RateWindows):
        rate = {"window_s": rate.window_s, "rates": list(rate.rates), "cvs": list(rate.cvs),
                "families": list(rate.families)}
    return {
        "id": client.client_id,
        "rate": rate,
        "interarrival": Family(client.interarrival).value,
        "cv": client.cv,
        "shape": None if client.shape is None else client.shape.to_dict(),
        "lifetime": client.lifetime.to_dict(),
        "active": None if client.active is None else client.active.to_dict(),
        "idle": None if client.idle is None else client.idle.to_dict(),
        "mix": [
            {"model": v.model, "chunk_frames": v.chunk_frames, "height": v.height,
             "width": v.width, "fps": v.fps, "weight": v.weight}
            for v in client.mix
        ],
        "weight": client.weight,
    }


def spec_to_dict(spec: WorkloadSpec) -> dict[str, Any]:
    """Plain-data form of a workload (YAML-ready); inverse of :func:`spec_from_dict`.

    Experiments can store it with their results to record exactly what was generated.
    """
    return {
        "duration_s": spec.duration_s,
        "seed": spec.seed,
        "scale": spec.scale,
        "total_rate": spec.total_rate,
        "warmup_s": spec.warmup_s,
        "offset_s": spec.offset_s,
        "grid_s": spec.grid_s,
        "rate": spec.rate.to_dict(),
        "clients": [client_to_dict(c) for c in spec.clients],
    }
