"""Benchmark of the batched chunk step: latency at batch 1 and the gain of coalescing.

For each batch size B it times, side by side in the same loop, one batched step of B
sessions in each mode of the model (batch-invariant: the transformer per session and
the VAE per fixed tile, every kernel at the same shapes whatever the batch; and
one pass over the whole batch, whose rounding may depend on the batch size), and B
separate steps of the same sessions. It prints the per-session throughput ratio
(``B separate steps / one batched step``, of the mode the profile is for) and the cost
of invariance (``invariant step / whole-batch step``). Sessions are measured at
an empty KV cache (their first chunk) and at a full KV window (steady state), so the
written profile carries the context cost too (``context_frames`` column, read by
``experiments.sim.latency.load_profile``).

Examples
--------
CPU, tiny random-weight model (the profile shipped as ``kernels/profiles/tiny-cpu.csv``)::

    python -m experiments.bench_kernels --out kernels/profiles/tiny-cpu.csv

A GPU with the real Wan2.1-1.3B geometry (random weights, bf16)::

    python -m experiments.bench_kernels --device cuda --preset wan-1.3b --batches 1,2,4,8 \\
        --out kernels/profiles/wan-1.3b-h100.csv
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from kernels.model import StreamingVideoModel
from kernels.state import SessionState


@dataclass(frozen=True, slots=True)
class Row:
    """One measured batch size at one context length."""

    batch_size: int
    context_frames: int
    invariant_s: float  # median time of one batch-invariant step of `batch_size` sessions
    variant_s: float  # median time of one whole-batch step (batch_invariant=False)
    separate_s: float  # median time of `batch_size` separate single-session steps
    batch_invariant: bool = True  # the mode `step_s` (the profile's) is for

    @property
    def step_s(self) -> float:
        """Median time of one batched step in the profile's mode."""
        return self.invariant_s if self.batch_invariant else self.variant_s

    @property
    def invariance_cost(self) -> float:
        """Time of the batch-invariant step over the whole-batch step (1.0: free)."""
        return self.invariant_s / self.variant_s

    @property
    def per_chunk_s(self) -> float:
        """Seconds per session-chunk in the batched step."""
        return self.step_s / self.batch_size

    @property
    def speedup(self) -> float:
        """Per-session throughput of the batched step over separate steps."""
        return self.separate_s / self.step_s


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _with_context(model: StreamingVideoModel, state: SessionState, frames: int) -> None:
    """Give a fresh session a KV cache of ``frames`` latent frames (random contents).

    Timing depends only on the cache length, so the benchmark fills it directly rather
    than generating the chunks before it.
    """
    if frames == 0:
        return
    p = model.preset
    tokens = frames * p.tokens_per_latent_frame(state.height, state.width)
    gen = torch.Generator(device=model.device).manual_seed(0)
    for name in list(state.tensors):
        if name.startswith("kv."):
            state.tensors[name] = torch.randn(
                (p.num_heads, tokens, p.head_dim), generator=gen, device=model.device, dtype=model.dtype
            )
    state.chunk_index = frames // p.chunk_latent_frames
    state.scalars["kv.frames"] = frames


def _sessions(model: StreamingVideoModel, n: int, frames: int, height: int, width: int) -> list[SessionState]:
    out = []
    for i in range(n):
        s = model.new_session(f"benchmark prompt {i}", seed=i, height=height, width=width)
        _with_context(model, s, frames)
        out.append(s)
    return out


def _timed(model: StreamingVideoModel, batches: Sequence[Sequence[SessionState]]) -> float:
    _sync(model.device)
    t0 = time.perf_counter()
    for batch in batches:
        model.step(batch)
    _sync(model.device)
    return time.perf_counter() - t0


def _sample(
    model: StreamingVideoModel, batch_size: int, context_frames: int, height: int, width: int
) -> tuple[float, float, float]:
    """One timing of a batch-invariant step, a whole-batch step and separate steps."""
    # Fresh sessions per sample: first-chunk rows stay first chunks, and a full window
    # stays full (the step rolls it). One set of sessions alive at a time: big presets
    # fill a GPU with a few states.
    mode = model.batch_invariant
    timed = []
    try:
        for invariant in (True, False):
            model.batch_invariant = invariant
            batch = _sessions(model, batch_size, context_frames, height, width)
            timed.append(_timed(model, [batch]))
            del batch
    finally:
        model.batch_invariant = mode
    batch = _sessions(model, batch_size, context_frames, height, width)
    separate = _timed(model, [[s] for s in batch])
    return timed[0], timed[1], separate


def measure(
    model: StreamingVideoModel,
    batch_sizes: Sequence[int],
    context_frames: int,
    *,
    height: int,
    width: int,
    repeats: int,
    warmup: int,
) -> list[Row]:
    """Median batched-step (both modes) and separate-steps times per batch size, at one context.

    Repeats go round-robin over the batch sizes, so a change in machine load during the
    run shifts every batch size alike instead of skewing the curve. A batch size that
    runs out of device memory is dropped with every larger one.
    """
    sizes = sorted(batch_sizes)
    times: dict[int, tuple[list[float], list[float], list[float]]] = {b: ([], [], []) for b in sizes}
    for rep in range(warmup + repeats):
        for b in list(sizes):
            try:
                sample = _sample(model, b, context_frames, height, width)
            except torch.cuda.OutOfMemoryError:
                print(f"B={b}: out of device memory; batch sizes >= {b} skipped")
                sizes = [x for x in sizes if x < b]
                torch.cuda.empty_cache()
                break
            if rep >= warmup:
                for series, value in zip(times[b], sample):
                    series.append(value)
    return [
        Row(b, context_frames, *(statistics.median(t) for t in times[b]), batch_invariant=model.batch_invariant)
        for b in sizes
        if times[b][0]
    ]


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def _load() -> float:
    """1-minute load average (other processes share the CPU: timings depend on it)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def _parse_batches(text: str) -> list[int]:
    try:
        batches = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--batches takes comma-separated integers, got {text!r}") from None
    if not batches or batches[0] < 1:
        raise argparse.ArgumentTypeError(f"--batches needs positive integers, got {text!r}")
    return batches


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the table, optionally write the CSV profile."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (CUDA default)")
    ap.add_argument("--height", type=int, default=None)
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--batches", type=_parse_batches, default=[1, 2, 4, 8])
    ap.add_argument("--repeats", type=int, default=9, help="timed repeats per point (median)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (CPU runs)")
    ap.add_argument("--contexts", default="0,window", help="context frames to measure: integers or 'window'")
    ap.add_argument(
        "--batch-invariant",
        choices=("on", "off"),
        default="on",
        help="the mode whose step times the profile's step_s holds (both are measured; on: the default)",
    )
    ap.add_argument("--out", type=Path, default=None, help="write the profile CSV here")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    dtype_name = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    dtype = getattr(torch, dtype_name)
    threads = args.threads if device.type == "cpu" else None
    invariant = args.batch_invariant == "on"
    model = StreamingVideoModel.from_preset(
        args.preset, device=device, dtype=dtype, num_threads=threads, batch_invariant=invariant
    )
    p = model.preset
    height, width = args.height or p.default_height, args.width or p.default_width
    p.check_resolution(height, width)
    contexts = [p.window_latent_frames if c.strip() == "window" else int(c) for c in args.contexts.split(",")]
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name()

    print(
        f"preset {p.name} | {device_name} ({device.type}, {dtype_name}"
        + (f", {threads} thread(s)" if threads else "")
        + f") | {height}x{width}, {p.frames_per_chunk} frames/chunk, {p.denoise_steps} steps + cache pass"
    )
    load_before = _load()
    rows: list[Row] = []
    for ctx in contexts:
        print(f"\ncontext {ctx} latent frames (KV {p.kv_bytes(height, width, ctx) / 2**20:.1f} MiB per session)")
        print(
            f"{'B':>4} {'invariant s':>12} {'whole-batch s':>14} {'B separate s':>13} {'s/chunk':>9} "
            f"{'speedup':>8} {'invariance cost':>16}"
        )
        for row in measure(
            model, args.batches, ctx, height=height, width=width, repeats=args.repeats, warmup=args.warmup
        ):
            rows.append(row)
            print(
                f"{row.batch_size:>4} {row.invariant_s:>12.4f} {row.variant_s:>14.4f} {row.separate_s:>13.4f} "
                f"{row.per_chunk_s:>9.4f} {row.speedup:>7.2f}x {row.invariance_cost:>15.2f}x"
            )
    print(
        "speedup: B separate steps / one step in the profile's mode "
        f"(batch-invariant {args.batch_invariant}); invariance cost: invariant step / whole-batch step"
    )
    ones = [r for r in rows if r.batch_size == 1]
    for r in ones:
        print(f"batch-1 chunk latency at context {r.context_frames}: {r.step_s:.4f} s (median of {args.repeats})")

    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        header = [
            f"# measured by experiments/bench_kernels.py on {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC",
            f"# preset {p.name}, random weights, {dtype_name}, {height}x{width}, device {device_name}"
            + (f", {threads} torch thread(s)" if threads else ""),
            f"# torch {torch.__version__}, python {platform.python_version()}; median of {args.repeats} repeats; "
            f"{os.cpu_count()} CPUs, load average {load_before:.1f} before / {_load():.1f} after",
            f"# step_s: one batched step of batch_size sessions, batch-invariant {args.batch_invariant} "
            "(= invariant_s or variant_s); separate_s: batch_size single-session steps",
            "# invariant_s: one batch-invariant step; variant_s: one whole-batch step (batch_invariant=False)",
        ]
        lines = ["batch_size,step_s,per_chunk_s,context_frames,separate_s,invariant_s,variant_s"]
        lines += [
            f"{r.batch_size},{r.step_s:.6f},{r.per_chunk_s:.6f},{r.context_frames},{r.separate_s:.6f},"
            f"{r.invariant_s:.6f},{r.variant_s:.6f}"
            for r in rows
        ]
        args.out.write_text("\n".join(header + lines) + "\n")
        print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
