"""A worker the autoscaler closes takes no session from the moment it is offered (issue 13).

Dask's ``Adaptive`` asks :meth:`SessionAdaptive.workers_to_close` for the drained
workers to close and then, in ``scale_down``, retires and closes them: a round trip and
an ``await`` later. Before the workers offered were claimed, anything that placed a
session in that window could put it on the worker being closed: a scale-out putting
drained workers back in service (``ActionRunner._keep_drained``), then an open; a
recovery taking back a drained worker (``Admission.reclaim_drained``). An earlier chaos
run lost a session that way ("ConnectionPool is closed" on the worker being closed).

Live, on two workers, the real ``Adaptive.adapt`` round runs with Dask's own
``recommendations`` and ``scale_down``; a subclass holds it in that window (after
``workers_to_close``, before ``scale_down`` goes on) while the test scales out and opens
sessions through the public API. The worker offered must not take any of them, and be
closed with nothing lost. Without a scale-down the claim is given back at once.
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from framework import Server
from framework.adaptive import SessionAdaptive
from framework.registry import PLUGIN_NAME
from policies.types import ScaleTo
from workers.errors import TurboserveError

pytestmark = pytest.mark.slow

PROMPT = "a kite over a salt flat"


class HeldInTheWindow(SessionAdaptive):
    """A SessionAdaptive that stops where Dask's ``adapt`` has its workers to close and has
    not retired them yet, until the test lets it go on."""

    def __init__(self, *args, **kwargs):
        self.in_window = threading.Event()
        self.go_on = threading.Event()
        self.closing: list = []
        super().__init__(*args, **kwargs)

    async def scale_down(self, workers):
        self.closing = list(workers)
        self.in_window.set()
        await asyncio.to_thread(self.go_on.wait, 120)
        await super().scale_down(workers)


def _drained_by_scale_down(dask_scheduler, worker, target):
    """What the control loop's Retire leaves, and the autoscaling target that closes it."""
    plugin = dask_scheduler.plugins[PLUGIN_NAME]
    plugin.admission.draining.add(worker)
    plugin.loop.fleet.retiring.add(worker)
    plugin.loop.fleet.drained.add(worker)
    plugin.scale(target)


def _scale_out(dask_scheduler, n):
    (decision,) = dask_scheduler.plugins[PLUGIN_NAME].loop.apply(ScaleTo(n, cause="a burst"))
    return decision.accepted, decision.reason


def _claimed(dask_scheduler):
    return sorted(dask_scheduler.plugins[PLUGIN_NAME].admission.claimed())


def _lost(dask_scheduler, sid):
    """The registry's ``worker-lost`` events of session ``sid``."""
    events = dask_scheduler.plugins[PLUGIN_NAME].registry.get(sid).events
    return [e for e in events if e["kind"] == "worker-lost"]


def _adapt_in_thread(server, adaptive):
    box = {}

    def run():
        try:
            server.cluster.sync(adaptive.adapt)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


def test_no_session_lands_on_a_worker_between_its_offer_and_its_closing():
    with Server.local(n_workers=2, model="tiny", dashboard_address=None) as server:
        s = server.open_session(PROMPT, seed=3)
        a = s.worker
        (b,) = [w for w in server.workers() if w != a]
        server.client.run_on_scheduler(_drained_by_scale_down, worker=b, target=1)
        adaptive = HeldInTheWindow(server.cluster, minimum=1, maximum=2, wait_count=1, interval="1h")
        try:
            t, box = _adapt_in_thread(server, adaptive)
            assert adaptive.in_window.wait(60), f"the Adaptive did not reach scale_down: {box}"
            assert len(adaptive.closing) == 1  # b's name
            # In the window: a burst scales out (drained workers not closed yet come back
            # first), and sessions open, one placed by the policy, one naming b.
            accepted, reason = server.client.run_on_scheduler(_scale_out, n=2)
            assert accepted, reason
            t1 = server.open_session(PROMPT, seed=4)
            refused = None
            try:
                t2 = server.open_session(PROMPT, seed=5, worker=b)
            except TurboserveError as exc:
                refused, t2 = exc, None
            adaptive.go_on.set()
            t.join(120)
            assert not t.is_alive() and "error" not in box, box
        finally:
            adaptive.go_on.set()
            adaptive.stop()
        assert b not in server.workers(), "the offered worker was not closed"
        assert t1.worker != b, f"a session opened in the window was placed on {b}, which was being closed"
        assert t2 is None and "closed by the autoscaler" in str(refused), \
            f"open(worker={b}) in the window: {t2.worker if t2 else refused!r}"
        for sess in (s, t1):
            assert not server.client.run_on_scheduler(_lost, sid=sess.id), f"session {sess.id} lost its worker"
        assert [c.index for c in t1.stream(2)] == [0, 1]
        assert server.client.run_on_scheduler(_claimed) == []


def test_a_worker_offered_but_not_closed_is_given_back():
    with Server.local(n_workers=2, model="tiny", dashboard_address=None) as server:
        a, b = server.workers()
        server.client.run_on_scheduler(_drained_by_scale_down, worker=b, target=1)
        # wait_count 2: the first round offers b and closes nothing (Dask waits for a second offer)
        adaptive = SessionAdaptive(server.cluster, minimum=1, maximum=2, wait_count=2, interval="1h")
        try:
            server.cluster.sync(adaptive.adapt)
            assert dict(adaptive.close_counts), "b was not offered"
            assert server.client.run_on_scheduler(_claimed) == []
            assert b in server.workers()
        finally:
            adaptive.stop()


def _status(dask_scheduler, sid):
    rec = dask_scheduler.plugins[PLUGIN_NAME].registry.get(sid)
    return rec.status.value, rec.worker


def test_a_session_recovered_in_the_window_does_not_go_to_the_worker_being_closed(tmp_path, reference):
    """The chaos run's case: the session's worker dies while the Adaptive is between its offer
    and its closing of a drained worker; recovery used to take that worker back
    (``reclaim_drained``) and the session died with it a second time."""
    import os
    import signal
    import time

    import numpy as np

    with Server.local(n_workers=2, model="tiny", store=str(tmp_path), checkpoint_every=1,
                      dashboard_address=None) as server:
        s = server.open_session(PROMPT, seed=6)
        assert [c.index for c in s.stream(2)] == [0, 1]
        a = s.worker
        (b,) = [w for w in server.workers() if w != a]
        server.client.run_on_scheduler(_drained_by_scale_down, worker=b, target=1)
        pid = server.client.run(os.getpid, workers=[a])[a]
        adaptive = HeldInTheWindow(server.cluster, minimum=1, maximum=2, wait_count=1, interval="1h")
        try:
            t, box = _adapt_in_thread(server, adaptive)
            assert adaptive.in_window.wait(60), f"the Adaptive did not reach scale_down: {box}"
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 90
            while True:  # until the session is served again (the killed worker's restart, or b before)
                status, where = server.client.run_on_scheduler(_status, sid=s.id)
                if status == "active" and where not in (None, a):
                    break
                assert time.monotonic() < deadline, f"session {s.id} not recovered: {status} on {where}"
                time.sleep(0.2)
            assert where != b, f"recovery put session {s.id} on {b}, which the Adaptive is closing"
            adaptive.go_on.set()
            t.join(120)
            assert not t.is_alive() and "error" not in box, box
        finally:
            adaptive.go_on.set()
            adaptive.stop()
        chunks = list(s.stream(3))
        assert [c.index for c in chunks] == [2, 3, 4]
        for got, want in zip(chunks, reference(PROMPT, 6, 5)[2:]):
            np.testing.assert_array_equal(got.frames, want)
        assert len(server.client.run_on_scheduler(_lost, sid=s.id)) == 1  # the kill, not the scale-down
        assert b not in server.workers()
