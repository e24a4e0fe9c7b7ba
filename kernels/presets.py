"""Model presets: the geometry of the streaming video models and what a session costs.

A :class:`ModelPreset` is plain data: the transformer's shape (Wan2.1 layout), the VAE's
shape, the chunking (latent frames per chunk, denoising steps) and the KV window. The
size methods are analytic, so the simulator and the memory planner can price a session
of ``wan-14b`` without building it.

>>> p = get_preset("wan-1.3b")
>>> p.tokens_per_latent_frame(480, 832)
1560
>>> round(p.kv_bytes(480, 832) / 2**30, 2)
5.62
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from types import MappingProxyType

#: Bytes of a CPU ``torch.Generator`` state (the ``rng`` tensor of a session).
RNG_STATE_BYTES = 5056
#: Frames of history each causal VAE convolution keeps (diffusers' ``CACHE_T``).
VAE_CACHE_T = 2


@dataclass(frozen=True, slots=True)
class VaeGeometry:
    """Shape of a Wan2.1 causal VAE (``AutoencoderKLWan`` constructor arguments)."""

    base_dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temperal_downsample: tuple[bool, ...] = (False, True, True)

    def decoder_cache_shapes(self, latent_h: int, latent_w: int) -> list[tuple[int, int, int, int]]:
        """Shapes ``(C, T, H, W)`` of the decoder's feature cache, in call order.

        Mirrors ``WanDecoder3d`` (Wan2.1, non-residual): every causal convolution keeps
        the last :data:`VAE_CACHE_T` frames of its input, and each temporal upsampler
        keeps the last frames of its input too.
        """
        t = VAE_CACHE_T
        dims = [self.base_dim * u for u in (self.dim_mult[-1], *self.dim_mult[::-1])]
        temporal_up = tuple(reversed(self.temperal_downsample))
        h, w = latent_h, latent_w
        shapes = [(self.z_dim, t, h, w)]  # conv_in
        shapes += [(dims[0], t, h, w)] * 4  # mid block: two resnets, two convs each
        n_blocks = len(self.dim_mult)
        for i in range(n_blocks):
            in_dim, out_dim = dims[i], dims[i + 1]
            if i > 0:
                in_dim //= 2  # the previous upsampler halves the channels
            cur = in_dim
            for _ in range(self.num_res_blocks + 1):
                shapes += [(cur, t, h, w), (out_dim, t, h, w)]
                cur = out_dim
            if i != n_blocks - 1:
                if temporal_up[i]:
                    shapes.append((out_dim, t, h, w))
                h, w = 2 * h, 2 * w
        shapes.append((dims[-1], t, h, w))  # conv_out
        return shapes


@dataclass(frozen=True, slots=True)
class ModelPreset:
    """Geometry, chunking and state size of one streaming video model.

    Parameters
    ----------
    name
        Preset name (``tiny``, ``wan-1.3b``, ``wan-14b``).
    num_layers, num_heads, head_dim, ffn_dim
        Transformer shape (Wan2.1 blocks); the model width is ``num_heads * head_dim``.
    latent_channels, text_dim, text_tokens, freq_dim
        Latent channels, text-encoder width and length, timestep-embedding width.
    patch_size
        ``(t, h, w)`` patch of the transformer's patch embedding.
    vae_temporal_ratio, vae_spatial_ratio
        Pixel frames per latent frame and pixels per latent pixel (Wan VAE: 4 and 8).
    chunk_latent_frames, denoise_steps
        Latent frames produced per chunk and denoising steps per chunk.
    window_latent_frames, sink_latent_frames
        The KV cache holds at most ``window_latent_frames`` frames: the first
        ``sink_latent_frames`` (attention sink) plus the most recent ones.
    default_height, default_width, default_fps
        Resolution and frame rate a session gets when it names none.
    dtype_bytes
        Bytes per element of weights and state (4 for fp32, 2 for bf16).
    timestep_shift
        Shift of the flow-matching sigma schedule (Self-Forcing uses 5).
    vae
        The VAE's shape, for :meth:`vae_cache_bytes`.
    """

    name: str
    num_layers: int
    num_heads: int
    head_dim: int
    ffn_dim: int
    latent_channels: int = 16
    text_dim: int = 4096
    text_tokens: int = 512
    freq_dim: int = 256
    patch_size: tuple[int, int, int] = (1, 2, 2)
    vae_temporal_ratio: int = 4
    vae_spatial_ratio: int = 8
    chunk_latent_frames: int = 3
    denoise_steps: int = 4
    window_latent_frames: int = 21
    sink_latent_frames: int = 3
    default_height: int = 480
    default_width: int = 832
    default_fps: int = 16
    dtype_bytes: int = 2
    timestep_shift: float = 5.0
    vae: VaeGeometry = VaeGeometry()

    def __post_init__(self) -> None:
        checks = [
            (self.num_layers >= 1 and self.num_heads >= 1, "num_layers and num_heads must be >= 1"),
            (self.head_dim >= 6 and self.head_dim % 2 == 0, "head_dim must be even and >= 6 (3-axis RoPE)"),
            (self.chunk_latent_frames >= 1 and self.denoise_steps >= 1, "chunks need >= 1 frame and >= 1 step"),
            (
                0 <= self.sink_latent_frames < self.window_latent_frames,
                "need 0 <= sink_latent_frames < window_latent_frames",
            ),
            (self.dtype_bytes in (1, 2, 4, 8), "dtype_bytes must be 1, 2, 4 or 8"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"invalid model preset {self.name!r}: {message}")

    @property
    def dim(self) -> int:
        """Transformer width (``num_heads * head_dim``)."""
        return self.num_heads * self.head_dim

    @property
    def frames_per_chunk(self) -> int:
        """Pixel frames per chunk (every latent frame decodes to ``vae_temporal_ratio``)."""
        return self.chunk_latent_frames * self.vae_temporal_ratio

    @property
    def resolution_multiple(self) -> int:
        """Height and width must be multiples of this (VAE ratio times the patch)."""
        return self.vae_spatial_ratio * max(self.patch_size[1], self.patch_size[2])

    def check_resolution(self, height: int, width: int) -> None:
        """Raise ``ValueError`` unless ``height`` and ``width`` fit the model."""
        m = self.resolution_multiple
        for label, value in (("height", height), ("width", width)):
            if not isinstance(value, int) or value <= 0 or value % m:
                raise ValueError(
                    f"{label}={value!r} is not allowed for model {self.name!r}: it must be a positive "
                    f"multiple of {m} (vae_spatial_ratio {self.vae_spatial_ratio} x patch "
                    f"{self.patch_size[1]}), e.g. {m}, {2 * m}, ..., {self.default_height}"
                )

    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        """Latent ``(h, w)`` of a pixel resolution."""
        return height // self.vae_spatial_ratio, width // self.vae_spatial_ratio

    def tokens_per_latent_frame(self, height: int, width: int) -> int:
        """Transformer tokens per latent frame at a pixel resolution."""
        lh, lw = self.latent_size(height, width)
        return (lh // self.patch_size[1]) * (lw // self.patch_size[2])

    def kv_bytes(self, height: int, width: int, frames: int | None = None) -> int:
        """Bytes of the self-attention K and V cache over all layers.

        ``frames`` cached latent frames; the full window when omitted.
        """
        frames = self.window_latent_frames if frames is None else frames
        tokens = frames * self.tokens_per_latent_frame(height, width)
        return 2 * self.num_layers * tokens * self.dim * self.dtype_bytes

    def vae_cache_shapes(self, height: int, width: int) -> list[tuple[int, int, int, int]]:
        """Shapes ``(C, T, H, W)`` of the streaming VAE decoder's feature cache."""
        return self.vae.decoder_cache_shapes(*self.latent_size(height, width))

    def vae_cache_bytes(self, height: int, width: int) -> int:
        """Bytes of the streaming VAE decoder's feature cache."""
        n = sum(c * t * h * w for c, t, h, w in self.vae_cache_shapes(height, width))
        return n * self.dtype_bytes

    def prompt_bytes(self) -> int:
        """Bytes of the stored prompt embedding."""
        return self.text_tokens * self.text_dim * self.dtype_bytes

    def alltoall_bytes_per_chunk(self, height: int, width: int) -> int:
        """Bytes the sequence-parallel all-to-alls of one chunk move for one session, at full size.

        Ulysses by heads: per layer and forward, q, k, v go from tokens to heads and the
        attention output back (4 tensors of ``tokens x dim``); a chunk takes
        ``denoise_steps`` forwards plus one clean forward that writes the KV cache. At
        degree ``k`` each rank sends ``(k - 1)/k**2`` of this
        (``policies.types.ParallelStepModel``).
        """
        tokens = self.chunk_latent_frames * self.tokens_per_latent_frame(height, width)
        forwards = self.denoise_steps + 1
        return 4 * forwards * self.num_layers * tokens * self.dim * self.dtype_bytes

    def state_bytes(self, height: int, width: int) -> int:
        """Bytes of a session's state with a full KV window (what offload moves)."""
        return (
            self.kv_bytes(height, width)
            + self.vae_cache_bytes(height, width)
            + self.prompt_bytes()
            + RNG_STATE_BYTES
        )


# Random weights, fp32, runs on a laptop CPU; the shape of diffusers' test models.
_TINY = ModelPreset(
    name="tiny",
    num_layers=2,
    num_heads=2,
    head_dim=12,
    ffn_dim=32,
    text_dim=16,
    text_tokens=16,
    default_height=64,
    default_width=64,
    dtype_bytes=4,
    vae=VaeGeometry(base_dim=3, dim_mult=(1, 1, 1, 1), num_res_blocks=1),
)

PRESETS: MappingProxyType[str, ModelPreset] = MappingProxyType({
    preset.name: preset
    for preset in (
        _TINY,
        # A tiny model trained on CPU by `python -m kernels.train` on squares of the prompt's
        # colour moving in the prompt's direction (kernels/synthetic.py); its weights ship in
        # the package (PACKAGED_WEIGHTS). Wider than `tiny` where `tiny` cannot learn: the
        # width (96) is above a patch's 64 latent values, which the flow target (noise - x0)
        # must carry through; the VAE decoder has 8 channels (3 leave a 1-channel bottleneck
        # that cannot carry colour). Unshifted schedule: sigmas 1/.75/.5/.25. State of the
        # shipped weights: the frames have the prompt's colour and motion (tests/test_tiny_trained.py).
        replace(
            _TINY,
            name="tiny-trained",
            num_heads=4,
            head_dim=24,
            ffn_dim=192,
            timestep_shift=1.0,
            vae=replace(_TINY.vae, base_dim=8),
        ),
        # Wan2.1-T2V-1.3B (the backbone of Self-Forcing, CausVid, LongLive); Wan2.1 VAE.
        ModelPreset(name="wan-1.3b", num_layers=30, num_heads=12, head_dim=128, ffn_dim=8960),
        # Wan2.1-T2V-14B (the backbone of Krea realtime 14B); Wan2.1 VAE.
        ModelPreset(name="wan-14b", num_layers=40, num_heads=40, head_dim=128, ffn_dim=13824),
    )
})


def get_preset(name: str | ModelPreset) -> ModelPreset:
    """The preset called ``name`` (a :class:`ModelPreset` is returned as is).

    Raises
    ------
    ValueError
        If no preset has that name.
    """
    if isinstance(name, ModelPreset):
        return name
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}") from None


#: Presets whose weights ship in the package: name -> folder under ``kernels/`` (diffusers layout).
PACKAGED_WEIGHTS: MappingProxyType[str, str] = MappingProxyType({"tiny-trained": "weights/tiny-trained"})


def packaged_weights(name: str) -> str | None:
    """The checkpoint folder shipped for preset ``name`` (for ``from_pretrained``), else ``None``.

    >>> packaged_weights("tiny") is None
    True
    """
    rel = PACKAGED_WEIGHTS.get(name)
    if rel is None:
        return None
    from pathlib import Path

    return str(Path(__file__).resolve().parent / rel)
