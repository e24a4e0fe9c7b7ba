"""Rendezvous and process-group setup of the point-to-point transport.

:class:`Rendezvous` says where the two ends of one transfer meet;
:func:`choose_backend` picks NCCL or gloo for a pair of devices; :class:`P2PGroup`
joins (and tears down) the private 2-rank ``torch.distributed`` group of one transfer
and posts tagged messages on it. The wire protocol on top is
:class:`workers.p2p.P2PEndpoint`, which holds a :class:`P2PGroup` (composition: the
group knows nothing of session states, the endpoint nothing of stores and backends).
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

from kernels.rendezvous_store import open_store
from workers.errors import TransferError

logger = logging.getLogger("workers.p2p")  # the transport's one logger, as before the split

Backend = Literal["nccl", "gloo"]
Role = Literal["send", "recv"]

#: The process-group backends this transport speaks.
BACKENDS: tuple[str, ...] = ("nccl", "gloo")
#: Seconds to wait for the peer at each stage (joining, each message) when none is given.
DEFAULT_TIMEOUT_S = 60.0
#: How often a receiver that started first checks whether the sender's store is up.
LISTEN_POLL_S = 0.001

_SENDER, _RECEIVER = 0, 1


@dataclass(frozen=True, slots=True)
class Rendezvous:
    """Where and how the two ends of one transfer meet; the runtime gives both ends the same one.

    Parameters
    ----------
    host
        An address of the *sender's* machine that the receiver can reach: the sender
        hosts the ``TCPStore`` there (it listens on that address only).
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


class P2PGroup:
    """One end of a private 2-rank process group (rank 0 sends and hosts the store).

    Join with :meth:`connect`, tear down with :meth:`close` (or use it as a context
    manager); post tagged messages with :meth:`post_send` / :meth:`post_recv` and wait
    for them with :meth:`wait`. Messages match by order: both ends post the same
    sequence.

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
        #: Seconds :meth:`connect` took to join the group.
        self.connect_s = 0.0

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

    def where(self) -> str:
        """This end, for error messages: transfer id, role, backend and address."""
        r = self.rendezvous
        return f"transfer {r.transfer_id!r} ({self.role}, {r.backend} via {r.host}:{r.port})"

    @property
    def connected(self) -> bool:
        """Whether the group is up."""
        return self._pg is not None

    def connect(self) -> "P2PGroup":
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
            self._store = open_store(  # on the sender's address only, not every interface
                r.host, int(r.port), world_size=2, is_master=sender, timeout=self._timeout, wait_for_workers=False
            )
        except (RuntimeError, OSError) as exc:
            hint = (
                "the port is probably taken: make a new Rendezvous (free_port())"
                if sender
                else f"the sender did not open {r.host}:{r.port} within {self.timeout_s:g}s; "
                "both ends must run concurrently with the same Rendezvous"
            )
            raise TransferError(f"{self.where()}: could not open the rendezvous store: {exc}; {hint}") from exc
        try:
            self._pg = self._make_group(dist.PrefixStore(f"turboserve/p2p/{r.transfer_id}", self._store))
        except (RuntimeError, OSError) as exc:
            self._store = None
            raise TransferError(
                f"{self.where()}: the peer did not join within {self.timeout_s:g}s: {exc}; "
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
                        f"{self.where()}: the sender did not open {r.host}:{r.port} within {self.timeout_s:g}s "
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
        # init_process_group also calls _set_sequence_number_for_group(), a blocking store
        # exchange that only feeds collective desync debugging: a point-to-point group skips it.
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
            logger.warning("%s: tearing down the process group failed", self.where(), exc_info=True)

    def __enter__(self) -> "P2PGroup":
        return self.connect()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close(abort=exc_type is not None)

    # ------------------------------------------------------------ messages

    def post_send(self, t: torch.Tensor) -> Any:
        """Post ``t`` (contiguous, on :attr:`device`) as the next message; returns the work handle."""
        self._tag += 1
        return self._pg.send([t], self.peer, self._tag)

    def post_recv(self, t: torch.Tensor) -> Any:
        """Post a receive of the next message into ``t``; returns the work handle."""
        self._tag += 1
        return self._pg.recv([t], self.peer, self._tag)

    def wait(self, work: Any, what: str) -> None:
        """Wait for a posted message; ``what`` names it in the :class:`TransferError` on failure."""
        try:
            work.wait(self._timeout)
        except RuntimeError as exc:
            raise TransferError(f"{self.where()}: {what} failed or timed out after {self.timeout_s:g}s: {exc}") from exc

    def require_connected(self) -> None:
        """Raise :class:`TransferError` unless :meth:`connect` succeeded."""
        if self._pg is None:
            raise TransferError(f"{self.where()}: not connected; call connect() or use the endpoint in a with block")
