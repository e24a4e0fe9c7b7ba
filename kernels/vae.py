"""Streaming decode with Wan's causal VAE: each session keeps the decoder's feature cache.

``AutoencoderKLWan.decode`` clears its cache on every call; here the decoder runs with a
cache that belongs to the session (``vae.{i}`` in its state), so chunk ``k`` continues
chunk ``k-1`` seamlessly. A new session starts from an all-zero cache (as Self-Forcing's
``ZERO_VAE_CACHE``): a zero cache is exactly the causal zero padding, and every latent
frame (the first one too) then decodes to ``vae_temporal_ratio`` pixel frames, so every
chunk has the same number of frames and every state the same shapes.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence

import torch
from diffusers import AutoencoderKLWan

from .presets import ModelPreset


@contextlib.contextmanager
def _conv_weights_in(vae: torch.nn.Module, fmt: torch.memory_format) -> Iterator[None]:
    """Hold the 3-D convolution weights in ``fmt`` for a call, then restore them.

    Restoring keeps the module saveable (safetensors wants contiguous tensors) and
    its weights shared with any other user; the re-layout is cheap next to a decode.
    """
    if fmt is torch.contiguous_format:
        yield
        return
    saved = []
    for mod in vae.modules():
        if isinstance(mod, torch.nn.Conv3d):
            saved.append((mod, mod.weight.data))
            mod.weight.data = mod.weight.data.contiguous(memory_format=fmt)
    try:
        yield
    finally:
        for mod, data in saved:
            mod.weight.data = data


class StreamingVaeDecoder:
    """Batched, cache-carrying decoder around an ``AutoencoderKLWan`` (Wan2.1 layout).

    Parameters
    ----------
    vae
        The autoencoder; only its ``post_quant_conv`` and ``decoder`` are used.
    preset
        Supplies the cache geometry (:meth:`ModelPreset.vae_cache_shapes`).
    channels_last
        Run the 3-D convolutions in ``channels_last_3d`` layout; ``None``: on CPU only,
        where it makes the batched decode about twice as fast (the per-channel norms
        and oneDNN convolutions of thin layers are slow in the default layout).
    """

    def __init__(self, vae: AutoencoderKLWan, preset: ModelPreset, *, channels_last: bool | None = None) -> None:
        if vae.config.patch_size is not None or getattr(vae.config, "is_residual", False):
            raise ValueError(
                "only the Wan2.1 VAE layout is supported (patch_size=None, is_residual=False); "
                f"got patch_size={vae.config.patch_size!r}, is_residual={vae.config.is_residual!r}"
            )
        self.vae = vae
        self.preset = preset
        self._lock = threading.Lock()  # decode re-lays the shared weights out for its duration
        if channels_last is None:
            channels_last = vae.post_quant_conv.weight.device.type == "cpu"
        self.memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
        z = vae.config.z_dim
        self._mean = torch.tensor(vae.config.latents_mean, dtype=torch.float32).view(1, z, 1, 1, 1)
        self._std = torch.tensor(vae.config.latents_std, dtype=torch.float32).view(1, z, 1, 1, 1)

    def zero_cache(
        self, height: int, width: int, *, device: torch.device | str, dtype: torch.dtype
    ) -> list[torch.Tensor]:
        """A new session's decoder cache: zeros of :meth:`ModelPreset.vae_cache_shapes`."""
        return [
            torch.zeros(shape, device=device, dtype=dtype) for shape in self.preset.vae_cache_shapes(height, width)
        ]

    @torch.no_grad()
    def decode(
        self, latents: torch.Tensor, caches: Sequence[Sequence[torch.Tensor]]
    ) -> tuple[torch.Tensor, list[list[torch.Tensor]]]:
        """Decode one chunk per batch row, continuing each row's cache.

        Parameters
        ----------
        latents
            ``[B, z_dim, F, h, w]`` clean latents (the transformer's scale).
        caches
            Per row, the cache tensors ``[C, 2, H, W]`` in decoder order.

        Returns
        -------
        frames, new_caches
            uint8 ``[B, F * temporal_ratio, H, W, 3]`` and the per-row caches after
            this chunk (fresh tensors; the inputs are left untouched).
        """
        if len(caches) != latents.shape[0]:
            raise ValueError(f"got {len(caches)} caches for a batch of {latents.shape[0]}")
        rows = latents.shape[0]
        if rows == 1 and latents.device.type == "cpu":
            # PyTorch sends thin batch-of-one 3-D convolutions to its slow native kernel
            # (`use_mkldnn` in ATen's ConvUtils); as a batch of two (the row twice) they
            # take oneDNN, which is faster even for the doubled work.
            latents, caches = latents.expand(2, -1, -1, -1, -1), [caches[0], caches[0]]
        dtype = self.vae.post_quant_conv.weight.dtype
        z = latents.to(dtype) * self._std.to(latents.device, dtype) + self._mean.to(latents.device, dtype)
        fmt = self.memory_format
        feat_cache = [
            torch.stack([c[i] for c in caches]).to(dtype).contiguous(memory_format=fmt) for i in range(len(caches[0]))
        ]
        with self._lock, _conv_weights_in(self.vae, fmt):
            x = self.vae.post_quant_conv(z.contiguous(memory_format=fmt))
            out = self.vae.decoder(x, feat_cache=feat_cache, feat_idx=[0], first_chunk=False)
        if len(feat_cache) != len(caches[0]):
            raise RuntimeError(f"decoder used {len(feat_cache)} cache entries, expected {len(caches[0])}")
        out = out[:rows]
        frames = ((out.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1)
        # Plain contiguous copies: the state is moved and stored as ordinary tensors.
        new_caches = [
            [entry[row].contiguous(memory_format=torch.contiguous_format) for entry in feat_cache]
            for row in range(rows)
        ]
        return frames, new_caches
