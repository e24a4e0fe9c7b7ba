"""Train the ``tiny-trained`` checkpoint on CPU, in minutes, on videos made by code.

    python -m kernels.train --out kernels/weights/tiny-trained

What is learnt, and why it is learnable quickly:

- **A fixed latent code instead of a learnt encoder.** A latent frame is its 4 pixel
  frames average-pooled over 8x8 blocks, the 4 RGB triples stacked as 12 of the 16
  latent channels (the other 4 are zero), scaled so black is 0 (:func:`latent_code`).
  The VAE's *decoder* turns that code back into the frames, through the same streaming,
  cache-carrying call the serving path makes (:class:`kernels.vae.StreamingVaeDecoder`).
  With ``--decoder-init analytic`` it starts from the code's inverse written into its
  weights (:func:`analytic_decoder`: 8x8 blocks of the block's colour, two frames per
  RGB triple) and is fine-tuned on two chunks in a row, so the cache is trained too.
  The encoder is not used anywhere and stays at its random weights.
- **The chunk-causal transformer with a flow-matching loss, teacher-forced.** For a clip
  of :data:`CLIP_CHUNKS` chunks, chunk ``k`` is noised to a sigma of the serving schedule
  (or a uniform one), the model predicts the flow ``noise - x0`` attending to the K/V
  that the clean chunks ``0..k-1`` wrote with the t=0 pass, exactly the calls
  :meth:`kernels.model.StreamingVideoModel.step` makes. The prompt reaches it only
  through the hash text encoder's embedding (:class:`kernels.text.HashTextEncoder`), so
  colour and direction are read from the words.

Everything is seeded: the same command writes the same weights on the same machine
(the two phases run side by side, one thread each; a few minutes each on a 2-core machine).

Where it stands (the shipped ``kernels/weights/tiny-trained``; ``training.json`` there
lists the commands that made it, each going on from the one before with ``--init``).
The frames follow the prompt: streamed 4 chunks, every one of the 28 training prompts
gives frames of its colour, with the square moving in its direction (28 of 28 for both,
``python -m kernels.train --evaluate kernels/weights/tiny-trained``;
``tests/test_tiny_trained.py`` checks both). How it got there: the first run (600
transformer steps, decoder from random weights) left a transformer that drew the
prompt's colour in latent space but a decoder that had not learnt hue (after 4700
steps it still decoded blue as green and magenta as yellow: 10 of 28 prompts right).
The decoder set to the code's inverse (:func:`analytic_decoder`) gave 26 of 28 at once
with that transformer (direction 5 of 28, chance is 7); 3100 more transformer steps in
three runs (flow MSE 0.084 -> 0.006; ~20 minutes on a busy 2-core machine) gave 28 of 28
for both. The squares are blurred at their edges and now and then dimmer for a frame or two.
A fresh default run (analytic decoder, 600 transformer steps) is only the start: its
frames have the prompt's colour but hardly its motion; ``--init`` it and go on.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLWan

from .model import StreamingVideoModel
from .networks import build_transformer, build_vae
from .presets import ModelPreset, get_preset
from .synthetic import COLOURS, DIRECTIONS, prompt_for, render_clip, start_of
from .text import HashTextEncoder
from .transformer import CacheGroup, LayerKV, chunk_rotary

#: Chunks per training clip (the teacher-forced context the transformer learns from).
CLIP_CHUNKS = 3
#: One-latent-frame pieces decoded in a row per decoder training sample.
DECODER_PIECES = 2
#: Side, in latent pixels, of the square crops the decoder is trained on.
DECODER_CROP = 3
#: Scale of the latent code: a full-intensity channel is this, black is 0.
CODE_SCALE = 1.5


@dataclasses.dataclass(frozen=True, slots=True)
class TrainSettings:
    """Steps, batch sizes and learning rates of the two phases."""

    decoder_steps: int = 300
    decoder_batch: int = 4
    decoder_lr: float = 1e-3
    decoder_square_weight: float = 3.0
    transformer_steps: int = 600
    transformer_batch: int = 8
    transformer_lr: float = 2e-3
    seed: int = 0
    #: Where the decoder starts: ``"analytic"`` (:func:`analytic_decoder`, the code's inverse
    #: set by hand), ``"as-is"`` (seeded random weights, or the ``--init`` checkpoint's), or
    #: ``"auto"``: analytic for a fresh run, as-is when going on from a checkpoint.
    decoder_init: str = "auto"


def latent_code(frames: torch.Tensor, preset: ModelPreset) -> torch.Tensor:
    """The latent ``[B, C, T / 4, h, w]`` of pixel frames ``[B, T, H, W, 3]`` in ``[0, 1]``."""
    b, t, h, w, _ = frames.shape
    r, s = preset.vae_temporal_ratio, preset.vae_spatial_ratio
    pooled = F.avg_pool2d(frames.permute(0, 1, 4, 2, 3).reshape(b * t, 3, h, w), s)  # [B*T, 3, h/s, w/s]
    pooled = pooled.reshape(b, t // r, r * 3, h // s, w // s) * CODE_SCALE
    pad = preset.latent_channels - r * 3
    if pad < 0:
        raise ValueError(f"the code needs {r * 3} latent channels, the preset has {preset.latent_channels}")
    code = torch.cat([pooled, pooled.new_zeros(b, t // r, pad, h // s, w // s)], dim=2)
    return code.permute(0, 2, 1, 3, 4).contiguous()


def _batch(rng: np.random.Generator, n: int, chunks: int, preset: ModelPreset) -> tuple[list[str], torch.Tensor]:
    """``n`` random prompts and their clips ``[n, chunks * frames_per_chunk, H, W, 3]``."""
    colours, directions = list(COLOURS), list(DIRECTIONS)
    size = preset.default_height
    prompts, clips = [], []
    for _ in range(n):
        c, d = colours[rng.integers(len(colours))], directions[rng.integers(len(directions))]
        start = start_of(size)
        prompts.append(prompt_for(c, d))
        clips.append(render_clip(c, d, frames=chunks * preset.frames_per_chunk, size=size, start=start))
    return prompts, torch.from_numpy(np.stack(clips))


def _cosine(opt: torch.optim.Optimizer, base: float, step: int, total: int) -> None:
    warm = max(1, total // 20)
    lr = base * min(1.0, (step + 1) / warm) * 0.5 * (1 + math.cos(math.pi * step / total))
    for g in opt.param_groups:
        g["lr"] = lr


def decode_chunk(vae: AutoencoderKLWan, latents: torch.Tensor, cache: list[torch.Tensor]) -> torch.Tensor:
    """Differentiable twin of :meth:`StreamingVaeDecoder.decode`: ``[B, 3, T, H, W]`` in ``[-1, 1]``.

    ``cache`` (the decoder's feature cache, one tensor per causal convolution) is
    updated in place, as the decoder does.
    """
    z_dim = vae.config.z_dim
    mean = torch.tensor(vae.config.latents_mean).view(1, z_dim, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, z_dim, 1, 1, 1)
    x = vae.post_quant_conv(latents * std + mean)
    return vae.decoder(x, feat_cache=cache, feat_idx=[0], first_chunk=False)


#: The constant channel the analytic decoder carries next to the colour (see :func:`analytic_decoder`).
ANALYTIC_LEVEL = 8.0


@torch.no_grad()
def analytic_decoder(vae: AutoencoderKLWan, preset: ModelPreset, level: float = ANALYTIC_LEVEL) -> None:
    """Set the decoder (in place) to an approximate inverse of :func:`latent_code`, by construction.

    Why: trained from random weights, this 8-channel Wan decoder learnt brightness
    quickly but hue only very slowly (after 4700 steps it still decoded blue as green
    and magenta as yellow). The code is linear in the pixels, so its inverse up to the
    8x8 block and the frame pair can be written into the weights directly:

    - every residual branch and the mid-block attention output is zeroed (their last
      convolution), so each block passes its shortcut on: the decoder is linear up to
      its output norm;
    - ``conv_in`` (current latent frame, centre tap) makes 7 channels: the mean RGB of
      pixel frames 0-1, of frames 2-3, and a constant ``level``;
    - the first temporal upsampler sends the first RGB triple to its first frame, the
      second to its second; later ones repeat the frame; each upsampler's convolution
      keeps ``[R, G, B, level]`` (4 channels, all the Wan 2.1 upsamplers leave);
    - ``norm_out`` divides by the channel RMS: with ``level`` well above 1 that is about
      ``level``, which the gains undo; ``conv_out`` maps ``silu(x)`` to ``[-1, 1]``
      (0 -> -1, full intensity -> 1).

    What it renders: each 8x8 block in the block's mean colour, the same picture for
    two frames in a row (a frame pair shares one RGB triple through the 4-channel
    upsamplers); the colour is exact up to the norm's ``level`` (a few percent). Fine-tuning
    with :func:`train_decoder` may sharpen it. The other weights (residual convolutions,
    norms, attention projections in) are left as they are: their branches are cut.
    """
    dec, r = vae.decoder, preset.vae_temporal_ratio
    first_rgb = 2 * 3 + 1  # two RGB triples and the constant
    temporal = [b.upsamplers is not None and b.upsamplers[0].mode == "upsample3d" for b in dec.up_blocks]
    if (r != 4 or preset.latent_channels < 3 * r or dec.conv_in.out_channels < first_rgb
            or any(b.upsamplers is not None and b.upsamplers[0].resample[1].out_channels < 4 for b in dec.up_blocks)
            or sum(temporal) != 2 or not temporal[0]):
        raise ValueError(f"the analytic decoder needs a Wan 2.1 decoder with two temporal upsamplers, 4 frames "
                         f"per latent frame and base_dim >= 8; preset {preset.name!r} has another geometry")

    def zero(*mods: torch.nn.Module) -> None:
        for m in mods:
            m.weight.zero_()
            m.bias.zero_()

    for m in dec.modules():
        if m.__class__.__name__ == "WanResidualBlock":
            zero(m.conv2)
            if not isinstance(m.conv_shortcut, torch.nn.Identity):
                zero(m.conv_shortcut)
                for c in range(min(m.conv_shortcut.in_channels, m.conv_shortcut.out_channels)):
                    m.conv_shortcut.weight[c, c, 0, 0, 0] = 1.0
        elif m.__class__.__name__ == "WanAttentionBlock":
            zero(m.proj)
    z = vae.post_quant_conv
    zero(z)
    for c in range(z.out_channels):
        z.weight[c, c, 0, 0, 0] = 1.0
    # Causal convolutions pad two frames in front: kernel index -1 in time is the current frame.
    ci = dec.conv_in
    zero(ci)
    for f in range(r):
        for c in range(3):
            ci.weight[(f // 2) * 3 + c, 3 * f + c, -1, 1, 1] = 0.5 / CODE_SCALE
    ci.bias[6] = level
    split = True  # the first upsampler is temporal (checked above): it splits the frame pairs
    for blk in dec.up_blocks:
        if blk.upsamplers is None:
            continue
        up = blk.upsamplers[0]
        n = up.resample[1].in_channels
        if up.mode == "upsample3d":
            tc = up.time_conv  # out channels [0, n) -> the earlier frame, [n, 2n) -> the later one
            zero(tc)
            for c in range(4):
                tc.weight[c, 6 if split and c == 3 else c, -1, 0, 0] = 1.0
                tc.weight[n + c, (3 + c if c < 3 else 6) if split else c, -1, 0, 0] = 1.0
            split = False
        conv = up.resample[1]
        zero(conv)
        for c in range(4):
            conv.weight[c, c, 1, 1] = 1.0
    norm = dec.norm_out
    norm.gamma.zero_()
    norm.gamma[:3] = level / norm.scale
    co = dec.conv_out
    zero(co)
    full = float(F.silu(torch.tensor(1.0)))
    for c in range(3):
        co.weight[c, c, -1, 1, 1] = 2.0 / full
    co.bias.fill_(-1.0)


def _conv_layout(vae: torch.nn.Module, fmt: torch.memory_format) -> None:
    for mod in vae.modules():
        if isinstance(mod, torch.nn.Conv3d):
            mod.weight.data = mod.weight.data.contiguous(memory_format=fmt)


def train_decoder(
    vae: AutoencoderKLWan, preset: ModelPreset, settings: TrainSettings, log: Callable[[str], None] = print
) -> float:
    """Fit the decoder to :func:`latent_code`; returns the last logged MSE."""
    rng = np.random.default_rng(settings.seed)
    params = [*vae.post_quant_conv.parameters(), *vae.decoder.parameters()]
    opt = torch.optim.AdamW(params, lr=settings.decoder_lr, weight_decay=0.0)
    vae.train()
    t0 = time.perf_counter()
    lh, lw = preset.latent_size(preset.default_height, preset.default_width)
    crop = min(DECODER_CROP, lh, lw)
    shapes = preset.vae.decoder_cache_shapes(crop, crop)
    fmt = torch.channels_last_3d  # oneDNN's fast layout for thin 3-D convolutions on CPU
    _conv_layout(vae, fmt)
    loss_avg = float("nan")
    for step in range(settings.decoder_steps):
        _cosine(opt, settings.decoder_lr, step, settings.decoder_steps)
        # Two one-latent-frame pieces in a row: Wan's decoder is causal frame by frame, so
        # this trains the cache hand-over at a third of the cost of two whole chunks.
        _, clips = _batch(rng, settings.decoder_batch, 1, preset)
        pieces = DECODER_PIECES
        clips = clips[:, : pieces * preset.vae_temporal_ratio]
        code = latent_code(clips, preset)
        target = clips.permute(0, 4, 1, 2, 3) * 2.0 - 1.0  # [B, 3, T, H, W]
        # The decoder is convolutional: a random crop (the same latent window in the code
        # and in the pixels) teaches it as much per pixel for a fraction of the cost.
        y, x = (int(v) for v in rng.integers(lh - crop + 1, size=2))
        code = code[..., y : y + crop, x : x + crop]
        sp = preset.vae_spatial_ratio
        target = target[..., sp * y : sp * (y + crop), sp * x : sp * (x + crop)]
        cache = [torch.zeros((settings.decoder_batch, *s)).contiguous(memory_format=fmt) for s in shapes]
        loss = torch.zeros(())
        r = preset.vae_temporal_ratio
        for k in range(pieces):
            out = decode_chunk(vae, code[:, :, k : k + 1].contiguous(memory_format=fmt), cache)
            want = target[:, :, k * r : (k + 1) * r]
            # The square's pixels may weigh more than the background's (decoder_square_weight;
            # 5 was tried on top of the shipped decoder and did not make it learn the hue).
            weight = 1.0 + (settings.decoder_square_weight - 1.0) * (want.amax(dim=1, keepdim=True) > -1.0).float()
            loss = loss + (weight * (out - want) ** 2).mean() / pieces
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        loss_avg = float(loss.detach()) if step == 0 else 0.95 * loss_avg + 0.05 * float(loss.detach())
        if step % 50 == 0 or step == settings.decoder_steps - 1:
            log(f"decoder step {step:5d}  mse {loss_avg:.4f}  ({time.perf_counter() - t0:.0f}s)")
    _conv_layout(vae, torch.contiguous_format)  # safetensors saves contiguous tensors
    vae.eval()
    return loss_avg


def _contexts(
    cos: torch.Tensor, sin: torch.Tensor, keys: Sequence[list[torch.Tensor]], values: Sequence[list[torch.Tensor]],
    n: int, length: int, write: bool,
) -> list[LayerKV]:
    groups = [CacheGroup(0, n, length)]
    return [LayerKV(cos, sin, keys[i], values[i], groups, write) for i in range(len(keys))]


def train_transformer(
    model: StreamingVideoModel, settings: TrainSettings, log: Callable[[str], None] = print
) -> float:
    """Teacher-forced flow matching over :data:`CLIP_CHUNKS`-chunk clips; returns the last MSE."""
    p, tr = model.preset, model.transformer
    rng = np.random.default_rng(settings.seed + 1)
    gen = torch.Generator().manual_seed(settings.seed + 2)
    opt = torch.optim.AdamW(tr.parameters(), lr=settings.transformer_lr, weight_decay=0.01)
    tr.train()
    t0 = time.perf_counter()
    sigmas = [s for k in (p.denoise_steps, max(1, p.denoise_steps // 2)) for s in model.schedule_for(k).sigmas]
    lh, lw = p.latent_size(p.default_height, p.default_width)
    grid = (p.chunk_latent_frames // p.patch_size[0], lh // p.patch_size[1], lw // p.patch_size[2])
    tpf = grid[1] * grid[2]
    n = settings.transformer_batch
    loss_avg = float("nan")
    for step in range(settings.transformer_steps):
        _cosine(opt, settings.transformer_lr, step, settings.transformer_steps)
        prompts, clips = _batch(rng, n, CLIP_CHUNKS, p)
        code = latent_code(clips, p)
        text = tr.embed_text(model.text_encoder(prompts))
        keys: list[list[torch.Tensor]] = [[torch.zeros(p.num_heads, 0, p.head_dim)] * n for _ in range(p.num_layers)]
        values = [list(k) for k in keys]
        temb_clean = tr.embed_timestep(torch.zeros(1), torch.float32)
        loss = torch.zeros(())
        for k in range(CLIP_CHUNKS):
            c = p.chunk_latent_frames
            x0 = code[:, :, k * c : (k + 1) * c]
            # Half the rows at a sigma of the serving schedules, half uniform in (0, 1].
            pick = torch.tensor([sigmas[int(i)] for i in rng.integers(len(sigmas), size=n)])
            uniform = torch.rand(n, generator=gen).clamp_min(0.02)
            sigma = torch.where(torch.rand(n, generator=gen) < 0.5, pick, uniform)
            noise = torch.randn(x0.shape, generator=gen)
            s = sigma.view(n, 1, 1, 1, 1)
            xt = (1 - s) * x0 + s * noise
            cos, sin = chunk_rotary(p.head_dim, [k * c] * n, *grid)
            length = k * c * tpf
            flow = tr.forward_chunk(xt, tr.embed_timestep(sigma * 1000.0, torch.float32), text,
                                    _contexts(cos, sin, keys, values, n, length, False))
            loss = loss + F.mse_loss(flow, noise - x0) / CLIP_CHUNKS
            if k + 1 < CLIP_CHUNKS:
                writes = _contexts(cos, sin, keys, values, n, length, True)
                tr.forward_chunk(x0, temb_clean, text, writes, output=False)
                for layer, ctx in enumerate(writes):
                    keys[layer] = [torch.cat([keys[layer][b], ctx.new_keys[b]], dim=1) for b in range(n)]
                    values[layer] = [torch.cat([values[layer][b], ctx.new_values[b]], dim=1) for b in range(n)]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tr.parameters(), 1.0)
        opt.step()
        loss_avg = float(loss.detach()) if step == 0 else 0.98 * loss_avg + 0.02 * float(loss.detach())
        if step % 50 == 0 or step == settings.transformer_steps - 1:
            log(f"transformer step {step:5d}  flow mse {loss_avg:.4f}  ({time.perf_counter() - t0:.0f}s)")
    tr.eval()
    return loss_avg


def build_untrained(preset: ModelPreset, seed: int) -> StreamingVideoModel:
    """The model to train: seeded random weights, a VAE whose latents are unnormalised."""
    g = preset.vae
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = build_transformer(preset)
        vae = build_vae(preset, latents_mean=[0.0] * g.z_dim, latents_std=[1.0] * g.z_dim)
    encoder = HashTextEncoder(preset.text_dim, preset.text_tokens)
    return StreamingVideoModel(transformer, vae, preset, text_encoder=encoder)


def _timed(fn: Callable[..., float], *args: Any) -> tuple[float, float]:
    t0 = time.perf_counter()
    return fn(*args), time.perf_counter() - t0


def train(
    out: str | Path, *, preset: str = "tiny-trained", settings: TrainSettings = TrainSettings(),
    log: Callable[[str], None] = print, init: str | Path | None = None,
) -> Path:
    """Train both phases and write the checkpoint folder ``out`` (``from_pretrained`` layout)."""
    t0 = time.perf_counter()
    resolved = get_preset(preset)
    if init is None:
        model = build_untrained(resolved, settings.seed)
    else:  # go on training a checkpoint (e.g. more decoder steps with --transformer-steps 0)
        model = StreamingVideoModel.from_pretrained(init, preset=resolved)
    if settings.decoder_init not in ("auto", "analytic", "as-is"):
        raise ValueError(f"decoder_init is 'auto', 'analytic' or 'as-is', got {settings.decoder_init!r}")
    if settings.decoder_init == "analytic" or (settings.decoder_init == "auto" and init is None):
        analytic_decoder(model.vae, resolved)
    # The two phases share nothing (the transformer learns the fixed latent code): they run
    # side by side, one thread each.
    with torch.random.fork_rng(devices=[]), concurrent.futures.ThreadPoolExecutor(1) as pool:
        torch.manual_seed(settings.seed)
        decoder = pool.submit(_timed, train_decoder, model.vae, resolved, settings, log)
        flow, t_flow = _timed(train_transformer, model, settings, log)
        dec, t_dec = decoder.result()
    t2 = time.perf_counter()
    root = model.save_pretrained(out)
    report = {
        "settings": dataclasses.asdict(settings), "init": None if init is None else str(init), "decoder_mse": dec, "flow_mse": flow,
        "decoder_s": round(t_dec, 1), "transformer_s": round(t_flow, 1), "torch": torch.__version__,
    }
    (root / "training.json").write_text(json.dumps(report, indent=2))
    log(f"wrote {root} in {t2 - t0:.0f}s (decoder {t_dec:.0f}s, transformer {t_flow:.0f}s, side by side)")
    return root


def evaluate(path: str | Path, chunks: int = 4, log: Callable[[str], None] = print) -> tuple[int, int, int]:
    """Stream every training prompt ``chunks`` chunks; ``(colour hits, direction hits, prompts)``.

    The colour is :func:`kernels.synthetic.dominant_colour` of all frames; the direction
    :func:`kernels.synthetic.motion_direction` after the first chunk.
    """
    from .synthetic import dominant_colour, motion_direction

    model = StreamingVideoModel.from_pretrained(path, num_threads=1)
    hits_c = hits_d = n = 0
    for colour in COLOURS:
        for direction in DIRECTIONS:
            state = model.new_session(prompt_for(colour, direction), seed=n)
            frames = np.concatenate([model.step([state])[0] for _ in range(chunks)])
            got_c, got_d = dominant_colour(frames), motion_direction(frames[model.preset.frames_per_chunk:])
            hits_c, hits_d, n = hits_c + (got_c == colour), hits_d + (got_d == direction), n + 1
            log(f"{prompt_for(colour, direction):32s} -> {got_c:8s} {got_d}")
    log(f"colour right for {hits_c} of {n} prompts, direction for {hits_d} of {n}")
    return hits_c, hits_d, n


def main(argv: Sequence[str] | None = None) -> None:
    defaults = TrainSettings()
    ap = argparse.ArgumentParser(prog="python -m kernels.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "weights" / "tiny-trained"))
    ap.add_argument("--decoder-steps", type=int, default=defaults.decoder_steps)
    ap.add_argument("--transformer-steps", type=int, default=defaults.transformer_steps)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--decoder-lr", type=float, default=defaults.decoder_lr)
    ap.add_argument("--decoder-square-weight", type=float, default=defaults.decoder_square_weight)
    ap.add_argument("--transformer-lr", type=float, default=defaults.transformer_lr)
    ap.add_argument("--decoder-init", choices=("auto", "analytic", "as-is"), default=defaults.decoder_init,
                    help="where the decoder starts: the latent code's inverse set by hand (analytic), random or "
                         "--init's weights (as-is); auto (default): analytic unless --init")
    ap.add_argument("--init", default=None, help="start from this checkpoint instead of random weights")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: these thin layers gain little from more, and on a "
                         "busy machine OpenMP's spinning threads make a step 20x slower)")
    ap.add_argument("--evaluate", metavar="CHECKPOINT", default=None,
                    help="do not train: stream every training prompt from CHECKPOINT and score its frames")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.evaluate:
        evaluate(args.evaluate)
        return
    settings = TrainSettings(decoder_steps=args.decoder_steps, transformer_steps=args.transformer_steps, seed=args.seed,
                             decoder_lr=args.decoder_lr, decoder_square_weight=args.decoder_square_weight,
                             transformer_lr=args.transformer_lr, decoder_init=args.decoder_init)
    train(args.out, settings=settings, init=args.init)


if __name__ == "__main__":
    main()
