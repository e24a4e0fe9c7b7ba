"""What a local turboserve cluster listens on (issue 13, isolation): loopback by default.

The dashboard (with the scheduler's ``/metrics``) is not reachable from other machines
unless the deployment says so on purpose (``turboserve.cluster.dashboard-address``).
"""

from __future__ import annotations

import ipaddress

import dask.config

from framework import Server


def listening_hosts(http_server) -> set[str]:
    """The addresses a tornado ``HTTPServer`` is bound to."""
    return {sock.getsockname()[0] for sock in http_server._sockets.values()}


def test_the_dashboard_listens_on_loopback_by_default():
    assert dask.config.get("turboserve.cluster.dashboard-address") == "127.0.0.1:8787"
    with Server.local(n_workers=0, model="tiny", adaptive=False) as server:
        hosts = listening_hosts(server.cluster.scheduler.http_server)
        assert hosts and all(ipaddress.ip_address(h).is_loopback for h in hosts), hosts
        assert server.dashboard_link.startswith("http://127.0.0.1:")


def test_the_dashboard_is_exposed_only_when_asked():
    with dask.config.set({"turboserve.cluster.dashboard-address": ":0"}), \
            Server.local(n_workers=0, model="tiny", adaptive=False) as server:
        assert listening_hosts(server.cluster.scheduler.http_server) & {"0.0.0.0", "::"}
