"""What the simulator needs to know of each model preset: latency profile and memory.

State sizes come from ``kernels.presets`` (one source for the geometry); weights and
reserves and the latency profiles from public sources (``MODEL_NOTES`` in the project
notes and the profile headers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from framework.control_settings import parallel_step_model
from kernels.presets import get_preset
from policies.types import ParallelStepModel


@dataclass(frozen=True, slots=True)
class ModelCost:
    """Memory and latency facts of one model preset, as the simulator uses them.

    The per-session state comes from the preset's geometry (``kernels.presets``: KV
    window + VAE cache + prompt + RNG), so the simulator and the workers agree on it.

    Parameters
    ----------
    name
        The preset name used in traces (``model`` column).
    profile
        Latency profile name for :func:`experiments.sim.latency.load_profile`.
    weights_bytes
        Device memory taken by the weights (and the activation reserve) on every worker.
    """

    name: str
    profile: str
    weights_bytes: int

    def state_bytes(self, height: int | None = None, width: int | None = None) -> int:
        """Bytes of one session's state at ``height x width`` (the preset's default size if None)."""
        preset = get_preset(self.name)
        h = preset.default_height if height is None or height != height else int(height)
        w = preset.default_width if width is None or width != width else int(width)
        return int(preset.state_bytes(h, w))

    def context_window_frames(self) -> int:
        """Pixel frames the KV window holds (``window_latent_frames x vae_temporal_ratio``)."""
        preset = get_preset(self.name)
        return preset.window_latent_frames * preset.vae_temporal_ratio


MODELS: dict[str, ModelCost] = {
    # Tiny random-weight model (kernels preset "tiny"), measured on a CPU.
    "tiny": ModelCost("tiny", "tiny-cpu", 64 * 1024**2),
    # The shipped CPU-trained tiny model (kernels preset "tiny-trained"), measured on a CPU.
    "tiny-trained": ModelCost("tiny-trained", "tiny-trained-cpu", 64 * 1024**2),
    # Wan2.1-1.3B (Self-Forcing geometry: 5.62 GiB KV + 1.76 GiB VAE cache at 480x832);
    # weights 2.6 GB bf16 + ~8 GB activation reserve.
    "wan-1.3b": ModelCost("wan-1.3b", "wan-1.3b-h100-published", int(10.6e9)),
    # Wan2.1-14B with the same causal recipe (26.8 GiB of state at 480x832, kernels.presets);
    # weights 28 GB bf16 + ~12 GB activation reserve.
    "wan-14b": ModelCost("wan-14b", "wan-14b-h100-published", int(40e9)),
}


def model_cost(name: str) -> ModelCost:
    """The :class:`ModelCost` of preset ``name``; ValueError naming the known ones."""
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; known: {sorted(MODELS)}") from None


def parallel_model(name: str, **overrides: Any) -> ParallelStepModel:
    """The :class:`~policies.types.ParallelStepModel` of preset ``name`` (Ulysses by heads).

    :func:`framework.control_settings.parallel_step_model` of the model's preset (its
    keyword ``overrides``), the one the live control loop's snapshot carries: the bytes
    from the preset's geometry, the link, latency and efficiency from
    ``turboserve.simulator.parallel.*``.
    """
    return parallel_step_model(model_cost(name).name, **overrides)


def kv_share(name: str) -> float:
    """Share of a session's state that is KV cache (what a degree change re-shards)."""
    preset = get_preset(model_cost(name).name)
    h, w = preset.default_height, preset.default_width
    return preset.kv_bytes(h, w) / preset.state_bytes(h, w)
