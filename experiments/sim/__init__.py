"""The discrete-event simulator: the shared policies at 64-1024 GPUs, in virtual time.

>>> from experiments.sim import simulate, PolicySet, SimConfig   # doctest: +SKIP
>>> result = simulate(trace_df, PolicySet.of("least-loaded", "fixed", "never"), SimConfig())
"""

from __future__ import annotations

from experiments.sim.config import PolicySet, PolicySpec, SimConfig
from experiments.sim.engine import SimResult, Simulator
from experiments.sim.latency import available_profiles, load_profile
from experiments.sim.models import MODELS, ModelCost, model_cost
from experiments.sim.run import simulate, summary_of
from experiments.sim.workload import Workload, prepare

__all__ = [
    "MODELS", "ModelCost", "PolicySet", "PolicySpec", "SimConfig", "SimResult", "Simulator", "Workload",
    "available_profiles", "load_profile", "model_cost", "prepare", "simulate", "summary_of",
]
