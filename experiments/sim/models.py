"""What the simulator needs to know of each model preset: latency profile and memory.

The numbers for the real presets come from public sources (see ``MODEL_NOTES`` in the
project notes and the profile headers); the state size scales with the frame area.
"""

from __future__ import annotations

from dataclasses import dataclass

from policies.types import GiB


@dataclass(frozen=True, slots=True)
class ModelCost:
    """Memory and latency facts of one model preset, as the simulator uses them.

    Parameters
    ----------
    name
        The preset name used in traces (``model`` column).
    profile
        Latency profile name for :func:`experiments.sim.latency.load_profile`.
    state_bytes_ref
        Per-session state (KV cache + VAE cache + prompt) at ``ref_height x ref_width``.
    ref_height, ref_width
        The frame size of ``state_bytes_ref``; state scales with the area.
    weights_bytes
        Device memory taken by the weights (and the activation reserve) on every worker.
    """

    name: str
    profile: str
    state_bytes_ref: int
    ref_height: int
    ref_width: int
    weights_bytes: int

    def state_bytes(self, height: int | None = None, width: int | None = None) -> int:
        """Bytes of one session's state at ``height x width`` (the reference size if None)."""
        h = self.ref_height if height is None or height != height else int(height)
        w = self.ref_width if width is None or width != width else int(width)
        return int(self.state_bytes_ref * (h * w) / (self.ref_height * self.ref_width))


MODELS: dict[str, ModelCost] = {
    # Tiny random-weight model (kernels preset "tiny"): a few MiB of KV and VAE cache at 64x64.
    "tiny": ModelCost("tiny", "tiny-cpu", 4 * 1024**2, 64, 64, 64 * 1024**2),
    # Self-Forcing geometry: 5.62 GiB KV (21 latent frames x 30 layers) + 1.76 GiB VAE cache
    # + 90 MiB cross-attention cache at 480x832; weights 2.6 GB bf16 + ~8 GB activation reserve.
    "wan-1.3b": ModelCost("wan-1.3b", "wan-1.3b-h100-published", int(7.47 * GiB), 480, 832, int(10.6e9)),
    # Krea-realtime-style 14B (no persistent KV: latents, VAE cache, prompt embeddings);
    # weights 28 GB bf16 + ~12 GB activation reserve.
    "wan-14b": ModelCost("wan-14b", "wan-14b-h100-published", int(1.9 * GiB), 480, 832, int(40e9)),
}


def model_cost(name: str) -> ModelCost:
    """The :class:`ModelCost` of preset ``name``; ValueError naming the known ones."""
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model preset {name!r}; known: {sorted(MODELS)}") from None
