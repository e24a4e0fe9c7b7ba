"""Model presets: real Wan2.1 geometry and what a session costs (MODEL_NOTES figures)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from diffusers import AutoencoderKLWan

from kernels.presets import PRESETS, RNG_STATE_BYTES, ModelPreset, VaeGeometry, get_preset
from kernels.vae import StreamingVaeDecoder

GIB = 2**30


def test_known_presets_and_unknown_name_error():
    assert set(PRESETS) == {"tiny", "tiny-trained", "wan-1.3b", "wan-14b"}
    assert get_preset("wan-14b") is PRESETS["wan-14b"]
    with pytest.raises(ValueError, match=r"unknown model preset 'wan-2b'; known: \['tiny', 'tiny-trained', 'wan-1.3b', 'wan-14b'\]"):
        get_preset("wan-2b")


def test_preset_instance_passes_through():
    p = get_preset("tiny")
    assert get_preset(p) is p


@pytest.mark.parametrize(
    ("name", "layers", "heads", "ffn"),
    [("wan-1.3b", 30, 12, 8960), ("wan-14b", 40, 40, 13824)],
)
def test_wan_geometry(name, layers, heads, ffn):
    p = get_preset(name)
    assert (p.num_layers, p.num_heads, p.head_dim, p.ffn_dim) == (layers, heads, 128, ffn)
    assert (p.text_dim, p.text_tokens, p.latent_channels) == (4096, 512, 16)
    assert (p.vae_temporal_ratio, p.vae_spatial_ratio, p.patch_size) == (4, 8, (1, 2, 2))
    assert (p.chunk_latent_frames, p.denoise_steps, p.frames_per_chunk) == (3, 4, 12)
    assert (p.default_height, p.default_width, p.dtype_bytes) == (480, 832, 2)


def test_wan_1_3b_session_size_matches_model_notes():
    p = get_preset("wan-1.3b")
    assert p.tokens_per_latent_frame(480, 832) == 1560
    # 30 layers * 1560 tokens * 1536 * K and V * bf16, for 21 frames.
    assert p.kv_bytes(480, 832, frames=1) == 30 * 1560 * 1536 * 2 * 2
    assert p.kv_bytes(480, 832) == 21 * p.kv_bytes(480, 832, frames=1)
    assert p.kv_bytes(480, 832) / GIB == pytest.approx(5.625, abs=0.01)
    assert len(p.vae_cache_shapes(480, 832)) == 32
    assert p.vae_cache_bytes(480, 832) / GIB == pytest.approx(1.76, abs=0.01)
    expected = p.kv_bytes(480, 832) + p.vae_cache_bytes(480, 832) + 512 * 4096 * 2 + RNG_STATE_BYTES
    assert p.state_bytes(480, 832) == expected


def test_sizes_scale_with_area():
    p = get_preset("wan-14b")
    assert p.kv_bytes(960, 1664) == 4 * p.kv_bytes(480, 832)
    assert p.vae_cache_bytes(960, 1664) == 4 * p.vae_cache_bytes(480, 832)


def test_tiny_preset_is_small_and_cpu_friendly():
    p = get_preset("tiny")
    assert (p.default_height, p.default_width, p.dtype_bytes) == (64, 64, 4)
    assert p.tokens_per_latent_frame(64, 64) == 16
    assert p.state_bytes(64, 64) < 2**20


@pytest.mark.parametrize("bad", [0, -16, 72, 65, 15.9, "64"])
def test_resolution_must_be_positive_multiple_of_16(bad):
    p = get_preset("wan-1.3b")
    with pytest.raises(ValueError, match="multiple of 16"):
        p.check_resolution(bad, 832)
    with pytest.raises(ValueError, match=r"width="):
        p.check_resolution(480, bad)


def test_valid_resolutions_pass():
    p = get_preset("tiny")
    for h, w in [(16, 16), (64, 96), (480, 832)]:
        p.check_resolution(h, w)


@pytest.mark.parametrize(
    "geometry",
    [
        VaeGeometry(base_dim=3, dim_mult=(1, 1, 1, 1), num_res_blocks=1),  # the tiny preset's VAE
        VaeGeometry(base_dim=8, dim_mult=(1, 2, 4, 4), num_res_blocks=2),  # Wan2.1's layout, narrower
    ],
)
def test_vae_cache_shapes_match_the_real_decoder(geometry):
    """The analytic cache shapes are exactly what diffusers' decoder keeps after a chunk."""
    torch.manual_seed(0)
    vae = AutoencoderKLWan(
        base_dim=geometry.base_dim,
        z_dim=geometry.z_dim,
        dim_mult=list(geometry.dim_mult),
        num_res_blocks=geometry.num_res_blocks,
        temperal_downsample=list(geometry.temperal_downsample),
    ).eval()
    preset = ModelPreset(name="probe", num_layers=1, num_heads=1, head_dim=12, ffn_dim=8, vae=geometry)
    height, width = 16, 32
    feat_cache = [None] * vae._cached_conv_counts["decoder"]
    lh, lw = preset.latent_size(height, width)
    with torch.no_grad():
        x = vae.post_quant_conv(torch.randn(1, geometry.z_dim, 3, lh, lw))
        # Two chunks: the first turns diffusers' "Rep" markers into tensors.
        for _ in range(2):
            vae.decoder(x, feat_cache=feat_cache, feat_idx=[0])
    used = [t for t in feat_cache if t is not None]  # diffusers over-allocates (1x1 shortcuts count)
    assert [tuple(t.shape[1:]) for t in used] == preset.vae_cache_shapes(height, width)
    assert all(t is not None for t in feat_cache[: len(used)])
    decoder = StreamingVaeDecoder(vae, preset)
    zeros = decoder.zero_cache(height, width, device="cpu", dtype=torch.float32)
    assert sum(t.numel() for t in zeros) * 4 == ModelPreset(
        name="probe", num_layers=1, num_heads=1, head_dim=12, ffn_dim=8, vae=geometry, dtype_bytes=4
    ).vae_cache_bytes(height, width)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("sink_latent_frames", 21, "sink_latent_frames < window_latent_frames"),
        ("head_dim", 7, "head_dim must be even"),
        ("denoise_steps", 0, ">= 1 step"),
        ("dtype_bytes", 3, "dtype_bytes"),
    ],
)
def test_inconsistent_presets_are_refused(field, value, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(get_preset("tiny"), **{field: value})
