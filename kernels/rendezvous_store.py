"""A ``torch.distributed.TCPStore`` whose master listens on one address only.

``TCPStore(host, port, is_master=True)`` listens on every interface of its machine
whatever ``host`` says; the rendezvous of a point-to-point move (``workers.p2p_group``)
and of a parallel group (:func:`kernels.parallel.connect_group`) need it only where
the other ranks reach the master: its worker's own address (issue 13, isolation). The
master binds ``host:port`` itself and hands the listening socket to the store
(``master_listen_fd``), which then owns and closes it.
"""

from __future__ import annotations

import datetime
import socket
from typing import Any

import torch.distributed as dist


def listen_fd(host: str, port: int) -> int:
    """A socket listening on ``host:port`` only, detached (the caller owns its descriptor)."""
    family, kind, proto, _, addr = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(64)
    except OSError:
        sock.close()
        raise
    return sock.detach()


def open_store(host: str, port: int, world_size: int, is_master: bool, timeout: datetime.timedelta,
               **kwargs: Any) -> Any:
    """``dist.TCPStore(host, port, ...)``; the master listens on ``host`` only.

    Raises ``OSError`` when the master cannot bind ``host:port`` (e.g. the port is
    taken), ``RuntimeError`` as ``TCPStore`` does.
    """
    fd = listen_fd(host, int(port)) if is_master else None
    return dist.TCPStore(host, int(port), world_size=world_size, is_master=is_master, timeout=timeout,
                         master_listen_fd=fd, **kwargs)
