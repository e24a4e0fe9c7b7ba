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

    sender -> receiver   head    uint8[HEAD_BYTES]  int64[6] (magic, protocol version, meta bytes,
                                           payload bytes, direct-min bytes, max message bytes),
                                           then the meta JSON {"transfer_id": ..., "state": state.meta()}
    sender -> receiver   meta    uint8[]   only the part of the meta that did not fit in the head
    sender -> receiver   payload raw bytes of one buffer per dtype (workers.transfer), cut
                                 into messages by plan_segments: a large tensor goes from
                                 its own memory, runs of small ones are coalesced
    receiver -> sender   ack     int64[2]  (magic, payload bytes received)

The head has a fixed size, so the receiver posts its receive as soon as the group is up
and learns the layout of the payload in one message (one round trip instead of two).

The receiver lands every message in its slice of one contiguous buffer per dtype, and
the tensors it returns are views into those buffers. For a host target the buffers are
lent by the process's :func:`workers.host_buffers.receive_pool`: they go back to it when
the state's tensors are gone, so the next transfer lands in pages already mapped. The segmentation parameters ride
in the header, so only the sender's settings matter.

The sender returns only after the ack, so the source may drop its copy when
:func:`send_state` returns.

The rendezvous, the backend choice and the group setup live in
:mod:`workers.p2p_group` (import them from there); this module is the protocol, and
:class:`P2PEndpoint` holds a :class:`~workers.p2p_group.P2PGroup` rather than being one.

Examples
--------
>>> from workers.p2p_group import Rendezvous
>>> rdv = Rendezvous.new("gloo")                       # on the sender's host
>>> # worker A: stats = send_state(state, rendezvous=rdv, timeout=30)
>>> # worker B: state = recv_state(rendezvous=rdv, device="cpu", timeout=30)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from kernels.state import SessionState
from workers.errors import TransferError
from workers.host_buffers import receive_pool
from workers.p2p_group import P2PGroup, Rendezvous
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
    "DIRECT_MIN_BYTES",
    "MAX_MESSAGE_BYTES",
    "P2PEndpoint",
    "TransferStats",
    "recv_state",
    "send_state",
]

#: Largest single send/recv; bigger tensors go as several messages.
MAX_MESSAGE_BYTES = 1 << 30
#: Tensors at least this large are sent straight from their memory; smaller ones are
#: coalesced into one staged message per run (see workers.transfer.plan_segments).
DIRECT_MIN_BYTES = 256 << 10
#: First word of the header and the ack, so a stray peer is detected.
PROTOCOL_MAGIC = 0x74627032  # "tbp2"
PROTOCOL_VERSION = 2
#: Size of the first message: the header words and, when it fits, the whole meta.
HEAD_BYTES = 64 << 10
_HEADER_WORDS = 6
_INLINE_META = HEAD_BYTES - 8 * _HEADER_WORDS


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
        role: str,
        device: str | torch.device | None = None,
        timeout: float | None = None,
    ) -> None:
        self.group = P2PGroup(rendezvous, role=role, device=device, timeout=timeout)  # type: ignore[arg-type]
        #: Stats of the last :meth:`send` or :meth:`recv`.
        self.last_stats: TransferStats | None = None

    @property
    def rendezvous(self) -> Rendezvous:
        """Where the two ends meet."""
        return self.group.rendezvous

    @property
    def device(self) -> torch.device:
        """The device messages live on (the CUDA device with NCCL, else cpu)."""
        return self.group.device

    def connect(self) -> "P2PEndpoint":
        """Join the group (see :meth:`workers.p2p_group.P2PGroup.connect`)."""
        self.group.connect()
        return self

    def close(self, *, abort: bool = False) -> None:
        """Tear the group down (idempotent); ``abort`` after an error."""
        self.group.close(abort=abort)

    def __enter__(self) -> "P2PEndpoint":
        return self.connect()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close(abort=exc_type is not None)

    # ------------------------------------------------------------ public transfer

    def send(self, state: SessionState) -> TransferStats:
        """Send ``state`` to the peer; returns once the peer acknowledged every byte.

        Raises
        ------
        TransferError
            On a timeout, a broken connection or a wrong acknowledgement.
        """
        self.group.require_connected()
        t0 = time.perf_counter()
        state_meta = state.meta()
        plan = plan_buffers(state_meta["tensors"])
        # gloo moves host memory: CUDA tensors are staged through pinned buffers.
        pin = self.device.type == "cpu" and any(t.is_cuda for t in state.tensors.values())
        direct_min, max_bytes = DIRECT_MIN_BYTES, MAX_MESSAGE_BYTES
        segments = plan_segments(plan, direct_min_bytes=direct_min, max_bytes=max_bytes)
        meta = encode_meta({"transfer_id": self.rendezvous.transfer_id, "state": state_meta})
        head = torch.zeros(HEAD_BYTES, dtype=torch.uint8)
        head[: 8 * _HEADER_WORDS].view(torch.int64).copy_(
            torch.tensor([PROTOCOL_MAGIC, PROTOCOL_VERSION, meta.numel(), plan.nbytes, direct_min, max_bytes])
        )
        head[8 * _HEADER_WORDS : 8 * _HEADER_WORDS + min(meta.numel(), _INLINE_META)] = meta[:_INLINE_META]
        first = [head] if meta.numel() <= _INLINE_META else [head, meta[_INLINE_META:]]
        ack = torch.zeros(2, dtype=torch.int64, device=self.device)
        staged = 0
        with _on_device(self.device):
            inflight = [(self.group.post_send(m), m) for m in (m.to(self.device) for m in first)]
            for seg in segments:  # each message is posted as soon as it is ready
                data, copied = segment_bytes(seg, plan, state.tensors, device=self.device, pin_memory=pin)
                staged += copied
                inflight.append((self.group.post_send(data), data))
            ack_work = self.group.post_recv(ack)
            for i, (work, _) in enumerate(inflight):
                self.group.wait(work, f"send of message {i + 1}/{len(inflight)}")
            self.group.wait(ack_work, "waiting for the receiver's acknowledgement")
        got = ack.cpu().tolist()
        if got != [PROTOCOL_MAGIC, plan.nbytes]:
            raise TransferError(
                f"{self.group.where()}: receiver acknowledged {got}, expected [{PROTOCOL_MAGIC}, {plan.nbytes}]"
            )
        self.last_stats = TransferStats(
            transfer_id=self.rendezvous.transfer_id,
            role="send",
            backend=self.rendezvous.backend,
            nbytes=plan.nbytes,
            n_tensors=len(state.tensors),
            n_messages=len(inflight),
            staged_bytes=staged,
            connect_s=self.group.connect_s,
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
        self.group.require_connected()
        target = self.device if device is None else torch.device(device)
        t0 = time.perf_counter()
        with _on_device(self.device):
            head = torch.empty(HEAD_BYTES, dtype=torch.uint8, device=self.device)
            self.group.wait(self.group.post_recv(head), "receiving the head")
            head = head.cpu()
            words = head[: 8 * _HEADER_WORDS].view(torch.int64).tolist()
            magic, version, meta_len, total, direct_min, max_bytes = words
            if magic != PROTOCOL_MAGIC or version != PROTOCOL_VERSION:
                raise TransferError(
                    f"{self.group.where()}: header {[magic, version]} is not turboserve p2p protocol "
                    f"[{PROTOCOL_MAGIC}, {PROTOCOL_VERSION}]; both ends must run the same turboserve version"
                )
            meta_t = head[8 * _HEADER_WORDS : 8 * _HEADER_WORDS + min(meta_len, _INLINE_META)]
            n_first = 1
            if meta_len > _INLINE_META:
                rest = torch.empty(meta_len - _INLINE_META, dtype=torch.uint8, device=self.device)
                self.group.wait(self.group.post_recv(rest), "receiving the rest of the meta")
                meta_t, n_first = torch.cat([meta_t, rest.cpu()]), 2
            meta, plan = self._check_meta(meta_t, total)
            stage_pinned = self.device.type == "cpu" and target.type == "cuda"
            if self.device.type == target.type == "cpu":  # the state keeps them: lent, they come back warm
                buffers = [receive_pool().lend(spec.nbytes).view(spec.torch_dtype) for spec in plan.buffers]
            else:
                buffers = empty_buffers(plan, device=self.device, pin_memory=stage_pinned)
            try:
                segments = plan_segments(plan, direct_min_bytes=direct_min, max_bytes=max_bytes)
            except PackError as exc:
                raise TransferError(f"{self.group.where()}: bad message sizes in the header: {exc}") from exc
            works = [self.group.post_recv(as_bytes(buffers[g.buffer])[g.start : g.stop]) for g in segments]
            for i, w in enumerate(works):
                self.group.wait(w, f"receiving payload message {i + 1}/{len(works)}")
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            ack = torch.tensor([PROTOCOL_MAGIC, plan.nbytes], dtype=torch.int64, device=self.device)
            self.group.wait(self.group.post_send(ack), "sending the acknowledgement")
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
            n_messages=n_first + len(works),
            staged_bytes=plan.nbytes if stage_pinned else 0,
            connect_s=self.group.connect_s,
            transfer_s=time.perf_counter() - t0,
        )
        return state

    def _check_meta(self, meta_t: torch.Tensor, total: int) -> tuple[dict[str, Any], BufferPlan]:
        try:
            payload = decode_meta(meta_t)
            meta = payload["state"]
            plan = plan_buffers(meta["tensors"])
        except (PackError, KeyError, TypeError) as exc:
            raise TransferError(f"{self.group.where()}: the sender's meta is malformed: {exc}") from exc
        if payload.get("transfer_id") != self.rendezvous.transfer_id:
            raise TransferError(
                f"{self.group.where()}: the sender is on transfer {payload.get('transfer_id')!r}; "
                "both ends must get the same Rendezvous"
            )
        if plan.nbytes != total:
            raise TransferError(f"{self.group.where()}: header announces {total} bytes, the meta describes {plan.nbytes}")
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
