"""Migration bandwidth: point-to-point (gloo/NCCL) and host-staged Dask comms against TCP and memcpy.

Moves a session state of a given size between the two workers of a real LocalCluster
and prints, side by side for each size, the bytes/s of

(a) ``p2p``: :mod:`workers.p2p` -- a private 2-rank torch.distributed group (gloo on
    CPU; NCCL with ``--device cuda`` and two GPUs, else gloo staged through pinned host
    memory), one task on each worker running at the same time;
(b) ``dask``: the host-staged path -- a task on the target worker that depends on the
    state held by the source worker, so Dask moves it with worker-to-worker comms
    (``gather_dep``): ``dask-frames`` moves a :class:`workers.transfer.WireState` (one
    out-of-band frame per tensor; what the runtime sends), ``dask-obj`` the
    ``SessionState`` object pickled whole (what the runtime sent before);
(c) ``tcp``: the baseline -- a plain TCP socket between the same two worker processes:
    the sender ``sendall``s every tensor's bytes, the receiver ``recv_into``s one fresh
    buffer of the total size and answers with one byte; ``tcp-warm`` the same into a
    buffer lent by the worker's receive pool, as p2p's receiver does (after the warm-up
    round its pages are mapped: the wire alone);
(d) ``copy``: the memcpy limit, one ``Tensor.copy_`` of the same bytes in one process
    (host memcpy; device-to-device with ``--device cuda``).

Every path is timed the same way, from the client: submit the moving task(s), wait for
the result. That includes a task round trip (a few ms), which is what a migration pays.
``p2p`` and ``tcp`` also report the data phase alone (``-data``: from connected to the
last byte acknowledged), compared with each other in the ``x tcp`` and ``x warm`` columns. The paths
alternate within every repeat, so load from other processes hits them alike.

Run::

    python -m experiments.bench_migration                 # 64 and 256 MiB, CPU, gloo
    python -m experiments.bench_migration --device cuda   # NCCL (2 GPUs) / pinned staging
"""

from __future__ import annotations

import argparse
import math
import socket
import statistics
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

import dask
import torch
from distributed import Client, LocalCluster, wait

from framework.worker_env import ServingNanny
from kernels.state import SessionState
from workers.host_buffers import receive_pool
from workers.p2p import P2PEndpoint, TransferStats, send_state
from workers.p2p_group import Rendezvous, choose_backend, free_port
from workers.transfer import WireState

MiB = 1 << 20


# ------------------------------------------------------------------ work run on the workers


def make_state(nbytes: int, device: str = "cpu", layers: int = 30) -> SessionState:
    """A session-shaped state of about ``nbytes``: a bf16 KV cache of ``layers`` layers, a
    float32 prompt embedding (1/16 of the bytes), a uint8 RNG state."""
    rng = torch.zeros(5056, dtype=torch.uint8)
    embed_elems = nbytes // 16 // 4 // 64 * 64
    kv_elems = (nbytes - rng.numel() - embed_elems * 4) // 2 // (2 * layers) // 16 * 16
    tensors = {"prompt_embeds": torch.rand(embed_elems, dtype=torch.float32).reshape(-1, 64)}
    for layer in range(layers):
        for kind in ("k", "v"):
            tensors[f"kv.{layer}.{kind}"] = torch.rand(kv_elems, dtype=torch.float32).bfloat16().reshape(-1, 16)
    tensors["rng"] = rng
    state = SessionState("bench", "bench", 0, 64, 64, 1, tensors)
    return state.to(device) if device != "cpu" else state


def p2p_send(state: SessionState, rdv: Rendezvous, timeout: float) -> TransferStats:
    """Sender task: run on the source worker."""
    return send_state(state, rendezvous=rdv, timeout=timeout)


def p2p_recv(rdv: Rendezvous, device: str, timeout: float) -> TransferStats:
    """Receiver task: run on the target worker; keeps only the stats."""
    with P2PEndpoint(rdv, role="recv", device=device if rdv.backend == "nccl" else None, timeout=timeout) as ep:
        state = ep.recv(device)
        assert state.nbytes == ep.last_stats.nbytes
        return ep.last_stats


def tcp_send(state: SessionState, host: str, port: int, timeout: float) -> float:
    """Baseline sender: a plain TCP socket; listens, sends every tensor's bytes, waits for a 1-byte ack.

    CUDA tensors are copied to the host first (inside the timed data phase).
    """
    with socket.create_server((host, port)) as server:
        server.settimeout(timeout)
        conn, _ = server.accept()
        with conn:
            t0 = time.perf_counter()
            conn.sendall(struct.pack("!Q", state.nbytes))
            for t in state.tensors.values():
                conn.sendall(memoryview(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy()))
            conn.recv(1)
            return time.perf_counter() - t0


def tcp_recv(host: str, port: int, timeout: float, warm: bool = False) -> float:
    """Baseline receiver: connects, receives with ``recv_into``; the data phase's seconds.

    Into one fresh buffer of the total size (``tcp``: what a migrated state needs), or
    with ``warm`` into a buffer lent by the worker's :func:`workers.host_buffers.receive_pool`,
    the pool p2p receives into (``tcp-warm``: after the warm-up round, pages already mapped).
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.001)
    with sock:
        t0 = time.perf_counter()
        head = b""
        while len(head) < 8:
            head += sock.recv(8 - len(head))
        (n,) = struct.unpack("!Q", head)
        buf = receive_pool().lend(n) if warm else torch.empty(n, dtype=torch.uint8)
        view, got = memoryview(buf.numpy()), 0
        while got < n:
            got += sock.recv_into(view[got:])
        sock.sendall(b"\x01")
        return time.perf_counter() - t0


def new_rendezvous(backend: str, host: str) -> Rendezvous:
    """Made on the source worker, so the port is free there."""
    return Rendezvous.new(backend, host=host)


def stage_to_host(state: SessionState) -> SessionState:
    """Source side of host staging: to (pinned) host memory."""
    return state.to("cpu", pin_memory=True) if state.device.type == "cuda" else state


def framed(state: SessionState) -> WireState:
    """Source side of the runtime's host-staged path: the host state as raw frames."""
    return WireState.of(stage_to_host(state))


def arrive(payload: SessionState | WireState, device: str) -> int:
    """Target side of host staging: rebuild and move onto ``device``; returns the bytes."""
    state = payload.to_state() if isinstance(payload, WireState) else payload
    if device != "cpu":
        state = state.to(device)
        torch.cuda.synchronize(device)
    return state.nbytes


# ------------------------------------------------------------------ measurements


@dataclass(frozen=True, slots=True)
class Row:
    """One measured path at one size: median seconds over the repeats."""

    path: str
    nbytes: int
    seconds: float
    note: str = ""

    @property
    def gbps(self) -> float:
        """Gigabytes (1e9) per second."""
        return self.nbytes / self.seconds / 1e9


def time_raw_copy(nbytes: int, device: str, repeats: int) -> float:
    """Median seconds of one ``copy_`` of ``nbytes`` (warmed up)."""
    src = torch.randint(0, 255, (nbytes,), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    times = []
    for _ in range(repeats + 1):
        if device != "cpu":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        if device != "cpu":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_size(client: Client, a: str, b: str, nbytes: int, device: str, repeats: int, timeout: float) -> list[Row]:
    """All paths at one size; each repeat moves a freshly made state."""
    dev_a, dev_b = (("cuda:0", "cuda:1" if torch.cuda.device_count() > 1 else "cuda:0") if device == "cuda" else ("cpu", "cpu"))
    backend = choose_backend(dev_a, dev_b) or "gloo"
    if backend == "nccl" and dev_a == dev_b:
        backend = "gloo"  # NCCL refuses two ranks on one GPU
    host = a.split("://")[1].rsplit(":", 1)[0]
    p2p, p2p_data, obj, frm, tcp, tcp_data, tcp_warm, warm_data = [], [], [], [], [], [], [], []
    actual = 0
    for i in range(repeats + 1):  # the first round warms up every path
        state = client.submit(make_state, nbytes, dev_a, workers=[a], pure=False)
        wait(state)
        actual = client.submit(lambda s: s.nbytes, state, workers=[a], pure=False).result()

        rdv = client.submit(new_rendezvous, backend, host, workers=[a], pure=False).result()

        def run_p2p() -> None:
            t0 = time.perf_counter()
            recv = client.submit(p2p_recv, rdv, dev_b, timeout, workers=[b], pure=False)
            sent = client.submit(p2p_send, state, rdv, timeout, workers=[a], pure=False)
            sent.result()
            p2p_data.append(recv.result().transfer_s)
            p2p.append(time.perf_counter() - t0)

        def run_tcp(warm: bool) -> None:
            port = client.submit(free_port, host, workers=[a], pure=False).result()
            t0 = time.perf_counter()
            recv = client.submit(tcp_recv, host, port, timeout, warm, workers=[b], pure=False)
            sent = client.submit(tcp_send, state, host, port, timeout, workers=[a], pure=False)
            sent.result()
            (warm_data if warm else tcp_data).append(recv.result())
            (tcp_warm if warm else tcp).append(time.perf_counter() - t0)

        runs = [run_p2p, lambda: run_tcp(False), lambda: run_tcp(True)]
        for run in runs[i % 3 :] + runs[: i % 3]:  # rotate who goes first
            run()

        obj.append(timed(lambda: client.submit(
            arrive, client.submit(stage_to_host, state, workers=[a], pure=False), dev_b, workers=[b], pure=False
        ).result()))
        frm.append(timed(lambda: client.submit(
            arrive, client.submit(framed, state, workers=[a], pure=False), dev_b, workers=[b], pure=False
        ).result()))
        del state
    med = lambda xs: statistics.median(xs[1:])  # noqa: E731
    staged = " (staged via pinned host)" if device == "cuda" and backend == "gloo" else ""
    return [
        Row("copy", actual, time_raw_copy(actual, dev_a, repeats), "Tensor.copy_ in one process"),
        Row("tcp", actual, med(tcp), "plain TCP socket between the two workers, end to end"),
        Row("tcp-data", actual, med(tcp_data), "data phase only (connected)"),
        Row("tcp-warm", actual, med(tcp_warm), "plain TCP into a buffer lent by the receive pool p2p uses"),
        Row("tcp-warm-data", actual, med(warm_data), "data phase only (connected)"),
        Row(f"p2p-{backend}", actual, med(p2p), f"end to end{staged}"),
        Row(f"p2p-{backend}-data", actual, med(p2p_data), "data phase only (group already joined)"),
        Row("dask-obj", actual, med(obj), "task dependency, SessionState pickled"),
        Row("dask-frames", actual, med(frm), "task dependency, WireState: one out-of-band frame per tensor"),
    ]


def print_table(rows: list[Row]) -> None:
    """Side-by-side table: GB/s, the share of the memcpy limit and of the plain TCP copies.

    ``x tcp`` and ``x warm`` compare like with like: an end-to-end row against ``tcp``
    (``tcp-warm``) end to end, a data-phase row (``-data``) against ``tcp-data``
    (``tcp-warm-data``).
    """
    print(f"{'size':>8}  {'path':<18} {'ms':>9} {'GB/s':>7} {'x copy':>7} {'x tcp':>7} {'x warm':>7}  note")
    for size in sorted({r.nbytes for r in rows}):
        group = {r.path: r for r in rows if r.nbytes == size}
        for r in group.values():
            data = "-data" if r.path.endswith("-data") else ""
            tcp, warm = group["tcp" + data], group["tcp-warm" + data]
            print(
                f"{size / MiB:>6.0f}Mi  {r.path:<18} {r.seconds * 1e3:>9.1f} {r.gbps:>7.2f} "
                f"{r.gbps / group['copy'].gbps:>7.3f} {r.gbps / tcp.gbps:>7.3f} {r.gbps / warm.gbps:>7.3f}  {r.note}"
            )


def main(argv: list[str] | None = None) -> None:
    """Command line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mib", default="64,256", help="comma-separated state sizes in MiB")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per path (median), after one warm-up")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--timeout", type=float, default=120.0, help="p2p timeout per stage, seconds")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    sizes = [int(float(s) * MiB) for s in args.sizes_mib.split(",")]
    memory = f"{max(2, math.ceil(6 * max(sizes) / (1 << 30)) + 1)}GiB"
    print(
        f"torch {torch.__version__}, device {args.device}"
        + (f" ({torch.cuda.get_device_name(0)} x{torch.cuda.device_count()})" if args.device == "cuda" else "")
        + f", {args.repeats} repeats (median), LocalCluster 2 workers x 1 thread (ServingNanny)"
    )
    # The runtime's workers (ServingNanny: without the nanny's MALLOC_TRIM_THRESHOLD_);
    # no spilling, so no path is timed while the worker writes to disk.
    no_spill = {f"distributed.worker.memory.{k}": False for k in ("target", "spill", "pause")}
    with dask.config.set(no_spill), LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
        memory_limit=memory,
        worker_class=ServingNanny,
    ) as cluster, Client(cluster) as client:
        a, b = sorted(client.scheduler_info()["workers"])
        rows: list[Row] = []
        for nbytes in sizes:
            rows += bench_size(client, a, b, nbytes, args.device, args.repeats, args.timeout)
        print_table(rows)


if __name__ == "__main__":
    main()
