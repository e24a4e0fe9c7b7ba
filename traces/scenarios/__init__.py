"""Named workload scenarios: ready-made traces for experiments, tests and the CLI.

=========================  ==============================================  ===========
name                       what                                            default
=========================  ==============================================  ===========
``steady``                 8 synthetic clients, constant rate              1 h
``diurnal``                the same clients under a daily sinusoid         24 h
``flash-crowd``            the same clients with a 5x spike at 20 min      1 h
``servegen-language``      ServeGen ``language/m-large`` (162 clients)     24 h
``servegen-multimodal``    ServeGen ``multimodal/mm-image`` (35 clients)   24 h
``servegen-reason``        ServeGen ``reason/deepseek-r1`` (73 clients)    24 h
``servegen-language-lite``  m-large day 1 summarised in a YAML (no data)    24 h
``mixed-14b-share``        wan-1.3b + wan-14b, 14B share 10-40% over a day  24 h
``mooncake-conversation``  Mooncake multi-turn conversations as sessions   1 h
``azure-conv``             Azure LLM 2023 conversation arrivals            ~1 h
``azure-code``             Azure LLM 2023 code arrivals (CV about 13)      ~1 h
=========================  ==============================================  ===========

``scale=1`` aims at the load of about 64 GPUs: a mean of roughly 250 active sessions
(about 0.75 session opens per second with the default session profile); ``scale=16``
is about 1024 GPUs. ``mooncake-conversation`` at ``scale=1`` is the trace as recorded
(about 110 active sessions). The synthetic scenarios
and ``servegen-language-lite`` (a few-KB hourly summary of ServeGen m-large, so a
ServeGen-shaped workload exists without the data folder) are YAML specs in this folder
(``<name>.yaml``; also usable with ``turboserve trace generate --spec``); the others
read the real data (see :mod:`traces.importers`).

Examples
--------
>>> df = scenario("steady", duration_s=600.0, scale=0.1, seed=1)
>>> sorted(set(df["event"]))
['active', 'close', 'idle', 'open']
"""

from __future__ import annotations

import os
import pathlib
from dataclasses import replace

import pandas as pd

from traces.distributions import Dist, Family
from traces.generator import generate
from traces.spec import ClientSpec, Variant, WorkloadSpec
from traces.spec_io import load_spec
from traces.importers import azure_trace, mooncake_trace, servegen_clients
from traces.transform import scale_sessions, tile, truncate

HERE = pathlib.Path(__file__).resolve().parent

PRESET_VARIANTS: dict[str, Variant] = {
    "tiny": Variant("tiny", 12, 64, 64, 16),
    "wan-1.3b": Variant("wan-1.3b", 12, 480, 832, 16),
    "wan-14b": Variant("wan-14b", 12, 480, 832, 16),
}
"""The chunk geometry each model preset is run at (12 frames = 3 latent frames at 16 fps)."""

VIDEO_SESSION = ClientSpec(
    "video",
    lifetime=Dist(Family.LOGNORMAL, 600.0, 2.0, max=14400.0),
    active=Dist(Family.GAMMA, 60.0, 1.0),
    idle=Dist(Family.LOGNORMAL, 45.0, 2.0),
    mix=(PRESET_VARIANTS["wan-1.3b"],),
)
"""The default session profile of the data-driven scenarios: lognormal lifetimes (mean
10 min, CV 2, at most 4 h), active bursts of about a minute, heavy-tailed idle gaps."""

TARGET_OPEN_RATE = 0.75
"""Session opens per second at ``scale=1`` for the rate-driven scenarios."""

_SERVEGEN = {
    "servegen-language": "language/m-large",
    "servegen-multimodal": "multimodal/mm-image",
    "servegen-reason": "reason/deepseek-r1",
}
# Share of Azure requests that open a session at scale=1 (about 250 active sessions).
_AZURE_SHARE = {"azure-conv": 0.18, "azure-code": 0.37}
_SPEC_FILES = ("steady", "diurnal", "flash-crowd", "servegen-language-lite", "mixed-14b-share")

SCENARIOS: list[str] = [
    "steady", "diurnal", "flash-crowd", *_SERVEGEN, "servegen-language-lite",
    "mooncake-conversation", *_AZURE_SHARE, "mixed-14b-share",
]
"""Names accepted by :func:`scenario`."""

DESCRIPTIONS: dict[str, str] = {
    "steady": "8 synthetic clients (ServeGen-like shares and CVs), constant rate, 1 h",
    "diurnal": "the steady clients under a daily sinusoid (peak/trough ~5.7), 24 h",
    "flash-crowd": "the steady clients with a 5x flash crowd at 1200 s, 1 h",
    "servegen-language": "ServeGen language/m-large: 162 clients' per-window rate and CV, 24 h",
    "servegen-multimodal": "ServeGen multimodal/mm-image: 35 clients, 24 h",
    "servegen-reason": "ServeGen reason/deepseek-r1: 73 clients, 24 h",
    "servegen-language-lite": "m-large day 1 as top-10 clients + rest, hourly (no data needed), 24 h",
    "mooncake-conversation": "Mooncake chat: conversations -> sessions, turns -> active bursts, 1 h",
    "azure-conv": "Azure LLM 2023 conversation requests -> session opens (CV ~1.1), ~1 h",
    "azure-code": "Azure LLM 2023 code requests -> session opens (CV ~13), ~1 h",
    "mixed-14b-share": "wan-1.3b and wan-14b sessions, the 14B share moving 10-40% over a day (issue 10), 24 h",
}


def _check(name: str, duration_s: float | None, scale: float) -> None:
    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r}; known: {SCENARIOS}")
    if duration_s is not None and not duration_s > 0:
        raise ValueError(f"duration_s must be > 0 or None, got {duration_s!r}")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale!r}")


def _with_model(client: ClientSpec, model: str | None) -> ClientSpec:
    if model is None:
        return client
    if model not in PRESET_VARIANTS:
        raise ValueError(f"unknown model preset {model!r}; known: {sorted(PRESET_VARIANTS)}")
    return replace(client, mix=(PRESET_VARIANTS[model],))


def spec_path(name: str) -> pathlib.Path:
    """The YAML spec file of a scenario that has one (``steady``, ``diurnal``,
    ``flash-crowd``, ``servegen-language-lite``)."""
    if name not in _SPEC_FILES:
        raise ValueError(f"scenario {name!r} has no spec file; those that do: {list(_SPEC_FILES)}")
    return HERE / f"{name}.yaml"


def scenario_spec(
    name: str,
    *,
    duration_s: float | None = None,
    scale: float = 1.0,
    seed: int = 0,
    model: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
) -> WorkloadSpec:
    """The :class:`~traces.generator.WorkloadSpec` of a rate-driven scenario (synthetic or
    ServeGen); ``mooncake-*`` and ``azure-*`` are built from data and have none."""
    _check(name, duration_s, scale)
    if name in _SPEC_FILES:
        spec = load_spec(spec_path(name))
    elif name in _SERVEGEN:
        clients = servegen_clients(_SERVEGEN[name], VIDEO_SESSION, data_dir=data_dir)
        spec = WorkloadSpec(clients=clients, duration_s=86400.0, total_rate=TARGET_OPEN_RATE,
                            warmup_s=3600.0)
    else:
        raise ValueError(f"scenario {name!r} is built from data and has no WorkloadSpec")
    return replace(
        spec,
        clients=tuple(_with_model(c, model) for c in spec.clients),
        duration_s=float(duration_s) if duration_s is not None else spec.duration_s,
        scale=spec.scale * scale,
        seed=seed,
    )


def scenario(
    name: str,
    *,
    duration_s: float | None = None,
    scale: float = 1.0,
    seed: int = 0,
    model: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
) -> pd.DataFrame:
    """Generate the trace of a named scenario (see the module docstring for the list).

    Parameters
    ----------
    name
        One of :data:`SCENARIOS`.
    duration_s
        Trace length (default: the scenario's own). Data traces longer than the data
        are tiled (repeated back to back).
    scale
        Load multiplier (1 is about 64 GPUs of load; see the module docstring).
    seed
        Seed of all randomness; the same arguments give the same trace.
    model
        Run every session on this model preset (``tiny``, ``wan-1.3b``, ``wan-14b``) at
        its default chunk geometry, instead of the scenario's mix.
    data_dir
        Folder of the real data (see :func:`traces.importers.data_dir`).
    """
    _check(name, duration_s, scale)
    template = _with_model(VIDEO_SESSION, model)
    if name in _SPEC_FILES or name in _SERVEGEN:
        spec = scenario_spec(name, duration_s=duration_s, scale=scale, seed=seed, model=model,
                             data_dir=data_dir)
        return generate(spec)
    if name == "mooncake-conversation":
        df = mooncake_trace(template, data_dir=data_dir, seed=seed)
        df = scale_sessions(df, scale, seed=seed)
        return _fit(df, 3600.0 if duration_s is None else duration_s)
    df = azure_trace(
        name.split("-", 1)[1], replace(template, client_id=name), data_dir=data_dir,
        share=_AZURE_SHARE[name] * scale, seed=seed,
    )
    return df if duration_s is None else _fit(df, duration_s)


def _fit(df: pd.DataFrame, duration_s: float) -> pd.DataFrame:
    end = float(df["time_s"].max()) if len(df) else 0.0
    return tile(df, duration_s) if duration_s > end else truncate(df, duration_s)
