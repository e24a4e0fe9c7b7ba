"""Session-state save/load throughput: host copy, zarr checkpoint, against numpy.save/load.

Builds states shaped like a streaming video session (bfloat16 KV cache per layer,
float16 VAE cache, prompt embedding, generator bytes) of the requested sizes, and
times, side by side in one run and on the same disk:

- ``host copy``: :func:`storage.offload_to_host` from the GPU when one is present
  (into pinned memory), else a CPU clone of every tensor (fresh memory: page faults);
- ``host copy (checkpoint pool)``: the same copy into a buffer of a
  :class:`workers.host_buffers.HostBufferPool`, given back after each copy (the
  engine's periodic checkpoint copies);
- ``host copy (suspend pool)``: the suspend path, :meth:`workers.engine.Engine.offload`'s
  copy into a buffer lent by a :class:`workers.host_buffers.ReceivePool` (pinned where
  CUDA is), which comes back when the parked copy is dropped (the session resumed);
  without a GPU a worker's state is already on the host and a suspension copies nothing,
  so this times the same copy of the CPU state into the lent buffer;
- ``memcpy (warm)``: one ``Tensor.copy_`` of the same number of bytes between two
  buffers whose pages are already mapped (device to device with a GPU): the limit;
- ``zarr save`` / ``zarr load``: :class:`storage.CheckpointStore` (uncompressed,
  checksummed, verified on load);
- ``numpy save`` / ``numpy load``: ``numpy.save``/``numpy.load`` of the same tensors,
  one ``.npy`` file each (no checksum, no atomic switch): the baseline.

Each host copy is printed against the warm memcpy (memcpy time over copy time: 1.00x is
memcpy speed); the zarr rows against numpy (zarr time over numpy time, below 1: zarr
faster). The operations alternate
within every repeat and each starts after an untimed ``os.sync()``, so load from other
processes and dirty pages from the previous write hit both sides alike; the median is
reported and every run goes to stderr. Torch runs with one thread by default, as inside a
Dask worker (``--threads``): on a shared machine a copy split over two threads waits for
the second core at every tensor, which one large memcpy pays once. Neither side calls fsync, so writes measure the
page cache as much as the disk.

Usage::

    python experiments/bench_state.py                 # 64, 256 and 512 MiB, median of 3
    python experiments/bench_state.py --sizes-mib 256 --repeat 5 --dir /mnt/fast
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np
import torch

from storage import CheckpointStore, SessionState, offload_to_host
from storage.tensors import from_numpy, to_numpy
from workers.host_buffers import HostBufferPool, ReceivePool

MiB = 2**20


def make_state(
    size_bytes: int, *, layers: int = 8, heads: int = 12, head_dim: int = 128, seed: int = 0
) -> SessionState:
    """A session-shaped state of about ``size_bytes``: 85% KV cache, 10% VAE cache, 5% prompt."""
    gen = torch.Generator().manual_seed(seed)

    def rand(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        return torch.randn(shape, generator=gen, dtype=torch.float32).to(dtype)

    kv_tokens = max(1, int(0.85 * size_bytes) // (2 * layers * heads * head_dim * 2))
    tensors = {"prompt_embeds": rand((512, max(1, int(0.05 * size_bytes) // (512 * 2))), torch.bfloat16)}
    for layer in range(layers):
        tensors[f"kv.{layer}.k"] = rand((heads, kv_tokens, head_dim), torch.bfloat16)
        tensors[f"kv.{layer}.v"] = rand((heads, kv_tokens, head_dim), torch.bfloat16)
    vae_elems = max(1, int(0.10 * size_bytes) // (4 * 2))
    for i in range(4):
        tensors[f"vae.{i}"] = rand((vae_elems // 64, 64), torch.float16)
    tensors["rng"] = torch.Generator().manual_seed(seed).get_state()
    return SessionState(
        model="bench",
        prompt="bench",
        seed=seed,
        height=480,
        width=832,
        chunk_index=7,
        tensors=tensors,
        scalars={"kv.frames": 3, "vae.count": 4},
    )


def interleaved_medians(
    ops: dict[str, Callable[[], object]], repeat: int, setup: dict[str, Callable[[], None]]
) -> dict[str, float]:
    """Median wall time of each op; the ops alternate within every repeat, so load on
    a shared machine hits all of them alike. ``os.sync()`` before each op (untimed)
    starts every write with no dirty pages left over from the previous one."""
    times: dict[str, list[float]] = {name: [] for name in ops}
    for name, fn in ops.items():  # warm-up: first-touch page faults, imports, caches
        setup.get(name, lambda: None)()
        fn()
    for _ in range(repeat):
        for name, fn in ops.items():
            if name in setup:
                setup[name]()
            os.sync()
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    for name, ts in times.items():
        print(f"    {name:<26} runs: " + " ".join(f"{t:.3f}" for t in ts), file=sys.stderr)
    return {name: statistics.median(ts) for name, ts in times.items()}


def numpy_save(state: SessionState, directory: pathlib.Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, tensor in state.tensors.items():
        np.save(directory / f"{name}.npy", to_numpy(tensor))


def numpy_load(state: SessionState, directory: pathlib.Path) -> dict[str, torch.Tensor]:
    return {name: from_numpy(np.load(directory / f"{name}.npy"), t.dtype) for name, t in state.tensors.items()}


def bench_size(size_mib: int, repeat: int, root: pathlib.Path) -> list[tuple[str, float, float]]:
    """Rows ``(operation, seconds, GiB/s)`` for one state size."""
    state = make_state(size_mib * MiB)
    gib = state.nbytes / 2**30
    rows: list[tuple[str, float, float]] = []

    pool = HostBufferPool()
    parked = ReceivePool(pin_memory=None)  # what Engine.parked_copies is
    if torch.cuda.is_available():
        on_device = state.to("cuda")
        torch.cuda.synchronize()
        copy, copy_name = (lambda: offload_to_host(on_device, release=False)), "host copy (GPU -> pinned)"
        reuse = lambda: pool.copy(on_device, non_blocking=True).release()  # noqa: E731
        # Engine.offload, without releasing the device record (it is copied again next time)
        park = lambda: offload_to_host(  # noqa: E731
            on_device, release=False, copy=lambda s: parked.copy(s, non_blocking=True)
        )
        src = torch.empty(state.nbytes, dtype=torch.uint8, device="cuda")
    else:
        copy, copy_name = (lambda: state.to("cpu")), "host copy (CPU clone)"
        reuse = lambda: pool.copy(state).release()  # noqa: E731
        park = lambda: parked.copy(state)  # noqa: E731
        src = torch.empty(state.nbytes, dtype=torch.uint8)
    dst = torch.empty_like(src).fill_(0)
    src.fill_(1)

    def memcpy() -> None:
        dst.copy_(src)
        if src.is_cuda:
            torch.cuda.synchronize()

    zdir, ndir = root / f"zarr-{size_mib}", root / f"npy-{size_mib}"
    store = CheckpointStore(zdir)  # one store per worker; each save goes to a fresh session
    reset_zarr = lambda: store.delete("s")  # noqa: E731
    reset_npy = lambda: shutil.rmtree(ndir, ignore_errors=True)  # noqa: E731
    t = interleaved_medians(
        {
            copy_name: copy,
            "host copy (checkpoint pool)": reuse,
            "host copy (suspend pool)": park,
            "memcpy (warm)": memcpy,
            "zarr save": lambda: store.save("s", state),
            "numpy save": lambda: numpy_save(state, ndir),
        },
        repeat,
        {"zarr save": reset_zarr, "numpy save": reset_npy},
    )
    t |= interleaved_medians(
        {"zarr load (verified)": lambda: store.load("s", model="bench"), "numpy load": lambda: numpy_load(state, ndir)},
        repeat,
        {},
    )
    assert store.load("s").equal(state), "zarr round trip is not exact"
    rows += [(name, seconds, gib / seconds) for name, seconds in t.items()]
    t_zs, t_ns, t_zl, t_nl = t["zarr save"], t["numpy save"], t["zarr load (verified)"], t["numpy load"]
    shutil.rmtree(zdir, ignore_errors=True)
    reset_npy()
    print(f"\nstate {size_mib} MiB ({state.nbytes / MiB:.1f} MiB in {len(state.tensors)} tensors), median of {repeat}")
    print(f"  {'operation':<28}{'seconds':>10}{'GiB/s':>9}")
    for name, seconds, rate in rows:
        print(f"  {name:<28}{seconds:>10.3f}{rate:>9.2f}")
    print(f"  ratio zarr/numpy: save {t_zs / t_ns:.2f}x, load {t_zl / t_nl:.2f}x (below 1: zarr faster)")
    t_copy, t_mem = t[copy_name], t["memcpy (warm)"]
    t_ckpt, t_park = t["host copy (checkpoint pool)"], t["host copy (suspend pool)"]
    print(
        f"  host copy vs warm memcpy (memcpy time / copy time): fresh memory {t_mem / t_copy:.2f}x, "
        f"checkpoint pool {t_mem / t_ckpt:.2f}x, suspend pool {t_mem / t_park:.2f}x"
    )
    print(f"  suspend pool vs fresh memory: {t_copy / t_park:.2f}x faster; checkpoint pool: {t_copy / t_ckpt:.2f}x faster")
    assert parked.allocated == 1, f"the suspend pool allocated {parked.allocated} buffers: the loans did not come back"
    return rows


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print one table per state size."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mib", type=int, nargs="+", default=[64, 256, 512])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=pathlib.Path, default=None, help="where to write (default: a temp dir)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: a Dask worker runs with OMP_NUM_THREADS=1, and the engine's "
                             "copies and saves run inside it)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"bench_state: torch {torch.__version__}, {device}, {torch.get_num_threads()} threads, load average {load}")
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-state-") as tmp:
        for size in args.sizes_mib:
            bench_size(size, args.repeat, pathlib.Path(tmp))


if __name__ == "__main__":
    main()
