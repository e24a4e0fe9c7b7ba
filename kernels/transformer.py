"""The chunk-causal Wan transformer: Wan2.1 blocks attending to per-session KV caches.

:class:`CausalWanTransformer3DModel` is diffusers' ``WanTransformer3DModel`` (same
weights, same config, so ``from_pretrained`` loads Wan2.1 checkpoints in diffusers
format) with one extra entry point, :meth:`~CausalWanTransformer3DModel.forward_chunk`:
the tokens of the current chunk attend to themselves (bidirectionally) and to the
cached K/V of the session's earlier chunks, as in Self-Forcing and CausVid.

The per-layer cache travels through the blocks in the ``rotary_emb`` argument that
``WanTransformerBlock`` hands to its self-attention: a :class:`LayerKV` carries the
rotary tables of the chunk *and* the cache of that layer, and
:class:`CausalKVAttnProcessor` reads it. That keeps diffusers' block code unchanged.

Sessions in one batch may have different cache lengths. The batch is ordered so that
sessions with equal cache length are contiguous (:class:`CacheGroup`); each group gets
one attention call over ``[its cache; the chunk]`` without padding or masks, so no
session attends to another's tokens. Inside :func:`kernels.invariance.row_wise` the
matrix products and every attention call (self and cross) run one session at a time,
with the shapes that session has alone, so its numbers are bit-identical whatever it
is batched with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers import WanTransformer3DModel
from diffusers.models.transformers.transformer_wan import WanAttnProcessor

from .invariance import aligned, install_row_wise_linears, is_row_wise, linear, rows
from .ulysses import current_exchange


@dataclass(frozen=True, slots=True)
class CacheGroup:
    """Batch rows ``start:stop`` whose sessions all cache ``length`` tokens."""

    start: int
    stop: int
    length: int


@dataclass(slots=True)
class LayerKV:
    """What one transformer layer's self-attention needs for a chunk step.

    Parameters
    ----------
    cos, sin
        Rotary tables of the chunk's tokens, ``[B, N, 1, head_dim // 2]``.
    keys, values
        Per batch row, the cached (already rotated) keys/values ``[heads, L, head_dim]``.
    groups
        Contiguous rows with equal cache length (see the module docstring).
    write
        When true, the attention stores the chunk's rotated K/V in ``new_keys`` /
        ``new_values`` (``[B, heads, N, head_dim]``), the cache-writing pass.
    """

    cos: torch.Tensor
    sin: torch.Tensor
    keys: Sequence[torch.Tensor]
    values: Sequence[torch.Tensor]
    groups: Sequence[CacheGroup]
    write: bool = False
    new_keys: torch.Tensor | None = field(default=None)
    new_values: torch.Tensor | None = field(default=None)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs of ``x`` ``[B, N, H, D]`` by the angles in ``cos``/``sin``.

    The pairing ``(2i, 2i+1)`` is Wan's (``WanAttnProcessor``), so pretrained
    weights see the rotation they were trained with.
    """
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.flatten(-2).type_as(x)


class CausalKVAttnProcessor:
    """Self-attention of a chunk over ``[session cache; chunk]`` (see :class:`LayerKV`).

    Called with anything but a :class:`LayerKV` in ``rotary_emb``, it behaves as
    diffusers' ``WanAttnProcessor`` (the full-sequence model still works).
    """

    def __init__(self) -> None:
        self._fallback = WanAttnProcessor()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        """Attention output ``[B, N, dim]`` for the chunk tokens ``hidden_states``."""
        if not isinstance(rotary_emb, LayerKV):
            return self._fallback(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        ctx = rotary_emb
        if getattr(attn, "fused_projections", False):
            q, k, v = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        q, k = attn.norm_q(q), attn.norm_k(k)
        # Sequence parallel (kernels.ulysses): this rank's tokens, then all tokens of its heads.
        ex = current_exchange()
        cos, sin = (ctx.cos, ctx.sin) if ex is None else (ex.local_tokens(ctx.cos), ex.local_tokens(ctx.sin))
        q = apply_rotary(q.unflatten(2, (attn.heads, -1)), cos, sin)
        k = apply_rotary(k.unflatten(2, (attn.heads, -1)), cos, sin)
        v = v.unflatten(2, (attn.heads, -1))
        if ex is not None:
            q, k, v = ex.to_heads(q, k, v)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if ctx.write:
            ctx.new_keys, ctx.new_values = k, v

        batch, heads, n, head_dim = q.shape
        if is_row_wise():
            out = self._row_wise(q, k, v, ctx)
        elif len(ctx.groups) == 1 and ctx.groups[0].length == 0:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            out = q.new_empty(q.shape)
            for g in ctx.groups:
                if g.length == 0:
                    out[g.start : g.stop] = F.scaled_dot_product_attention(
                        q[g.start : g.stop], k[g.start : g.stop], v[g.start : g.stop]
                    )
                    continue
                # One buffer per group and layer: the cache rows, then the chunk.
                size = (g.stop - g.start, heads, g.length + n, head_dim)
                kk, vv = k.new_empty(size), v.new_empty(size)
                for j, row in enumerate(range(g.start, g.stop)):
                    kk[j, :, : g.length] = ctx.keys[row]
                    vv[j, :, : g.length] = ctx.values[row]
                kk[:, :, g.length :] = k[g.start : g.stop]
                vv[:, :, g.length :] = v[g.start : g.stop]
                out[g.start : g.stop] = F.scaled_dot_product_attention(q[g.start : g.stop], kk, vv)
        if ex is not None:
            out = ex.to_tokens(out)
        out = out.transpose(1, 2).flatten(2, 3).type_as(q)
        return attn.to_out[1](attn.to_out[0](out))

    @staticmethod
    def _row_wise(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ctx: LayerKV) -> torch.Tensor:
        """One attention call per row, at the shapes that row has alone."""
        outs = []
        n = q.shape[2]
        for g in ctx.groups:
            for row in range(g.start, g.stop):
                qr, kr, vr = aligned(q[row : row + 1]), k[row : row + 1], v[row : row + 1]
                if g.length == 0:
                    outs.append(F.scaled_dot_product_attention(qr, aligned(kr), aligned(vr)))
                    continue
                size = (1, kr.shape[1], g.length + n, kr.shape[3])
                kk, vv = k.new_empty(size), v.new_empty(size)
                kk[0, :, : g.length] = ctx.keys[row]
                vv[0, :, : g.length] = ctx.values[row]
                kk[:, :, g.length :] = kr
                vv[:, :, g.length :] = vr
                outs.append(F.scaled_dot_product_attention(qr, kk, vv))
        return outs[0] if len(outs) == 1 else torch.cat(outs)


class RowWiseAttnProcessor:
    """Wraps an attention processor: inside ``row_wise``, one call per batch row.

    Used for the cross-attention (diffusers' ``WanAttnProcessor``), whose matrix
    products and attention then see a lone session's shapes.
    """

    def __init__(self, inner) -> None:
        self.inner = inner

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        """The inner processor's output, computed row by row inside ``row_wise``."""
        if not is_row_wise() or hidden_states.shape[0] == 1:
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        if attention_mask is not None or rotary_emb is not None:
            raise ValueError("row-wise cross-attention takes no attention mask or rotary embedding")
        hs = rows(hidden_states)
        enc = rows(encoder_hidden_states) if encoder_hidden_states is not None else [None] * len(hs)
        return torch.cat([self.inner(attn, h, e) for h, e in zip(hs, enc)])


def _axis_angles(head_dim_axis: int, positions: torch.Tensor, theta: float) -> torch.Tensor:
    exponents = torch.arange(0, head_dim_axis, 2, dtype=torch.float64) / head_dim_axis
    freqs = 1.0 / (theta**exponents)
    return torch.outer(positions.to(torch.float64), freqs)  # [S, axis_dim // 2]


def chunk_rotary(
    head_dim: int,
    start_frames: Sequence[int],
    frames: int,
    height: int,
    width: int,
    *,
    theta: float = 10000.0,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary tables ``(cos, sin)`` ``[B, frames*height*width, 1, head_dim//2]``.

    Row ``b`` covers latent frames ``start_frames[b] .. start_frames[b] + frames - 1``
    (absolute indices, so cached keys keep their positions when the window rolls) on a
    ``height x width`` token grid. The split of ``head_dim`` into time/height/width
    parts is Wan's (``WanRotaryPosEmbed``); angles are computed in float64, so the
    tables stay accurate for long streams.
    """
    hw_dim = 2 * (head_dim // 6)
    t_dim = head_dim - 2 * hw_dim
    ang_h = _axis_angles(hw_dim, torch.arange(height), theta)
    ang_w = _axis_angles(hw_dim, torch.arange(width), theta)
    grid_hw = torch.cat(
        [
            ang_h[:, None, :].expand(height, width, -1),
            ang_w[None, :, :].expand(height, width, -1),
        ],
        dim=-1,
    )  # [h, w, hw_dim]
    rows = []
    for start in start_frames:
        ang_t = _axis_angles(t_dim, torch.arange(start, start + frames), theta)  # [F, t_dim//2]
        full = torch.cat(
            [
                ang_t[:, None, None, :].expand(frames, height, width, -1),
                grid_hw[None].expand(frames, -1, -1, -1),
            ],
            dim=-1,
        )
        rows.append(full.reshape(frames * height * width, 1, head_dim // 2))
    angles = torch.stack(rows)
    return angles.cos().float().to(device), angles.sin().float().to(device)


class CausalWanTransformer3DModel(WanTransformer3DModel):
    """Wan2.1 transformer with a chunk-causal, KV-cached forward (:meth:`forward_chunk`).

    Same config and weights as ``WanTransformer3DModel``; build one as you would that
    class (``CausalWanTransformer3DModel(num_layers=2, ...)`` or ``from_pretrained``).
    """

    def _install_causal_processors(self) -> None:
        """Chunk-causal self-attention, row-wise-capable cross-attention and linears (idempotent)."""
        if self.__dict__.get("_chunk_ready") and all(
            isinstance(b.attn1.processor, CausalKVAttnProcessor) for b in self.blocks
        ):
            return
        for block in self.blocks:
            if not isinstance(block.attn1.processor, CausalKVAttnProcessor):
                block.attn1.set_processor(CausalKVAttnProcessor())
            if not isinstance(block.attn2.processor, RowWiseAttnProcessor):
                block.attn2.set_processor(RowWiseAttnProcessor(block.attn2.processor))
        install_row_wise_linears(self)
        self.__dict__["_chunk_ready"] = True

    def embed_text(self, prompt_embeds: torch.Tensor) -> torch.Tensor:
        """Project encoder outputs ``[B, T, text_dim]`` to the model width (once per step)."""
        self._install_causal_processors()
        return self.condition_embedder.text_embedder(prompt_embeds)

    def embed_timestep(self, timestep: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``(temb [B, dim], modulation [B, 6, dim])`` for timesteps ``[B]``."""
        ce = self.condition_embedder
        t = ce.timesteps_proj(timestep)
        t = t.to(next(iter(ce.time_embedder.parameters())).dtype)
        temb = ce.time_embedder(t).to(dtype)
        return temb, ce.time_proj(ce.act_fn(temb)).unflatten(1, (6, -1))

    def embed_patches(self, latents: torch.Tensor) -> torch.Tensor:
        """Tokens ``[B, N, dim]`` of latents ``[B, C, F, H, W]`` (Wan's patch embedding).

        The stride-equals-kernel convolution is computed as a matrix product over the
        patches: the same numbers, and unlike oneDNN's conv3d a row's result does not
        depend on how many sessions share the batch.
        """
        conv = self.patch_embedding
        p_t, p_h, p_w = conv.kernel_size
        b, c, f, h, w = latents.shape
        patches = latents.reshape(b, c, f // p_t, p_t, h // p_h, p_h, w // p_w, p_w)
        patches = patches.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, -1, c * p_t * p_h * p_w)
        return linear(patches, conv.weight.reshape(conv.out_channels, -1), conv.bias)

    def forward_chunk(
        self,
        latents: torch.Tensor,
        temb: tuple[torch.Tensor, torch.Tensor],
        text: torch.Tensor,
        layers: Sequence[LayerKV],
        *,
        output: bool = True,
    ) -> torch.Tensor | None:
        """Flow prediction for a chunk of latents given the sessions' caches.

        Parameters
        ----------
        latents
            ``[B, C, F, H, W]`` noisy latents of the chunk.
        temb
            From :meth:`embed_timestep`, for ``B`` rows or one row shared by the batch.
        text
            From :meth:`embed_text`, ``[B, T, dim]``.
        layers
            One :class:`LayerKV` per block (with ``write=True`` to capture K/V).
        output
            ``False`` skips the output head (the cache-writing pass needs no output).
        """
        if len(layers) != len(self.blocks):
            raise ValueError(f"need one LayerKV per block: got {len(layers)} for {len(self.blocks)} blocks")
        self._install_causal_processors()
        batch, _, frames, height, width = latents.shape
        p_t, p_h, p_w = self.config.patch_size
        hidden = self.embed_patches(latents)
        ex = current_exchange()  # sequence parallel: this rank runs its slice of the tokens
        if ex is not None:
            ex.tokens = hidden.shape[1]
            hidden = ex.local_tokens(hidden)
        temb_vec, modulation = temb
        for block, ctx in zip(self.blocks, layers):
            hidden = block(hidden, text, modulation, ctx)
        if not output:
            return None
        shift, scale = (self.scale_shift_table + temb_vec.unsqueeze(1)).chunk(2, dim=1)
        hidden = (self.norm_out(hidden.float()) * (1 + scale) + shift).type_as(hidden)
        hidden = self.proj_out(hidden)
        if ex is not None:
            hidden = ex.all_tokens(hidden)
        hidden = hidden.reshape(batch, frames // p_t, height // p_h, width // p_w, p_t, p_h, p_w, -1)
        return hidden.permute(0, 7, 1, 4, 2, 5, 3, 6).flatten(6, 7).flatten(4, 5).flatten(2, 3)


def tokens_grid(latent_frames: int, latent_h: int, latent_w: int, patch: Sequence[int]) -> tuple[int, int, int]:
    """Token grid ``(frames, h, w)`` of a latent block after patching."""
    return latent_frames // patch[0], latent_h // patch[1], latent_w // patch[2]


__all__ = [
    "CacheGroup",
    "CausalKVAttnProcessor",
    "CausalWanTransformer3DModel",
    "LayerKV",
    "RowWiseAttnProcessor",
    "apply_rotary",
    "chunk_rotary",
    "tokens_grid",
]
