"""Rendezvous stores listen on their master's address only (issue 13, isolation).

``torch.distributed.TCPStore`` alone listens on every interface; the stores of a
parallel group and of a point-to-point move are reachable only where the master's
worker is. Another loopback address of this machine (``127.0.0.2``) stands for another
interface: its port is taken while a store listens on all of them.
"""

from __future__ import annotations

import datetime
import socket

from kernels.parallel import connect_group
from kernels.rendezvous_store import open_store
from workers.p2p_group import free_port


def bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def test_a_store_master_listens_on_its_host_only_and_is_reached_there():
    port = free_port("127.0.0.1")
    timeout = datetime.timedelta(seconds=10)
    master = open_store("127.0.0.1", port, world_size=2, is_master=True, timeout=timeout, wait_for_workers=False)
    client = open_store("127.0.0.1", port, world_size=2, is_master=False, timeout=timeout, wait_for_workers=False)
    master.set("k", b"v")
    assert client.get("k") == b"v"
    assert bindable("127.0.0.2", port)
    assert not bindable("127.0.0.1", port)


def test_a_parallel_groups_store_listens_on_the_leaders_host_only():
    port = free_port("127.0.0.1")
    group = connect_group("127.0.0.1", port, rank=0, degree=1, timeout_s=10)
    assert bindable("127.0.0.2", port)
    del group
