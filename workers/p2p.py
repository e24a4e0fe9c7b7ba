"""Point-to-point transport of a session's state between two processes (NCCL or gloo).

A migration moves a :class:`~kernels.state.SessionState` from the worker that holds it
(the *sender*) to the worker that will serve it next (the *receiver*). This module is the
direct path: both ends join a private 2-rank ``torch.distributed`` process group made
for this one transfer, and the bytes go peer to peer, device to device with NCCL when
both ends hold CUDA tensors, through host memory with gloo otherwise. The runtime hands
both ends the same small :class:`Rendezvous` (e.g. through the scheduler) and runs
:func:`send_state` on one and :func:`recv_state` on the other *concurrently*.

Why a private group per transfer: workers come and go (autoscaling), and a world-sized
group would have to be rebuilt on every scale event, with every worker taking part.
The group is built directly from a ``TCPStore`` (``ProcessGroupGloo(store, rank, 2)``,
``ProcessGroupNCCL(store, rank, 2, opts)``), so the process's default group, if any, is
never created, read or changed, and two transfers never share state. Group creation is
collective and blocks until the peer joins: call these functions from a task or thread
of their own, never from a worker's shared event loop or actor thread.

Wire protocol (rank 0 is the sender and hosts the store at ``host:port``)::

    sender -> receiver   header  int64[6]  (magic, protocol version, meta bytes, payload bytes,
                                           direct-min bytes, max message bytes)
    sender -> receiver   meta    uint8[]   JSON {"transfer_id": ..., "state": state.meta()}
    sender -> receiver   payload raw bytes of one buffer per dtype (workers.transfer), cut
                                 into messages by plan_segments: a large tensor goes from
                                 its own memory, runs of small ones are coalesced
    receiver -> sender   ack     int64[2]  (magic, payload bytes received)

The receiver lands every message in its slice of one contiguous buffer per dtype, and
the tensors it returns are views into those buffers. The segmentation parameters ride
in the header, so only the sender's settings matter.

The sender returns only after the ack, so the source may drop its copy when
:func:`send_state` returns.

Examples
--------
>>> rdv = Rendezvous.new("gloo")                       # on the sender's host
>>> # worker A: stats = send_state(state, rendezvous=rdv, timeout=30)
>>> # worker B: state = recv_state(rendezvous=rdv, device="cpu", timeout=30)
"""

from __future__ import annotations

import datetime
import logging
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist

from kernels.state import SessionState
from workers.transfer import (
    BufferPlan,
    PackError,
    as_bytes,
    decode_meta,
    empty_buffers,
    encode_meta,
    plan_buffers,
    plan_segments,
    segment_bytes,
    unpack,
)

__all__ = [
    "BACKENDS",
    "DEFAULT_TIMEOUT_S",
    "DIRECT_MIN_BYTES",
    "MAX_MESSAGE_BYTES",
    "P2PEndpoint",
    "Rendezvous",
    "TransferError",
    "TransferStats",
    "choose_backend",
    "device_key",
    "free_port",
    "recv_state",
    "send_state",
]

logger = logging.getLogger(__name__)

Backend = Literal["nccl", "gloo"]
Role = Literal["send", "recv"]

#: The process-group backends this transport speaks.
BACKENDS: tuple[str, ...] = ("nccl", "gloo")
#: Seconds to wait for the peer at each stage (joining, each message) when none is given.
DEFAULT_TIMEOUT_S = 60.0
#: Largest single send/recv; bigger tensors go as several messages.
MAX_MESSAGE_BYTES = 1 << 30
#: Tensors at least this large are sent straight from their memory; smaller ones are
#: coalesced into one staged message per run (see workers.transfer.plan_segments).
DIRECT_MIN_BYTES = 256 << 10
#: How often a receiver that started first checks whether the sender's store is up.
LISTEN_POLL_S = 0.01
#: First word of the header and the ack, so a stray peer is detected.
PROTOCOL_MAGIC = 0x74627032  # "tbp2"
PROTOCOL_VERSION = 1
_HEADER_WORDS = 6

_SENDER, _RECEIVER = 0, 1


class TransferError(RuntimeError):
    """A point-to-point transfer failed: the peer never joined, timed out, or spoke nonsense."""


@dataclass(frozen=True, slots=True)
class Rendezvous:
    """Where and how the two ends of one transfer meet; the runtime gives both ends the same one.

    Parameters
    ----------
    host
        An address of the *sender's* machine that the receiver can reach: the sender
        hosts the ``TCPStore`` there (it listens on all interfaces).
    port
        A free TCP port on that machine (see :func:`free_port`).
    backend
        ``"nccl"`` (both ends CUDA) or ``"gloo"`` (any devices, staged through host memory).
    transfer_id
        Unique per transfer; it prefixes every store key and is checked by the receiver.
    """

    host: str
    port: int
    backend: str
    transfer_id: str

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown p2p backend {self.backend!r}; known: {sorted(BACKENDS)}")
        if not 0 < int(self.port) < 65536:
            raise ValueError(f"rendezvous port {self.port!r} is not a TCP port (1..65535); use free_port()")
        if not self.host:
            raise ValueError("rendezvous host is empty; give an address of the sender's machine")
        if not self.transfer_id:
            raise ValueError("rendezvous transfer_id is empty; give a unique id per transfer")

    @classmethod
    def new(cls, backend: str = "gloo", *, host: str = "127.0.0.1", transfer_id: str | None = None) -> "Rendezvous":
        """A rendezvous on a free port of ``host`` (call it on the sender's machine)."""
        return cls(host=host, port=free_port(host), backend=backend, transfer_id=transfer_id or uuid.uuid4().hex)


@dataclass(frozen=True, slots=True)
class TransferStats:
    """What one send or receive moved and how long it took (for metrics: bytes moved).

    ``staged_bytes``: bytes copied into staging memory on this end (the sender stages
    runs of small tensors, and CUDA tensors for gloo; the receiver only for gloo into a
    CUDA target). ``connect_s``: joining the group; ``transfer_s``: the data phase.
    """

    transfer_id: str
    role: str
    backend: str
    nbytes: int
    n_tensors: int
    n_messages: int
    staged_bytes: int
    connect_s: float
    transfer_s: float

    @property
    def bytes_per_s(self) -> float:
        """Payload bytes per second of the data phase (excluding joining the group)."""
        return self.nbytes / self.transfer_s if self.transfer_s > 0 else float("inf")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago (another process may take it: retry on failure)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def device_key(device: str | torch.device) -> str:
    """Identity of the physical device behind ``device`` in this process.

    The host name, the device type and, for CUDA, the GPU's UUID (so two processes that
    number the same GPU differently through ``CUDA_VISIBLE_DEVICES`` agree). Workers
    report it; equal keys at both ends mean ``same_physical_device`` in
    :func:`choose_backend`.
    """
    d = torch.device(device)
    host = socket.gethostname()
    if d.type != "cuda":
        return f"{host}/{d.type}"
    index = d.index if d.index is not None else torch.cuda.current_device()
    uuid_ = getattr(torch.cuda.get_device_properties(index), "uuid", None)
    return f"{host}/cuda/{uuid_ if uuid_ is not None else index}"


def choose_backend(
    src_device: str | torch.device,
    dst_device: str | torch.device,
    *,
    nccl_available: bool | None = None,
    same_physical_device: bool = False,
) -> Backend | None:
    """The point-to-point backend for a transfer between these devices, or ``None``.

    ``"nccl"`` when both ends are CUDA devices and NCCL is available; ``"gloo"`` for any
    other mix of CPU and CUDA (CUDA ends stage through pinned host memory); ``None`` when
    ``torch.distributed`` cannot do it (other device types, no gloo): use the
    host-staged path over Dask comms then.

    Parameters
    ----------
    nccl_available
        Whether the *workers* have NCCL; ``None`` asks the local torch, which is wrong
        when this runs on a CPU-only scheduler for GPU workers.
    same_physical_device
        Both ends are processes on one GPU (equal :func:`device_key`): NCCL refuses two
        ranks on one GPU ("duplicate GPU"), so this picks gloo.
    """
    src, dst = torch.device(src_device), torch.device(dst_device)
    if not dist.is_available():
        return None
    if nccl_available is None:
        nccl_available = dist.is_nccl_available()
    if src.type == dst.type == "cuda" and nccl_available and not same_physical_device:
        return "nccl"
    if {src.type, dst.type} <= {"cpu", "cuda"} and dist.is_gloo_available():
        return "gloo"
    return None


class P2PEndpoint:
    """One end of a private 2-rank process group; sends or receives whole session states.

    Parameters
    ----------
    rendezvous
        The same :class:`Rendezvous` on both ends.
    role
        ``"send"`` (rank 0, hosts the store) or ``"recv"`` (rank 1).
    device
        The CUDA device this end uses with NCCL (default: the current one); ignored by gloo.
    timeout
        Seconds to wait for the peer at each stage; ``None``: :data:`DEFAULT_TIMEOUT_S`.

    Several states may go over one endpoint, one after the other, in the same order on
    both ends. Not thread-safe. Use as a context manager so the group is always torn down.

    Examples
    --------
    >>> with P2PEndpoint(rdv, role="send", timeout=30) as ep:   # doctest: +SKIP
    ...     ep.send(state_a)
    ...     ep.send(state_b)
    """

    def __init__(
        self,
        rendezvous: Rendezvous,
        *,
        role: Role,
        device: str | torch.device | None = None,
        timeout: float | None = None,
    ) -> None:
        if role not in ("send", "recv"):
            raise ValueError(f"unknown p2p role {role!r}; known: ['recv', 'send']")
        timeout = DEFAULT_TIMEOUT_S if timeout is None else float(timeout)
        if timeout <= 0:
            raise ValueError(f"p2p timeout must be positive seconds, got {timeout!r}")
        self.rendezvous = rendezvous
        self.role: Role = role
        self.rank = _SENDER if role == "send" else _RECEIVER
        self.peer = 1 - self.rank
        self.timeout_s = timeout
        self._timeout = datetime.timedelta(seconds=timeout)
        self.device = self._pick_device(device)
        self._store: Any = None
        self._pg: Any = None
        self._tag = 0
        self.connect_s = 0.0
        #: Stats of the last :meth:`send` or :meth:`recv`.
        self.last_stats: TransferStats | None = None

    # ------------------------------------------------------------ lifecycle

    def _pick_device(self, device: str | torch.device | None) -> torch.device:
        if self.rendezvous.backend != "nccl":
            return torch.device("cpu")
        if not torch.cuda.is_available():
            raise TransferError(
                f"transfer {self.rendezvous.transfer_id!r}: backend 'nccl' needs a CUDA device and none is "
                "available here; use choose_backend() to pick 'gloo'"
            )
        device = torch.device("cuda", torch.cuda.current_device()) if device is None else torch.device(device)
        if device.type != "cuda":
            raise TransferError(f"backend 'nccl' needs a CUDA device, got {str(device)!r}")
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        return device

    def _where(self) -> str:
        r = self.rendezvous
        return f"transfer {r.transfer_id!r} ({self.role}, {r.backend} via {r.host}:{r.port})"

    @property
    def connected(self) -> bool:
        """Whether the group is up."""
        return self._pg is not None

    def connect(self) -> "P2PEndpoint":
        """Join the 2-rank group; blocks until the peer joins or the timeout passes.

        Raises
        ------
        TransferError
            If the peer does not join within the timeout, or the store cannot be opened
            (e.g. the port is taken: pick another with :func:`free_port`).
        """
        if self._pg is not None:
            return self
        r = self.rendezvous
        t0 = time.perf_counter()
        sender = self.rank == _SENDER
        if not sender:
            self._wait_for_listener(time.monotonic() + self.timeout_s)
        try:
            self._store = dist.TCPStore(
                r.host, int(r.port), world_size=2, is_master=sender, timeout=self._timeout, wait_for_workers=False
            )
        except (RuntimeError, OSError) as exc:
            hint = (
                "the port is probably taken: make a new Rendezvous (free_port())"
                if sender
                else f"the sender did not open {r.host}:{r.port} within {self.timeout_s:g}s; "
                "both ends must run concurrently with the same Rendezvous"
            )
            raise TransferError(f"{self._where()}: could not open the rendezvous store: {exc}; {hint}") from exc
        try:
            self._pg = self._make_group(dist.PrefixStore(f"turboserve/p2p/{r.transfer_id}", self._store))
        except (RuntimeError, OSError) as exc:
            self._store = None
            raise TransferError(
                f"{self._where()}: the peer did not join within {self.timeout_s:g}s: {exc}; "
                "both ends must run concurrently with the same Rendezvous"
            ) from exc
        self.connect_s = time.perf_counter() - t0
        return self

    def _wait_for_listener(self, deadline: float) -> None:
        # TCPStore's client backs off up to ~1 s after a refused connect; when the
        # receiver starts first that back-off dominated small transfers, so probe here.
        r = self.rendezvous
        while True:
            try:
                with socket.create_connection((r.host, int(r.port)), timeout=max(0.05, deadline - time.monotonic())):
                    return
            except OSError as exc:
                if time.monotonic() >= deadline:
                    raise TransferError(
                        f"{self._where()}: the sender did not open {r.host}:{r.port} within {self.timeout_s:g}s "
                        f"({exc}); both ends must run concurrently with the same Rendezvous"
                    ) from exc
                time.sleep(LISTEN_POLL_S)

    def _make_group(self, store: Any) -> Any:
        # The backend object alone, as torch's init_process_group builds it, but never
        # registered as a (default) group: it lives and dies with this endpoint.
        if self.rendezvous.backend == "gloo":
            backend = dist.ProcessGroupGloo(store, self.rank, 2, self._timeout)
        else:
            from torch.distributed import ProcessGroupNCCL  # only present in CUDA builds

            opts = ProcessGroupNCCL.Options()
            opts._timeout = self._timeout
            opts.is_high_priority_stream = False
            backend = ProcessGroupNCCL(store, self.rank, 2, opts)
        backend._set_sequence_number_for_group()  # as init_process_group does (a store exchange)
        return backend

    def close(self, *, abort: bool = False) -> None:
        """Tear the group and the store down (idempotent); ``abort`` after an error."""
        pg, self._pg = self._pg, None
        self._store = None
        if pg is None:
            return
        try:
            pg.abort() if abort else pg.shutdown()
        except RuntimeError:
            logger.warning("%s: tearing down the process group failed", self._where(), exc_info=True)

    def __enter__(self) -> "P2PEndpoint":
        return self.connect()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close(abort=exc_type is not None)

    # ------------------------------------------------------------ messages

    def _send(self, t: torch.Tensor) -> Any:
        self._tag += 1
        return self._pg.send([t], self.peer, self._tag)

    def _recv(self, t: torch.Tensor) -> Any:
        self._tag += 1
        return self._pg.recv([t], self.peer, self._tag)

    def _wait(self, work: Any, what: str) -> None:
        try:
            work.wait(self._timeout)
        except RuntimeError as exc:
            raise TransferError(f"{self._where()}: {what} failed or timed out after {self.timeout_s:g}s: {exc}") from exc

    def _require_connected(self) -> None:
        if self._pg is None:
            raise TransferError(f"{self._where()}: not connected; call connect() or use the endpoint in a with block")

    # ------------------------------------------------------------ public transfer

    def send(self, state: SessionState) -> TransferStats:
        """Send ``state`` to the peer; returns once the peer acknowledged every byte.

        Raises
        ------
        TransferError
            On a timeout, a broken connection or a wrong acknowledgement.
        """
        self._require_connected()
        t0 = time.perf_counter()
        state_meta = state.meta()
        plan = plan_buffers(state_meta["tensors"])
        # gloo moves host memory: CUDA tensors are staged through pinned buffers.
        pin = self.device.type == "cpu" and any(t.is_cuda for t in state.tensors.values())
        direct_min, max_bytes = DIRECT_MIN_BYTES, MAX_MESSAGE_BYTES
        segments = plan_segments(plan, direct_min_bytes=direct_min, max_bytes=max_bytes)
        meta = encode_meta({"transfer_id": self.rendezvous.transfer_id, "state": state_meta})
        header = torch.tensor(
            [PROTOCOL_MAGIC, PROTOCOL_VERSION, meta.numel(), plan.nbytes, direct_min, max_bytes], dtype=torch.int64
        )
        ack = torch.zeros(2, dtype=torch.int64, device=self.device)
        staged = 0
        with _on_device(self.device):
            inflight = [(self._send(m), m) for m in (header.to(self.device), meta.to(self.device))]
            for seg in segments:  # each message is posted as soon as it is ready
                data, copied = segment_bytes(seg, plan, state.tensors, device=self.device, pin_memory=pin)
                staged += copied
                inflight.append((self._send(data), data))
            ack_work = self._recv(ack)
            for i, (work, _) in enumerate(inflight):
                self._wait(work, f"send of message {i + 1}/{len(inflight)}")
            self._wait(ack_work, "waiting for the receiver's acknowledgement")
        got = ack.cpu().tolist()
        if got != [PROTOCOL_MAGIC, plan.nbytes]:
            raise TransferError(f"{self._where()}: receiver acknowledged {got}, expected [{PROTOCOL_MAGIC}, {plan.nbytes}]")
        self.last_stats = TransferStats(
            transfer_id=self.rendezvous.transfer_id,
            role="send",
            backend=self.rendezvous.backend,
            nbytes=plan.nbytes,
            n_tensors=len(state.tensors),
            n_messages=len(inflight),
            staged_bytes=staged,
            connect_s=self.connect_s,
            transfer_s=time.perf_counter() - t0,
        )
        return self.last_stats

    def recv(self, device: str | torch.device | None = None) -> SessionState:
        """Receive one state from the peer, with its tensors on ``device``.

        Parameters
        ----------
        device
            Target device of the tensors; ``None``: the endpoint's device (cpu for gloo).
            With gloo and a CUDA target the bytes land in pinned host buffers first.

        Raises
        ------
        TransferError
            On a timeout, a broken connection, or a peer speaking another protocol.
        """
        self._require_connected()
        target = self.device if device is None else torch.device(device)
        t0 = time.perf_counter()
        with _on_device(self.device):
            header = torch.zeros(_HEADER_WORDS, dtype=torch.int64, device=self.device)
            self._wait(self._recv(header), "receiving the header")
            magic, version, meta_len, total, direct_min, max_bytes = header.cpu().tolist()
            if magic != PROTOCOL_MAGIC or version != PROTOCOL_VERSION:
                raise TransferError(
                    f"{self._where()}: header {[magic, version]} is not turboserve p2p protocol "
                    f"[{PROTOCOL_MAGIC}, {PROTOCOL_VERSION}]; both ends must run the same turboserve version"
                )
            meta_t = torch.empty(meta_len, dtype=torch.uint8, device=self.device)
            self._wait(self._recv(meta_t), "receiving the meta")
            meta, plan = self._check_meta(meta_t, total)
            stage_pinned = self.device.type == "cpu" and target.type == "cuda"
            buffers = empty_buffers(plan, device=self.device, pin_memory=stage_pinned)
            try:
                segments = plan_segments(plan, direct_min_bytes=direct_min, max_bytes=max_bytes)
            except PackError as exc:
                raise TransferError(f"{self._where()}: bad message sizes in the header: {exc}") from exc
            works = [self._recv(as_bytes(buffers[g.buffer])[g.start : g.stop]) for g in segments]
            for i, w in enumerate(works):
                self._wait(w, f"receiving payload message {i + 1}/{len(works)}")
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            ack = torch.tensor([PROTOCOL_MAGIC, plan.nbytes], dtype=torch.int64, device=self.device)
            self._wait(self._send(ack), "sending the acknowledgement")
        if target != self.device:
            buffers = [b.to(target, non_blocking=stage_pinned) for b in buffers]
            if target.type == "cuda":
                torch.cuda.synchronize(target)
        tensors = unpack(buffers, plan)
        state = SessionState.from_meta(meta, {name: tensors[name] for name in meta["tensors"]})
        self.last_stats = TransferStats(
            transfer_id=self.rendezvous.transfer_id,
            role="recv",
            backend=self.rendezvous.backend,
            nbytes=plan.nbytes,
            n_tensors=len(tensors),
            n_messages=2 + len(works),
            staged_bytes=plan.nbytes if stage_pinned else 0,
            connect_s=self.connect_s,
            transfer_s=time.perf_counter() - t0,
        )
        return state

    def _check_meta(self, meta_t: torch.Tensor, total: int) -> tuple[dict[str, Any], BufferPlan]:
        try:
            payload = decode_meta(meta_t)
            meta = payload["state"]
            plan = plan_buffers(meta["tensors"])
        except (PackError, KeyError, TypeError) as exc:
            raise TransferError(f"{self._where()}: the sender's meta is malformed: {exc}") from exc
        if payload.get("transfer_id") != self.rendezvous.transfer_id:
            raise TransferError(
                f"{self._where()}: the sender is on transfer {payload.get('transfer_id')!r}; "
                "both ends must get the same Rendezvous"
            )
        if plan.nbytes != total:
            raise TransferError(f"{self._where()}: header announces {total} bytes, the meta describes {plan.nbytes}")
        return meta, plan


class _on_device:
    """``torch.cuda.device(d)`` for a CUDA device, nothing otherwise."""

    def __init__(self, device: torch.device) -> None:
        self._ctx = torch.cuda.device(device) if device.type == "cuda" else None

    def __enter__(self) -> None:
        if self._ctx is not None:
            self._ctx.__enter__()

    def __exit__(self, *exc: Any) -> None:
        if self._ctx is not None:
            self._ctx.__exit__(*exc)


def send_state(state: SessionState, *, rendezvous: Rendezvous, timeout: float | None = None) -> TransferStats:
    """Send ``state`` to the process running :func:`recv_state` with the same ``rendezvous``.

    Joins a private 2-rank group (this end hosts the store on ``rendezvous.port``), sends,
    waits for the acknowledgement, and tears the group down, also on error.

    Parameters
    ----------
    state
        The session state; with ``backend="nccl"`` its tensors must be on one CUDA device.
    rendezvous
        Shared with the receiver.
    timeout
        Seconds to wait for the peer at each stage; ``None``: :data:`DEFAULT_TIMEOUT_S`.

    Raises
    ------
    TransferError
        If the receiver does not join in time or the transfer breaks.
    """
    device = state.device if rendezvous.backend == "nccl" else None
    with P2PEndpoint(rendezvous, role="send", device=device, timeout=timeout) as ep:
        return ep.send(state)


def recv_state(
    *,
    rendezvous: Rendezvous,
    device: str | torch.device = "cpu",
    timeout: float | None = None,
) -> SessionState:
    """Receive the state sent by :func:`send_state` with the same ``rendezvous``, onto ``device``.

    Raises
    ------
    TransferError
        If the sender does not join in time, or the transfer breaks or is malformed.
    """
    device = torch.device(device)
    ep_device = device if rendezvous.backend == "nccl" else None
    with P2PEndpoint(rendezvous, role="recv", device=ep_device, timeout=timeout) as ep:
        return ep.recv(device)
