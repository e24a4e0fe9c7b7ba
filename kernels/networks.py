"""The networks a streaming video model steps with: built from a preset, loaded, saved.

:class:`~kernels.model.StreamingVideoModel` advances sessions; this module makes and
stores what it advances them with: the chunk-causal transformer and the Wan2.1 VAE of a
preset's geometry, with seeded random weights (:func:`seeded`) or from a checkpoint in
diffusers layout (:func:`load`), and the preset and text encoder recorded beside the
weights (:data:`MODEL_CONFIG_NAME`, :func:`save`), so a saved model loads as the preset
it was.

>>> from kernels.presets import get_preset
>>> net = seeded(get_preset("tiny"), "cpu", weights_seed=0)
>>> net.preset.name, type(net.transformer).__name__, type(net.vae).__name__
('tiny', 'CausalWanTransformer3DModel', 'AutoencoderKLWan')
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from diffusers import AutoencoderKLWan

from .presets import PRESETS, ModelPreset, VaeGeometry, get_preset
from .text import HashTextEncoder, TextEncoder
from .transformer import CausalWanTransformer3DModel

#: File that :func:`save` writes next to the diffusers folders.
MODEL_CONFIG_NAME = "turboserve_model.json"

#: The one mapping between a preset's fields and diffusers' config arguments:
#: ``(ModelPreset field, CausalWanTransformer3DModel argument)``; the VAE's arguments are
#: :class:`~kernels.presets.VaeGeometry`'s fields under the same names.
TRANSFORMER_FIELDS = (
    ("num_layers", "num_layers"),
    ("num_heads", "num_attention_heads"),
    ("head_dim", "attention_head_dim"),
    ("ffn_dim", "ffn_dim"),
    ("latent_channels", "in_channels"),
    ("text_dim", "text_dim"),
    ("freq_dim", "freq_dim"),
    ("patch_size", "patch_size"),
)
VAE_FIELDS = tuple(f.name for f in dataclasses.fields(VaeGeometry))
#: Transformer arguments every preset shares (Wan2.1's).
_TRANSFORMER_FIXED = {"cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6}


class Networks(NamedTuple):
    """A model's networks and what they were made for (``text_encoder`` None: the default)."""

    transformer: CausalWanTransformer3DModel
    vae: AutoencoderKLWan
    preset: ModelPreset
    text_encoder: TextEncoder | Callable[[Sequence[str]], torch.Tensor] | None = None


def build_transformer(preset: ModelPreset) -> CausalWanTransformer3DModel:
    """A randomly initialised transformer of the preset's geometry (current device)."""
    config = {arg: getattr(preset, field) for field, arg in TRANSFORMER_FIELDS}
    config["patch_size"] = tuple(config["patch_size"])
    return CausalWanTransformer3DModel(**config, out_channels=preset.latent_channels, **_TRANSFORMER_FIXED)


def build_vae(preset: ModelPreset, **config: Any) -> AutoencoderKLWan:
    """A randomly initialised Wan2.1 VAE of the preset's geometry (current device).

    ``config`` adds or overrides ``AutoencoderKLWan`` arguments (``latents_mean``...).
    """
    geometry = {name: getattr(preset.vae, name) for name in VAE_FIELDS}
    geometry = {k: list(v) if isinstance(v, tuple) else v for k, v in geometry.items()}
    return AutoencoderKLWan(**{**geometry, **config})


def seeded(preset: ModelPreset, device: str | torch.device, weights_seed: int) -> Networks:
    """The preset's networks with random weights drawn from ``weights_seed`` on ``device``.

    The same seed gives the same weights in every process (on a given device type); the
    global torch random state is left as it was.
    """
    device = torch.device(device)
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.device(device):
        torch.manual_seed(weights_seed)
        return Networks(build_transformer(preset), build_vae(preset), preset)


def load(
    path_or_repo: str | os.PathLike[str],
    *,
    preset: str | ModelPreset | None = None,
    text_encoder: TextEncoder | Callable[[Sequence[str]], torch.Tensor] | None = None,
    **hub_kwargs: Any,
) -> Networks:
    """The networks of a checkpoint in diffusers layout (``transformer/`` and ``vae/`` folders).

    The preset is, in order: ``preset``, the folder's :data:`MODEL_CONFIG_NAME`, the
    known preset with the checkpoint's geometry, or a ``custom`` one. Without
    ``text_encoder``, a hash encoder recorded by :func:`save` is rebuilt from its seed.
    ``hub_kwargs`` go to diffusers' ``from_pretrained`` (``torch_dtype``, ``revision``...).
    """
    transformer = CausalWanTransformer3DModel.from_pretrained(path_or_repo, subfolder="transformer", **hub_kwargs)
    vae = AutoencoderKLWan.from_pretrained(path_or_repo, subfolder="vae", **hub_kwargs)
    saved: dict[str, Any] = {}
    config_file = Path(path_or_repo) / MODEL_CONFIG_NAME
    if config_file.is_file():
        saved = json.loads(config_file.read_text())
    if preset is not None:
        resolved = get_preset(preset)
    elif "preset" in saved:
        resolved = _preset_from_json(saved["preset"])
    else:
        resolved = _infer_preset(transformer, vae)
    spec = saved.get("text_encoder") or {}
    if text_encoder is None and spec.get("kind") == "hash":
        text_encoder = HashTextEncoder(resolved.text_dim, resolved.text_tokens, seed=int(spec.get("seed", 0)))
    return Networks(transformer, vae, resolved, text_encoder)


def save(path: str | os.PathLike[str], networks: Networks) -> Path:
    """Write the weights (diffusers layout), the preset and the text encoder's recipe to ``path``."""
    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    networks.transformer.save_pretrained(root / "transformer")
    networks.vae.save_pretrained(root / "vae")
    # A hash encoder is rebuilt from its seed; any other encoder must be passed to load().
    enc = networks.text_encoder
    spec = {"kind": "hash", "seed": enc.seed} if isinstance(enc, HashTextEncoder) else None
    meta = {"format": 1, "preset": dataclasses.asdict(networks.preset), "text_encoder": spec}
    (root / MODEL_CONFIG_NAME).write_text(json.dumps(meta, indent=2))
    return root


def cast_like_diffusers(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """Move to ``device`` and cast to ``dtype`` as diffusers' ``from_pretrained`` would.

    Submodules named in ``_keep_in_fp32_modules`` (Wan: norms, time embedder, modulation
    tables) stay in fp32. A module already holding ``dtype`` parameters (loaded with
    ``torch_dtype``) is only moved.
    """
    module = module.to(device)
    if any(p.dtype == dtype for p in module.parameters()):
        return module
    keep = getattr(module, "_keep_in_fp32_modules", None) or []
    for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
        if tensor.is_floating_point() and not any(k in name.split(".") for k in keep):
            tensor.data = tensor.data.to(dtype)
    return module


def _preset_from_json(data: dict[str, Any]) -> ModelPreset:
    data = dict(data)
    vae = dict(data.pop("vae"))
    vae["dim_mult"] = tuple(vae["dim_mult"])
    vae["temperal_downsample"] = tuple(bool(x) for x in vae["temperal_downsample"])
    data["patch_size"] = tuple(data["patch_size"])
    return ModelPreset(vae=VaeGeometry(**vae), **data)


def _infer_preset(transformer: CausalWanTransformer3DModel, vae: AutoencoderKLWan) -> ModelPreset:
    """The known preset with this geometry (every field of the two tables), else a ``custom`` one."""

    def plain(v: Any) -> Any:
        return tuple(v) if isinstance(v, (list, tuple)) else v

    fields = {field: plain(transformer.config[arg]) for field, arg in TRANSFORMER_FIELDS}
    geometry = VaeGeometry(**{name: plain(vae.config[name]) for name in VAE_FIELDS})
    for preset in PRESETS.values():
        if preset.vae == geometry and all(plain(getattr(preset, f)) == v for f, v in fields.items()):
            return preset
    return ModelPreset(name="custom", vae=geometry, **fields)
