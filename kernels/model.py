"""The streaming video model: sessions in, one chunk of frames per session out.

:class:`StreamingVideoModel` ties the chunk-causal transformer
(:mod:`kernels.transformer`), the few-step schedule (:mod:`kernels.schedule`), the
streaming VAE decode (:mod:`kernels.vae`) and a text encoder (:mod:`kernels.text`)
together (:mod:`kernels.networks` builds, loads and saves the networks). All
per-session data lives in a :class:`~kernels.state.SessionState`, so a session can be
stepped on any worker that holds the same weights, after any number of copies of its
state.

One :meth:`StreamingVideoModel.step` advances a whole batch of sessions by one chunk
each (coalesced chunk processing). What a session gets does not depend on its batch:
its noise comes from its own generator, attention never mixes rows, and (with
``batch_invariant=True``, the default) the calls whose rounding depends on their shapes
run per session or per fixed tile, so its frames and state are bit-identical alone or
in any batch (:mod:`kernels.invariance`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import operator
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKLWan

from . import networks
from .invariance import row_wise
from .networks import cast_like_diffusers
from .presets import ModelPreset, get_preset
from .schedule import FlowSchedule
from .state import SessionState
from .text import HashTextEncoder, TextEncoder
from .transformer import CacheGroup, CausalWanTransformer3DModel, LayerKV, chunk_rotary
from .vae import StreamingVaeDecoder


def _roll_window(old: torch.Tensor, new: torch.Tensor, keep: int, sink: int) -> torch.Tensor:
    """``[old; new]`` along tokens, cut to the ``sink`` first and most recent tokens."""
    full = torch.cat([old, new], dim=1)
    if full.shape[1] <= keep:
        return full
    return torch.cat([full[:, :sink], full[:, full.shape[1] - (keep - sink) :]], dim=1)


class StreamingVideoModel:
    """A chunk-autoregressive video model serving many sessions with batched steps.

    Build it with :meth:`from_preset` (random weights) or :meth:`from_pretrained`.

    Parameters
    ----------
    transformer, vae
        The chunk-causal Wan transformer and the Wan2.1 VAE, on ``device``.
    preset
        Geometry and chunking (its ``dtype_bytes`` is set from ``dtype``).
    text_encoder
        ``encode(prompts) -> Tensor[B, text_tokens, text_dim]``; a
        :class:`~kernels.text.HashTextEncoder` when omitted.
    device, dtype
        Where and in which precision the weights and the session states live.
    num_threads
        If given, ``torch.set_num_threads`` for the duration of each call (restored
        afterwards); ``None`` leaves torch's setting alone.
    batch_invariant
        ``True`` (default): a session's chunk is bit-identical whatever it is batched
        with. The transformer's matrix products and attention run once per session
        (:mod:`kernels.invariance`) and the VAE decode once per :attr:`vae_tile`
        sessions, so those kernels see the same shapes at any batch size (BLAS, oneDNN
        and cuBLAS choose their blocking, and so the rounding, by shape).
        ``False``: one transformer pass and one decode over the whole batch (faster at
        large batches; a row's rounding may then depend on the batch size, on some
        CPUs and GPUs by up to tens of uint8 levels after a few chunks). Serving reads
        it from ``turboserve.engine.batch-invariant``.

    Examples
    --------
    >>> model = StreamingVideoModel.from_preset("tiny")
    >>> a = model.new_session("a red fox running through snow", seed=0)
    >>> b = model.new_session("waves at dusk", seed=1)
    >>> fa, fb = model.step([a, b])
    >>> fa.shape, fa.dtype, a.chunk_index
    ((12, 64, 64, 3), dtype('uint8'), 1)
    """

    def __init__(
        self,
        transformer: CausalWanTransformer3DModel,
        vae: AutoencoderKLWan,
        preset: ModelPreset,
        *,
        text_encoder: TextEncoder | Callable[[Sequence[str]], torch.Tensor] | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        num_threads: int | None = None,
        batch_invariant: bool = True,
    ) -> None:
        self.device = torch.device(device)
        self.dtype = dtype
        elem = torch.empty((), dtype=dtype).element_size()
        self.preset = dataclasses.replace(preset, dtype_bytes=elem)
        self.transformer = cast_like_diffusers(transformer, self.device, dtype).eval()
        self.vae = cast_like_diffusers(vae, self.device, dtype).eval()
        self.decoder = StreamingVaeDecoder(self.vae, self.preset)
        self.text_encoder = text_encoder or HashTextEncoder(preset.text_dim, preset.text_tokens)
        self.schedule = FlowSchedule.evenly(preset.denoise_steps, shift=preset.timestep_shift)
        self.num_threads = num_threads
        self.batch_invariant = bool(batch_invariant)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_preset(
        cls,
        name: str | ModelPreset = "tiny",
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        weights_seed: int = 0,
        num_threads: int | None = None,
        batch_invariant: bool = True,
    ) -> "StreamingVideoModel":
        """A model of a preset's geometry with seeded random weights.

        The same ``weights_seed`` gives the same weights in every process (on a given
        device type), which is what lets a session move between workers. The global
        torch random state is left as it was.
        """
        transformer, vae, preset, _ = networks.seeded(get_preset(name), device, weights_seed)
        return cls(
            transformer,
            vae,
            preset,
            device=device,
            dtype=dtype,
            num_threads=num_threads,
            batch_invariant=batch_invariant,
        )

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo: str | os.PathLike[str],
        *,
        preset: str | ModelPreset | None = None,
        text_encoder: TextEncoder | Callable[[Sequence[str]], torch.Tensor] | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        num_threads: int | None = None,
        batch_invariant: bool = True,
        **hub_kwargs: Any,
    ) -> "StreamingVideoModel":
        """Load weights saved in diffusers layout (``transformer/`` and ``vae/`` folders).

        ``path_or_repo`` is a local folder written by :meth:`save_pretrained` or any
        diffusers Wan2.1 T2V checkpoint (a local copy or a hub id such as
        ``Wan-AI/Wan2.1-T2V-1.3B-Diffusers``; causal fine-tunes such as Self-Forcing
        must first be converted to the diffusers layout). The preset is, in order:
        ``preset``, the folder's ``turboserve_model.json``, the known preset with the
        checkpoint's geometry, or a ``custom`` one (:func:`kernels.networks.load`).
        Real checkpoints need their real text encoder (UMT5-XXL) passed as
        ``text_encoder``; otherwise prompts go through the hash encoder, which such
        weights were not trained with.
        ``hub_kwargs`` go to diffusers' ``from_pretrained`` (``revision``, ``cache_dir``...).
        """
        # diffusers then keeps Wan's precision-sensitive modules in fp32 (needs `accelerate`).
        hub_kwargs.setdefault("torch_dtype", dtype)
        transformer, vae, resolved, encoder = networks.load(
            path_or_repo, preset=preset, text_encoder=text_encoder, **hub_kwargs
        )
        return cls(
            transformer,
            vae,
            resolved,
            text_encoder=encoder,
            device=device,
            dtype=dtype,
            num_threads=num_threads,
            batch_invariant=batch_invariant,
        )

    def save_pretrained(self, path: str | os.PathLike[str]) -> Path:
        """Write the weights (diffusers layout) and the preset to the folder ``path``.

        A hash text encoder is recorded by its seed; any other must be passed to
        :meth:`from_pretrained` again.
        """
        return networks.save(path, networks.Networks(self.transformer, self.vae, self.preset, self.text_encoder))

    # ------------------------------------------------------------------ sessions

    @property
    def name(self) -> str:
        """The preset name the sessions of this model carry."""
        return self.preset.name

    @property
    def vae_tile(self) -> int:
        """Sessions per VAE decode call when batch-invariant.

        2 on CPU: PyTorch sends batch-of-one 3-D convolutions to a slow native kernel,
        so a lone session is decoded as a pair anyway (itself twice), and two sessions
        share one call at the same shapes; oneDNN computes each image of a call alone,
        so a row's numbers do not depend on its partner or slot (``tests/
        test_batch_invariance.py`` checks it). 1 elsewhere.
        """
        return 2 if self.device.type == "cpu" else 1

    @property
    def weights_bytes(self) -> int:
        """Bytes of the transformer and VAE weights (what every worker holds once)."""
        modules = (self.transformer, self.vae)
        return sum(t.numel() * t.element_size() for m in modules for t in [*m.parameters(), *m.buffers()])

    def __repr__(self) -> str:
        return (
            f"StreamingVideoModel(preset={self.name!r}, device={str(self.device)!r}, dtype={self.dtype}, "
            f"batch_invariant={self.batch_invariant})"
        )

    def state_bytes(self, height: int | None = None, width: int | None = None) -> int:
        """Bytes of a session's state once its KV window is full."""
        height = height or self.preset.default_height
        width = width or self.preset.default_width
        return self.preset.state_bytes(height, width)

    def encode_prompt(self, prompt: str) -> torch.Tensor:
        """The prompt embedding ``[text_tokens, text_dim]`` a new session stores."""
        emb = self.text_encoder([prompt])
        want = (1, self.preset.text_tokens, self.preset.text_dim)
        if tuple(emb.shape) != want:
            raise ValueError(f"text encoder returned shape {tuple(emb.shape)}; the model needs {want}")
        return emb[0].to(self.device, self.dtype)

    def new_session(
        self, prompt: str, seed: int, *, height: int | None = None, width: int | None = None
    ) -> SessionState:
        """The state of a new session, ready for its chunk 0.

        Raises
        ------
        ValueError
            If ``height``/``width`` are not positive multiples of
            ``vae_spatial_ratio * patch`` (16 for every preset).
        """
        height = self.preset.default_height if height is None else height
        width = self.preset.default_width if width is None else width
        self.preset.check_resolution(height, width)
        try:
            seed = operator.index(seed)
        except TypeError:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}") from None
        if seed < 0 or isinstance(seed, bool):
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        p = self.preset
        tensors: dict[str, torch.Tensor] = {"prompt_embeds": self.encode_prompt(prompt)}
        for layer in range(p.num_layers):
            for kv in "kv":
                tensors[f"kv.{layer}.{kv}"] = torch.zeros(
                    (p.num_heads, 0, p.head_dim), device=self.device, dtype=self.dtype
                )
        vae_cache = self.decoder.zero_cache(height, width, device=self.device, dtype=self.dtype)
        for i, t in enumerate(vae_cache):
            tensors[f"vae.{i}"] = t
        tensors["rng"] = torch.Generator().manual_seed(seed).get_state().to(self.device)
        return SessionState(
            model=self.name,
            prompt=prompt,
            seed=seed,
            height=height,
            width=width,
            tensors=tensors,
            scalars={"kv.frames": 0, "vae.count": len(vae_cache)},
        )

    def set_prompt(self, state: SessionState, prompt: str) -> SessionState:
        """The state with ``prompt`` steering its chunks from ``state.chunk_index`` on.

        A prompt switch at a chunk boundary, the cross-attention way: the session's
        ``prompt_embeds`` become the new prompt's, its self-attention KV cache (the
        recent frames, computed under the old prompt) is kept, so the motion goes on and
        the content turns toward the new prompt over the next chunks. (LongLive instead
        re-caches the KV of the recent window under the new prompt, which needs the
        window's clean latents; the state does not keep them.) The switch is recorded in
        ``scalars["prompt.schedule"]`` (JSON ``[[chunk, prompt], ...]``), so it travels
        with the state (offload, checkpoints, migration) and :meth:`replay` repeats it:
        the same prompts at the same chunk indices give the same frames.
        """
        schedule = prompt_schedule(state)
        schedule = [e for e in schedule if e[0] < state.chunk_index] + [[state.chunk_index, prompt]]
        old = state.tensors["prompt_embeds"]
        tensors = {**state.tensors, "prompt_embeds": self.encode_prompt(prompt).to(old.device, old.dtype)}
        out = state.with_tensors(tensors)
        out.scalars["prompt.schedule"] = json.dumps(schedule)
        return out

    def replay(self, state: SessionState, index: int) -> np.ndarray:
        """Frames of chunk ``index`` of ``state``'s session, made again from a fresh state.

        Steps a new session (its opening prompt and seed) ``index + 1`` times, alone,
        switching prompts where ``state``'s prompt schedule says; generation is
        deterministic, so these are the frames the session made at ``index``.
        """
        switches = {k: p for k, p in prompt_schedule(state) if k > 0}
        fresh = self.new_session(state.prompt, state.seed, height=state.height, width=state.width)
        frames = None
        for k in range(index + 1):
            if k in switches:
                fresh = self.set_prompt(fresh, switches[k])
            frames = self.step([fresh])[0]
        return frames

    # ------------------------------------------------------------------ the batched step

    def _check_batch(self, states: Sequence[SessionState]) -> None:
        first = states[0]
        for s in states:
            if not isinstance(s, SessionState):
                raise TypeError(f"step() takes SessionState objects, got {type(s).__name__}")
            if s.model != self.name:
                raise ValueError(f"session state is for model {s.model!r}, this model is {self.name!r}")
            if (s.height, s.width) != (first.height, first.width):
                raise ValueError(
                    "all sessions in one step must share the resolution: got "
                    f"{first.height}x{first.width} and {s.height}x{s.width}; step them in separate batches"
                )
        if len({id(s) for s in states}) != len(states):
            raise ValueError("the same session state appears twice in one step")

    @contextlib.contextmanager
    def _threads(self) -> Iterator[None]:
        if self.num_threads is None:
            yield
            return
        before = torch.get_num_threads()
        torch.set_num_threads(self.num_threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def schedule_for(self, denoise_steps: int | None = None) -> FlowSchedule:
        """The flow schedule of a chunk run with ``denoise_steps`` steps.

        ``None`` is the preset's schedule (:attr:`schedule`); ``k`` is ``k`` evenly
        spaced timesteps from 1000 down with the preset's shift (the quality valve
        lowers ``k`` to make a chunk cheaper: 2 steps are 1000/500).

        Raises
        ------
        ValueError
            If ``denoise_steps`` is not a positive integer.
        """
        if denoise_steps is None:
            return self.schedule
        try:
            k = operator.index(denoise_steps)
        except TypeError:
            k = 0
        if k < 1 or isinstance(denoise_steps, bool):
            raise ValueError(f"denoise_steps must be a positive integer or None, got {denoise_steps!r}")
        if k == self.preset.denoise_steps:
            return self.schedule
        return FlowSchedule.evenly(k, shift=self.preset.timestep_shift)

    def step(
        self, states: Sequence[SessionState], *, denoise_steps: int | None = None, decode: bool = True
    ) -> list[np.ndarray]:
        """Advance every session by one chunk in one batched pass.

        Each state gets new tensors (its KV cache grows by the chunk, rolled to the
        window; its VAE cache and generator advance) and ``chunk_index + 1``.

        Parameters
        ----------
        states
            The sessions to advance (same model and resolution, each once).
        denoise_steps
            Denoising steps for this chunk of every session in the batch; ``None``:
            the preset's ``denoise_steps``. Fewer steps are cheaper and blurrier (the
            quality valve). The session state is updated as for a normal chunk (the
            generator advances by the ``k`` noise draws of a ``k``-step chunk), so
            the stream goes on; the result is deterministic for a given ``k``.
        decode
            ``False`` skips the VAE decode: no frames (empty arrays) and the ``vae.*``
            tensors are kept as they are. The followers of a sequence-parallel group
            (:mod:`kernels.parallel`) run the transformer only; the leader decodes.

        Returns
        -------
        list of numpy.ndarray
            Per session, in input order, uint8 frames ``(T, H, W, 3)``
            (``T = preset.frames_per_chunk``).

        Raises
        ------
        ValueError
            If the states are for another model, differ in resolution, or repeat, or
            ``denoise_steps`` is not a positive integer.
        """
        schedule = self.schedule_for(denoise_steps)
        if not states:
            return []
        self._check_batch(states)
        # Sessions with equal cache length are made contiguous: one attention call each.
        order = sorted(range(len(states)), key=lambda i: int(states[i].tensors["kv.0.k"].shape[1]))
        ordered = [states[i] for i in order]
        with torch.no_grad(), self._threads():
            frames = self._step_ordered(ordered, schedule, decode)
        out: list[np.ndarray] = [np.empty(0)] * len(states)
        for pos, i in enumerate(order):
            out[i] = frames[pos]
        return out

    def _step_ordered(
        self, states: Sequence[SessionState], schedule: FlowSchedule, decode: bool = True
    ) -> list[np.ndarray]:
        """The step for states sorted by cache length; commits each state as it is done.

        Batch-invariant (:attr:`batch_invariant`), the transformer's matrix products and
        attention run once per session (:func:`~kernels.invariance.row_wise`) and the
        VAE once per :attr:`vae_tile` sessions, so those calls have the same shapes
        whatever the batch; otherwise each runs once over the whole batch.
        """
        p, dev, dt = self.preset, self.device, self.dtype
        batch = len(states)
        frames = p.chunk_latent_frames
        lh, lw = p.latent_size(states[0].height, states[0].width)
        grid = (frames // p.patch_size[0], lh // p.patch_size[1], lw // p.patch_size[2])
        tensors = [{k: v.to(dev) for k, v in s.tensors.items()} for s in states]
        gens = [torch.Generator().set_state(t["rng"].cpu()) for t in tensors]
        tr = self.transformer
        # Every row is at the same timestep: one embedding row per step, broadcast over the
        # rows (cheaper, and a row's numbers do not depend on the batch size).
        tembs = [tr.embed_timestep(torch.full((1,), sigma * 1000.0, device=dev), dt) for sigma in schedule.sigmas]
        temb_clean = tr.embed_timestep(torch.zeros(1, device=dev), dt)

        with row_wise(self.batch_invariant):
            x0, writes = self._denoise(states, tensors, gens, grid, schedule, tembs, temb_clean)
        x0_rows = [x0[b : b + 1] for b in range(batch)]
        new_kv = [([ctx.new_keys[b] for ctx in writes], [ctx.new_values[b] for ctx in writes]) for b in range(batch)]
        del writes, x0

        tpf = grid[1] * grid[2]
        keep, sink = p.window_latent_frames * tpf, p.sink_latent_frames * tpf
        vae_tile = self.vae_tile if self.batch_invariant else batch
        frames_np: list[np.ndarray] = []
        vae_caches: list[list[torch.Tensor] | None] = []
        for start in range(0, batch if decode else 0, vae_tile):
            rows = range(start, min(start + vae_tile, batch))
            latents = x0_rows[start] if len(rows) == 1 else torch.cat([x0_rows[b] for b in rows])
            vae_in = [[tensors[b][f"vae.{i}"] for i in range(int(states[b].scalars["vae.count"]))] for b in rows]
            pixels, caches = self.decoder.decode(latents, vae_in)
            del vae_in, latents
            # One array per session (on CPU a slice would keep the whole batch's buffer alive).
            tile_np = [pixels[j].cpu().numpy() for j in range(len(rows))]
            if dev.type == "cpu":
                tile_np = [f.copy() for f in tile_np]
            frames_np += tile_np
            vae_caches += caches
        del x0_rows

        # Commit session by session, dropping this step's references to the old tensors,
        # so the peak is the old states plus one session's new KV (not twice the batch's).
        # Each state is swapped whole: it is either before or after this chunk, never mixed.
        for b, state in enumerate(states):
            t = tensors[b]
            nt: dict[str, torch.Tensor] = {"prompt_embeds": t["prompt_embeds"]}
            keys, values = new_kv[b]
            for layer in range(p.num_layers):
                nt[f"kv.{layer}.k"] = _roll_window(t[f"kv.{layer}.k"], keys[layer], keep, sink)
                nt[f"kv.{layer}.v"] = _roll_window(t[f"kv.{layer}.v"], values[layer], keep, sink)
            if decode:
                for i, c in enumerate(vae_caches[b]):  # type: ignore[arg-type]
                    nt[f"vae.{i}"] = c
            else:
                nt.update((k, v) for k, v in t.items() if k.startswith("vae."))
                frames_np.append(np.empty(0, dtype=np.uint8))
            nt["rng"] = gens[b].get_state().to(dev)
            state.tensors = nt
            state.chunk_index += 1
            state.scalars["kv.frames"] = int(nt["kv.0.k"].shape[1]) // tpf
            tensors[b] = None  # type: ignore[call-overload]
            if decode:
                vae_caches[b] = None
            new_kv[b] = ([], [])
        return frames_np

    def _denoise(
        self,
        states: Sequence[SessionState],
        tensors: Sequence[dict[str, torch.Tensor]],
        gens: Sequence[torch.Generator],
        grid: tuple[int, int, int],
        schedule: FlowSchedule,
        tembs: Sequence[tuple[torch.Tensor, torch.Tensor]],
        temb_clean: tuple[torch.Tensor, torch.Tensor],
    ) -> tuple[torch.Tensor, list[LayerKV]]:
        """Denoise one chunk of ``states`` (sorted by cache length) and write its K/V.

        Returns the clean latents ``[n, C, F, h, w]`` (float32) and the cache-writing
        pass's :class:`LayerKV` per layer (``new_keys``/``new_values`` per row).
        """
        p, dev, dt = self.preset, self.device, self.dtype
        n = len(states)
        frames = p.chunk_latent_frames
        shape = (p.latent_channels, frames, grid[1] * p.patch_size[1], grid[2] * p.patch_size[2])

        def noise() -> torch.Tensor:
            return torch.stack([torch.randn(shape, generator=g) for g in gens]).to(dev)

        lengths = [int(t["kv.0.k"].shape[1]) for t in tensors]
        groups: list[CacheGroup] = []
        start = 0
        for i in range(1, n + 1):
            if i == n or lengths[i] != lengths[start]:
                groups.append(CacheGroup(start, i, lengths[start]))
                start = i
        cos, sin = chunk_rotary(p.head_dim, [s.chunk_index * frames for s in states], *grid, device=dev)
        keys = [[t[f"kv.{layer}.k"] for t in tensors] for layer in range(p.num_layers)]
        values = [[t[f"kv.{layer}.v"] for t in tensors] for layer in range(p.num_layers)]

        def contexts(write: bool) -> list[LayerKV]:
            return [LayerKV(cos, sin, keys[layer], values[layer], groups, write) for layer in range(p.num_layers)]

        tr = self.transformer
        text = tr.embed_text(torch.stack([t["prompt_embeds"] for t in tensors]).to(dt))
        sigmas = schedule.sigmas
        x = noise()  # float32 sampler state; the model runs in `dt`
        x0 = x
        for i, sigma in enumerate(sigmas):
            flow = tr.forward_chunk(x.to(dt), tembs[i], text, contexts(False)).float()
            x0 = x - sigma * flow
            if i + 1 < len(sigmas):
                x = (1.0 - sigmas[i + 1]) * x0 + sigmas[i + 1] * noise()

        # One pass on the clean chunk at t=0 writes its K/V into the caches.
        writes = contexts(True)
        tr.forward_chunk(x0.to(dt), temb_clean, text, writes, output=False)
        return x0, writes


def prompt_schedule(state: SessionState) -> list[list[Any]]:
    """``[[chunk, prompt], ...]``: the prompts of a session and the chunks they start at."""
    raw = state.scalars.get("prompt.schedule")
    return [[0, state.prompt]] if raw is None else [[int(k), str(p)] for k, p in json.loads(str(raw))]
