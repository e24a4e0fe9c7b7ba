"""Load: many concurrent sessions on two CPU workers stream without error (slow)."""

from __future__ import annotations

import time

import pytest

from framework import Server

pytestmark = pytest.mark.slow


@pytest.mark.timeout(170)
def test_fifty_concurrent_sessions_stream_without_error():
    with Server.local(n_workers=2, model="tiny", dashboard_address=":0") as server:
        t0 = time.monotonic()
        sessions = [server.open_session(f"prompt {i}", seed=i) for i in range(50)]
        per_worker = server.stats()["workers"]
        assert sum(per_worker.values()) == 50 and min(per_worker.values()) > 0, per_worker
        received = {s.id: [] for s in sessions}
        for _ in range(2):
            futures = [(s, s.submit()) for s in sessions]  # all requests out before any wait
            for s, fut in futures:
                received[s.id].append(fut.result(timeout=120))
        assert all([c.index for c in chunks] == [0, 1] for chunks in received.values())
        sizes = [c.batch_size for chunks in received.values() for c in chunks]
        assert max(sizes) > 1  # coalesced under load
        for s in sessions:
            s.close()
        assert server.sessions() == []
        assert time.monotonic() - t0 < 150


@pytest.mark.timeout(170)
def test_a_full_cluster_queues_new_sessions_until_a_place_frees_up(tmp_path):
    import threading

    from framework import CapacityExceeded

    settings = {"max_sessions_per_worker": 1, "on_full": "queue", "queue_timeout_s": 60}
    with Server.local(n_workers=1, model="tiny", dashboard_address=":0", settings=settings) as server:
        first = server.open_session("first", seed=0)
        opened: list = []
        waiter = threading.Thread(target=lambda: opened.append(server.open_session("second", seed=1)))
        waiter.start()
        time.sleep(1.0)
        assert not opened and waiter.is_alive()  # queued, not refused
        assert [r["status"] for r in server.sessions() if r["prompt"] == "second"] == ["pending"]
        first.close()
        waiter.join(60)
        assert opened and [c.index for c in opened[0].stream(1)] == [0]
        opened[0].close()
    with Server.local(n_workers=1, model="tiny", dashboard_address=":0",
                      settings={**settings, "queue_timeout_s": 0.5}) as server:
        server.open_session("first", seed=0)
        with pytest.raises(CapacityExceeded, match="waited 0.5 s"):
            server.open_session("second", seed=1)
