"""The chunk-causal transformer is Wan's transformer, restricted to a block-causal order.

These tests compare :meth:`forward_chunk` with diffusers' own full-sequence
``WanTransformer3DModel.forward`` on the same weights.
"""

from __future__ import annotations

import pytest
import torch
from diffusers.models.transformers.transformer_wan import WanAttnProcessor, WanRotaryPosEmbed

from kernels.networks import build_transformer
from kernels.presets import get_preset
from kernels.transformer import CacheGroup, CausalKVAttnProcessor, LayerKV, apply_rotary, chunk_rotary

PRESET = get_preset("tiny")
GRID = (3, 2, 2)  # 3 latent frames of 2x2 tokens (a 32x32-pixel chunk)
N = GRID[0] * GRID[1] * GRID[2]


@pytest.fixture(scope="module")
def transformer():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return build_transformer(PRESET).eval()


def _latents(seed: int, frames: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, PRESET.latent_channels, frames, 2 * GRID[1], 2 * GRID[2], generator=g)


def _text(seed: int = 7) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, PRESET.text_tokens, PRESET.text_dim, generator=g)


def _contexts(start: int, keys=None, values=None, *, write=False) -> list[LayerKV]:
    cos, sin = chunk_rotary(PRESET.head_dim, [start], *GRID)
    length = 0 if keys is None else keys[0][0].shape[1]
    out = []
    for layer in range(PRESET.num_layers):
        k = [torch.zeros(PRESET.num_heads, 0, PRESET.head_dim)] if keys is None else keys[layer]
        v = [torch.zeros(PRESET.num_heads, 0, PRESET.head_dim)] if values is None else values[layer]
        out.append(LayerKV(cos, sin, k, v, [CacheGroup(0, 1, length)], write=write))
    return out


def test_rotary_tables_match_wan_at_frame_zero():
    rope = WanRotaryPosEmbed(PRESET.head_dim, PRESET.patch_size, max_seq_len=64)
    wan_cos, wan_sin = rope(torch.zeros(1, 16, 5, 8, 6))  # 5 frames of 4x3 tokens
    cos, sin = chunk_rotary(PRESET.head_dim, [0], 5, 4, 3)
    torch.testing.assert_close(cos, wan_cos[..., 0::2].float())
    torch.testing.assert_close(sin, wan_sin[..., 1::2].float())


def test_rotary_follows_absolute_frame_index():
    later_cos, _ = chunk_rotary(PRESET.head_dim, [7], 3, 2, 2)
    full_cos, _ = chunk_rotary(PRESET.head_dim, [0], 10, 2, 2)
    torch.testing.assert_close(later_cos[0], full_cos[0, 7 * 4 :])
    x = torch.randn(1, 12, 2, PRESET.head_dim)
    cos, sin = chunk_rotary(PRESET.head_dim, [1000], 3, 2, 2)
    torch.testing.assert_close(apply_rotary(x, cos, sin).norm(dim=-1), x.norm(dim=-1))  # a rotation


def test_first_chunk_equals_wan_full_sequence_forward(transformer):
    x, t, text = _latents(1), torch.tensor([750.0]), _text()
    reference = transformer(hidden_states=x, timestep=t, encoder_hidden_states=text).sample
    out = transformer.forward_chunk(
        x, transformer.embed_timestep(t, torch.float32), transformer.embed_text(text), _contexts(0)
    )
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)
    # The causal processors fall back to Wan's for the ordinary forward.
    assert isinstance(transformer.blocks[0].attn1.processor, CausalKVAttnProcessor)
    again = transformer(hidden_states=x, timestep=t, encoder_hidden_states=text).sample
    torch.testing.assert_close(again, reference, atol=1e-5, rtol=1e-5)


class _BlockCausal:
    """Wan's processor with a fixed attention mask (the reference for cached chunks)."""

    def __init__(self, mask):
        self.mask, self.inner = mask, WanAttnProcessor()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        return self.inner(attn, hidden_states, encoder_hidden_states, self.mask, rotary_emb)


def test_cached_chunk_equals_block_causal_full_sequence(transformer):
    """Chunk 1 over chunk 0's cache == the 2-chunk sequence with a block-causal mask,
    where chunk 0 is clean (t=0, the cache-writing pass) and chunk 1 is noisy."""
    clean0, noisy1, text = _latents(2), _latents(3), _text()
    t1 = 500.0
    mask = torch.ones(2 * N, 2 * N, dtype=torch.bool)
    mask[:N, N:] = False  # chunk 0 does not see chunk 1
    saved = [b.attn1.processor for b in transformer.blocks]
    try:
        for b in transformer.blocks:
            b.attn1.set_processor(_BlockCausal(mask))
        timestep = torch.tensor([[0.0] * N + [t1] * N])
        full = transformer(
            hidden_states=torch.cat([clean0, noisy1], dim=2), timestep=timestep, encoder_hidden_states=text
        ).sample
    finally:
        for b, p in zip(transformer.blocks, saved):
            b.attn1.set_processor(p)

    emb = transformer.embed_text(text)
    write = _contexts(0, write=True)
    t0 = transformer.embed_timestep(torch.zeros(1), torch.float32)
    assert transformer.forward_chunk(clean0, t0, emb, write, output=False) is None
    keys = [[ctx.new_keys[0]] for ctx in write]
    values = [[ctx.new_values[0]] for ctx in write]
    assert keys[0][0].shape == (PRESET.num_heads, N, PRESET.head_dim)
    out = transformer.forward_chunk(
        noisy1, transformer.embed_timestep(torch.tensor([t1]), torch.float32), emb, _contexts(3, keys, values)
    )
    torch.testing.assert_close(out, full[:, :, 3:], atol=1e-5, rtol=1e-5)


def test_layer_count_mismatch_is_an_error(transformer):
    with pytest.raises(ValueError, match="one LayerKV per block"):
        transformer.forward_chunk(
            _latents(1), transformer.embed_timestep(torch.zeros(1), torch.float32), transformer.embed_text(_text()), []
        )
