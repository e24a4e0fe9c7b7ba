"""turboserve metrics on the scheduler's Prometheus endpoint, in Prometheus' conventions."""

from __future__ import annotations

import re
import time
import urllib.request

import pytest

from framework.dashboard.metrics import LATENCY_BUCKETS_S, ChunkMetrics, MonotoneSum

prometheus_client = pytest.importorskip("prometheus_client", reason="prometheus-client is a turboserve dependency")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

PERIOD = 0.75


class TestChunkMetrics:
    def deadlines(self, sid):
        return (PERIOD, PERIOD) if sid != "gone" else None

    def test_latencies_fill_cumulative_buckets(self):
        m = ChunkMetrics(self.deadlines)
        m.observe([("a", 0, 0.04, 1, 1.0), ("a", 1, 0.3, 1, 1.7), ("b", 0, 100.0, 1, 2.0)])
        counts = m.bucket_counts()
        assert counts[0] == 1  # <= 0.05
        assert counts[LATENCY_BUCKETS_S.index(0.5)] == 2
        assert counts[-2] == 2 and counts[-1] == 3  # 100 s only in +Inf
        assert m.chunks == 3 and m.latency_sum_s == pytest.approx(100.34)

    def test_only_late_in_stream_chunks_are_stalls(self):
        m = ChunkMetrics(self.deadlines)
        m.observe([
            ("a", 0, 5.0, 1, 10.0),   # first chunk: an admission wait, not a stall
            ("a", 1, 0.9, 1, 10.8),   # in-stream and over the 0.75 s target: a stall
            ("a", 2, 0.5, 1, 11.5),   # in-stream, on time
            ("a", 3, 2.0, 1, 30.0),   # first after an idle gap (a burst start)
            ("gone", 5, 9.0, 1, 31.0),
            ("gone", 6, 9.0, 1, 31.5),  # unknown session: counted, never a stall
        ])
        assert (m.chunks, m.stalls) == (6, 1)

    def test_forgetting_closed_sessions_keeps_the_counts(self):
        m = ChunkMetrics(self.deadlines)
        m.observe([("a", 0, 0.1, 1, 1.0), ("b", 0, 0.1, 1, 1.0)])
        m.forget(["b"])
        m.observe([("a", 1, 2.0, 1, 1.5)])  # "a" was forgotten: a burst start again
        assert (m.chunks, m.stalls) == (3, 0)


def test_counters_over_sessions_never_go_down_when_sessions_are_forgotten():
    total = MonotoneSum()
    assert total.update({"a": 1, "b": 2}) == 3
    assert total.update({"b": 2}) == 3  # "a" closed and forgotten: its migration still counts
    assert total.update({"b": 4, "c": 1}) == 6


@pytest.mark.parametrize("session_id", ["redfox", "waves-at-dawn", "Alice", "a", "abcdefab", "room_42", "x.y"])
def test_no_session_id_becomes_a_task_prefix_label(session_id):
    """Dask labels its scheduler metrics by task prefix (``key_split``): ours are fixed."""
    from dask.utils import key_split

    from framework.session_mechanisms import actor_key
    from workers.chunk_futures import chunk_key

    assert key_split(actor_key(session_id, 1)) == "turboserve-session"
    assert key_split(actor_key(session_id, 12)) == "turboserve-session"
    assert key_split(chunk_key(session_id, "deadbeef", 3)) == "turboserve-chunk"
    assert key_split(chunk_key(session_id, "0a1b2c3d", 0)) == "turboserve-chunk"


def scrape(base: str) -> dict[str, list]:
    text = urllib.request.urlopen(base + "/metrics", timeout=30).read().decode()
    out: dict[str, list] = {}
    for fam in text_string_to_metric_families(text):
        if "turboserve" in fam.name:
            out[fam.name] = [(s.name, dict(s.labels), s.value) for s in fam.samples]
    return out


def value(metrics, family, sample=None, **labels) -> float:
    for name, got, v in metrics[family]:
        if (sample is None or name == sample) and all(got.get(k) == w for k, w in labels.items()):
            return v
    raise KeyError((family, sample, labels))


def eventually(base: str, ok, timeout: float = 30.0) -> dict[str, list]:
    """The first scrape within ``timeout`` s for which ``ok(metrics)`` holds."""
    deadline = time.monotonic() + timeout
    while True:
        metrics = scrape(base)
        if ok(metrics) or time.monotonic() > deadline:
            return metrics
        time.sleep(0.2)


@pytest.mark.slow
def test_metrics_move_while_sessions_stream_suspend_and_migrate():
    from framework import Server

    with Server.local(n_workers=2, model="tiny", dashboard_address="127.0.0.1:0") as server:
        base = f"http://127.0.0.1:{server.client.scheduler_info()['services']['dashboard']}"
        before = scrape(base)
        assert value(before, "dask_turboserve_chunks") == 0
        # Ids of words, as a deployment may give: Dask's task-prefix labels keep such words.
        a = server.open_session("a red fox", seed=0, session_id="redfox")
        b = server.open_session("waves", seed=1, session_id="waves-at-dawn")
        for f in [s.submit() for _ in range(2) for s in (a, b)]:
            f.result(timeout=120)
        # Chunk rows reach the scheduler a moment after the chunks reach the client.
        during = eventually(base, lambda m: value(m, "dask_turboserve_chunks") >= 4)
        assert value(during, "dask_turboserve_sessions", status="active") == 2
        # The engine may make a chunk ahead of its request: at least the four asked for.
        made = value(during, "dask_turboserve_chunks")
        assert made >= 4
        assert value(during, "dask_turboserve_chunk_latency_seconds", "dask_turboserve_chunk_latency_seconds_count") == made
        assert value(during, "dask_turboserve_workers", state="running") == 2

        a.suspend()
        other = next(w for w in server.workers() if w != b.worker)
        b.migrate(other)
        assert len(list(b.stream(1))) == 1
        after = eventually(base, lambda m: value(m, "dask_turboserve_chunks") > made)
        # The control loop may move or offload sessions too: at least ours are counted.
        assert value(after, "dask_turboserve_sessions", status="suspended") >= 1
        assert value(after, "dask_turboserve_offloads") >= 1
        assert value(after, "dask_turboserve_migrations") >= 1
        assert value(after, "dask_turboserve_chunks") > made
        assert value(after, "dask_turboserve_chunk_latency_seconds", "dask_turboserve_chunk_latency_seconds_sum") > 0

        # Prometheus conventions: base units and _total counters; no session id in any
        # label of the whole endpoint (ours or Dask's own, e.g. task prefixes).
        text = urllib.request.urlopen(base + "/metrics", timeout=30).read().decode()
        ours = [line for line in text.splitlines() if line.startswith("dask_turboserve_")]
        assert ours
        leaks = [line for line in text.splitlines() for s in ("redfox", "waves") if s in line]
        assert not leaks, leaks
        assert all(re.match(r"dask_turboserve_[a-z_]+(\{[^}]*\})? ", line) for line in ours)
        kinds = {f.name: f.type for f in text_string_to_metric_families(text) if "turboserve" in f.name}
        assert kinds["dask_turboserve_chunk_latency_seconds"] == "histogram"
        assert kinds["dask_turboserve_decision_seconds"] == "summary"
        assert {kinds[k] for k in ("dask_turboserve_stalls", "dask_turboserve_migrations",
                                   "dask_turboserve_offloads", "dask_turboserve_chunks")} == {"counter"}
        a.close()
        b.close()


def test_workers_the_plugin_drains_are_counted_draining():
    """The workers gauge reads the plugin's draining set from its admission (no cluster needed)."""
    from types import SimpleNamespace

    from framework.dashboard.metrics import TurboserveCollector
    from framework.registry import PLUGIN_NAME, SessionRegistry

    running = SimpleNamespace(status=SimpleNamespace(name="running"))
    plugin = SimpleNamespace(registry=SessionRegistry(), admission=SimpleNamespace(draining={"w2"}))
    scheduler = SimpleNamespace(plugins={PLUGIN_NAME: plugin}, workers={"w1": running, "w2": running})
    (gauge,) = [f for f in TurboserveCollector(scheduler).collect() if f.name.endswith("turboserve_workers")]
    assert {s.labels["state"]: s.value for s in gauge.samples} == {"running": 1, "paused": 0, "draining": 1,
                                                                   "closing": 0}
