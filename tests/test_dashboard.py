"""The turboserve dashboard page: frame building, figure updates, serving on a scheduler."""

from __future__ import annotations

import urllib.request

import dask.config
import pytest
from distributed import Client, LocalCluster

from framework.dashboard import (
    PAGE_PATH,
    ChunkLog,
    DashboardFrame,
    SessionsDashboard,
    build_frame,
    install_page,
    page_installed,
)
from framework.dashboard.data import UNPLACED
from framework.dashboard.source import DashboardFeed, plugin_frame_source, update_interval_ms
from framework.registry import SessionRecord
from policies.types import SessionStatus


def record(sid, status, worker=None, tier=None, state_bytes=100, chunks=0, migrations=0) -> SessionRecord:
    return SessionRecord(
        session_id=sid, model="tiny", prompt="p", seed=0, height=64, width=64, status=status,
        worker=worker, tier=tier, state_bytes=state_bytes, chunks=chunks, migrations=migrations,
    )


class TestChunkLog:
    def test_since_returns_only_newer_points_in_order(self):
        log = ChunkLog()
        log.extend([("a", 0, 0.1, 1, 10.0), ("b", 0, 0.2, 2, 10.5)])
        first = log.since(-1)
        assert [(p.session_id, p.seq) for p in first] == [("a", 0), ("b", 1)]
        assert log.since(first[-1].seq) == ()
        log.extend([("a", 1, 0.3, 2, 11.0, "extra field ignored")])
        (new,) = log.since(first[-1].seq)
        assert (new.session_id, new.index, new.latency_s, new.batch_size, new.t_s) == ("a", 1, 0.3, 2, 11.0)

    def test_old_points_roll_off_but_sequence_numbers_keep_counting(self):
        log = ChunkLog(maxlen=3)
        log.extend([("s", i, 0.1, 1, float(i)) for i in range(5)])
        assert len(log) == 3
        assert [p.seq for p in log.since(-1)] == [2, 3, 4]

    def test_latency_summary_is_over_the_kept_points(self):
        log = ChunkLog(maxlen=100)
        assert log.latency_summary() == (None, None)
        log.extend([("s", i, 9.0 if i == 0 else i / 100, 1, float(i)) for i in range(101)])  # 9.0 rolls off
        p99, worst = log.latency_summary()
        assert worst == 1.0 and p99 == 1.0
        log.extend([("s", 101, 5.0, 1, 101.0)])  # 0.01 rolls off
        assert log.latency_summary() == (5.0, 5.0)
        log.extend([("s", 102 + i, 0.0, 1, 102.0 + i) for i in range(99)])  # only 5.0 stays of the old
        assert log.latency_summary() == (5.0, 5.0)
        log.extend([("s", 201, 0.0, 1, 201.0)])  # 5.0 rolls off too
        assert log.latency_summary() == (0.0, 0.0)

    def test_size_must_be_positive(self):
        with pytest.raises(ValueError, match="got 0"):
            ChunkLog(maxlen=0)


class TestBuildFrame:
    def test_counts_sessions_per_worker_and_status_and_bytes_per_tier(self):
        records = [
            record("a", SessionStatus.ACTIVE, "w1", state_bytes=10, chunks=4, migrations=1),
            record("b", SessionStatus.IDLE, "w1", state_bytes=20, chunks=2),
            record("c", SessionStatus.SUSPENDED, "w2", tier="host", state_bytes=40),
            record("d", SessionStatus.SUSPENDED, None, tier="disk", state_bytes=80, migrations=2),
            record("e", SessionStatus.PENDING),
            record("f", SessionStatus.CLOSED, "w2", state_bytes=1000, chunks=9),
        ]
        f = build_frame(5.0, ["w1", "w2", "w3"], records, slo_s=0.75, offloads=3)
        assert f.workers == ("w1", "w2", "w3")
        assert f.sessions_by_worker == {
            "w1": {"active": 1, "idle": 1},
            "w2": {"suspended": 1},
            "w3": {},
            UNPLACED: {"suspended": 1, "pending": 1},
        }
        assert f.state_bytes == {"device": 30, "host": 40, "disk": 80}
        assert (f.n_sessions, f.n_status("suspended"), f.n_status("migrating")) == (5, 2, 0)
        assert (f.chunks_total, f.migrations, f.offloads, f.slo_s) == (6, 3, 3, 0.75)

    def test_explicit_migration_count_wins(self):
        f = build_frame(0.0, [], [record("a", SessionStatus.ACTIVE, "w", migrations=5)], migrations=7)
        assert f.migrations == 7


def frame(workers=("tcp://h:1", "tcp://h:2"), by_worker=None, chunks=(), **kw) -> DashboardFrame:
    return DashboardFrame(now_s=kw.pop("now_s", 100.0), workers=tuple(workers),
                          sessions_by_worker=by_worker or {}, chunks=chunks, **kw)


class TestSessionsDashboard:
    def test_bars_follow_the_workers_and_their_sessions(self):
        frames = iter([
            frame(by_worker={"tcp://h:1": {"active": 2}, "tcp://h:2": {"idle": 1}, UNPLACED: {"pending": 1}}),
            frame(workers=("tcp://h:1",), by_worker={"tcp://h:1": {"active": 1, "migrating": 1}}),
        ])
        dash = SessionsDashboard(lambda seq: next(frames))
        dash.update()
        assert dash.bars.data["worker"] == ["h:1", "h:2", UNPLACED]
        assert dash.bars.data["active"] == [2, 0, 0] and dash.bars.data["idle"] == [0, 1, 0]
        assert dash.bars.data["pending"] == [0, 0, 1]
        assert list(dash.per_worker.x_range.factors) == ["h:1", "h:2", UNPLACED]
        dash.update()
        assert list(dash.per_worker.x_range.factors) == ["h:1"]
        assert dash.bars.data["migrating"] == [1]

    def test_chunk_points_are_streamed_once_each(self):
        log = ChunkLog()
        asked = []

        def source(last_seq):
            asked.append(last_seq)
            return frame(chunks=log.since(last_seq), slo_s=0.5)

        dash = SessionsDashboard(source)
        log.extend([("a", 0, 0.2, 1, 10.0), ("b", 0, 0.9, 2, 10.1)])
        dash.update()
        dash.update()  # nothing new
        log.extend([("a", 1, 0.3, 2, 11.0)])
        dash.update()
        assert asked == [-1, 1, 1]
        assert dash.chunks.data["latency_s"] == [0.2, 0.9, 0.3]
        assert dash.chunks.data["batch_size"] == [1, 2, 2]
        assert dash.chunks.data["t"] == [10000.0, 10100.0, 11000.0]
        assert dash.slo_line.visible and dash.slo_line.location == 0.5
        a_colour, b_colour, a_again = dash.chunks.data["colour"]
        assert a_colour == a_again != b_colour  # one colour per session

    def test_ticks_tiers_and_summary(self):
        f = frame(by_worker={"tcp://h:1": {"active": 2, "idle": 1}}, state_bytes={"device": 300, "host": 100},
                  migrations=4, offloads=2, chunks_total=17, latency_p99_s=0.25, latency_max_s=0.5, slo_s=0.75)
        dash = SessionsDashboard(lambda seq: f)
        dash.update()
        dash.update()
        assert dash.ticks.data["workers"] == [2, 2] and dash.ticks.data["active"] == [2, 2]
        assert dash.ticks.data["sessions"] == [3, 3]
        assert dash.tiers.data["bytes"] == [300, 100, 0]
        assert dash.state.x_range.end >= 400
        text = dash.summary.text
        for part in ("<b>2</b> workers", "<b>3</b> sessions", "<b>2</b> active", "<b>17</b> chunks",
                     "<b>4</b> migrations", "<b>2</b> offloads", "0.250 s", "0.500 s", "0.750 s"):
            assert part in text, part
        assert dash.slo_line.visible and dash.slo_line.location == 0.75


def test_update_interval_comes_from_config():
    assert update_interval_ms() == 500
    with dask.config.set({"turboserve.dashboard.interval": "2s"}):
        assert update_interval_ms() == 2000
    with dask.config.set({"turboserve.dashboard.interval": "10ms"}):
        with pytest.raises(ValueError, match="10ms"):
            update_interval_ms()


def test_feed_survives_pickling_with_its_points():
    import pickle

    feed = DashboardFeed(history=3)
    feed.on_chunks([("a", 0, 0.1, 1, 1.0)])
    copy = pickle.loads(pickle.dumps(feed))
    copy.on_chunks([("a", 1, 0.2, 1, 2.0)])
    assert [(p.seq, p.index) for p in copy.chunk_log.since(-1)] == [(0, 0), (1, 1)]


def test_feed_counts_stalls_by_the_deadlines_of_its_registry_after_pickling():
    """The feed reads the chunk deadlines from the registry it was given (the plugin's), pickled along."""
    import pickle

    from framework.registry import SessionRegistry

    registry = SessionRegistry()
    rec = record("a", SessionStatus.ACTIVE, "w")
    rec.chunk_period_s = 0.75
    registry.add(rec)
    registry2, feed = pickle.loads(pickle.dumps((registry, DashboardFeed(history=10, registry=registry))))
    with dask.config.set({"turboserve.slo-s": None}):
        feed.on_chunks([("a", 0, 5.0, 1, 10.0), ("a", 1, 0.9, 1, 10.8), ("a", 2, 0.5, 1, 11.5)])
    assert (feed.metrics.chunks, feed.metrics.stalls) == (3, 1)
    assert feed._registry is registry2  # one registry on the scheduler, not a copy
    assert DashboardFeed(history=10).metrics.stalls == 0  # no registry: no deadline, no stall


def test_feed_records_chunks_and_offloads():
    feed = DashboardFeed(history=2)
    feed.on_chunks([("a", 0, 0.1, 1, 1.0), ("a", 1, 0.1, 1, 2.0), ("a", 2, 0.1, 1, 3.0)])
    feed.count_offload()
    feed.count_offload()
    assert [p.index for p in feed.chunk_log.since(-1)] == [1, 2] and feed.offloads == 2


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=20) as r:
        assert r.status == 200
        return r.read().decode()


@pytest.fixture(scope="class")
def plain_cluster():
    """An in-process cluster with a dashboard on localhost (no turboserve plugin).

    Class-scoped: it closes before the next test outside :class:`TestOnAPlainCluster`.
    Two live dashboards in one process race on bokeh's process-wide validation switch
    (distributed's periodic updates turn it off, and a figure built meanwhile on the
    other cluster's thread keeps a bare string title: /status answers 500), so the tests
    that start their own dashboard must not overlap this one.
    """
    with LocalCluster(n_workers=1, processes=False, dashboard_address="127.0.0.1:0") as cluster, \
            Client(cluster) as client:
        port = client.scheduler_info()["services"]["dashboard"]
        yield client, f"http://127.0.0.1:{port}"


def test_no_dashboard_means_no_page():
    with LocalCluster(n_workers=0, processes=False, dashboard_address=None) as cluster, Client(cluster) as client:
        assert client.run_on_scheduler(lambda dask_scheduler: install_page(dask_scheduler)) is False


def _frame_of_a_plugin(dask_scheduler):
    """Build a frame from a real (unstarted) turboserve plugin with a few records."""
    from framework.dashboard.source import plugin_frame
    from framework.scheduler_plugin import TurboserveScheduler
    from framework.serving_settings import ServingSettings

    plugin = TurboserveScheduler(ServingSettings())
    worker = next(iter(dask_scheduler.workers))
    plugin.registry.add(record("open", SessionStatus.ACTIVE, worker, migrations=1))
    plugin.registry.add(record("gone", SessionStatus.CLOSED, None, migrations=2))
    plugin.dashboard.on_chunks([("open", 0, 0.5, 2, 1.0), ("gone", 0, 0.25, 2, 1.0), ("gone", 1, 2.0, 1, 2.0)])
    f = plugin_frame(plugin, dask_scheduler, 0)
    return (f.n_sessions, f.migrations, f.chunks_total, [p.index for p in f.chunks], f.latency_max_s,
            f.slo_s, f.workers == (worker,))


class TestOnAPlainCluster:
    """One plain cluster (no turboserve plugin) shared by these tests."""

    def test_page_is_served_and_listed_in_the_menu(self, plain_cluster):
        client, base = plain_cluster
        assert "individual-turboserve" not in _get(base + "/status")
        assert client.run_on_scheduler(lambda dask_scheduler: page_installed(dask_scheduler)) is False
        assert client.run_on_scheduler(lambda dask_scheduler: install_page(dask_scheduler)) is True
        assert client.run_on_scheduler(lambda dask_scheduler: install_page(dask_scheduler)) is True  # idempotent
        n_apps = client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.http_application.applications))
        assert client.run_on_scheduler(lambda dask_scheduler: install_page(dask_scheduler)) is True
        assert client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.http_application.applications)) == n_apps
        page = _get(base + PAGE_PATH)
        assert "More..." in page and "bokeh" in page.lower()
        menu = _get(base + "/status")
        assert f'href="{PAGE_PATH.strip("/")}">turboserve</a>' in menu

    def test_frames_without_the_plugin_show_the_workers_only(self, plain_cluster):
        client, _ = plain_cluster

        def probe(dask_scheduler):
            f = plugin_frame_source(dask_scheduler)(-1)
            return len(f.workers), f.n_sessions

        assert client.run_on_scheduler(probe) == (1, 0)

    def test_plugin_frame_counts_closed_sessions_in_the_counters(self, plain_cluster):
        client, _ = plain_cluster
        n_sessions, migrations, chunks_total, new_points, worst, slo, workers_ok = client.run_on_scheduler(
            _frame_of_a_plugin
        )
        assert (n_sessions, migrations, chunks_total) == (1, 3, 3)
        assert new_points == [0, 1] and worst == 2.0 and workers_ok
        assert slo == 1.0  # the open record's chunk period (no turboserve.slo-s set)


def test_attaching_a_server_to_a_running_cluster_installs_the_page():
    from framework import Server

    with LocalCluster(n_workers=0, processes=False, dashboard_address="127.0.0.1:0") as cluster:
        port = cluster.scheduler.http_server.port
        base = f"http://127.0.0.1:{port}"
        assert "individual-turboserve" not in _get(base + "/status")
        with Server(cluster.scheduler_address) as server:
            assert "bokeh" in _get(base + PAGE_PATH).lower()
            assert 'href="individual-turboserve">turboserve</a>' in _get(base + "/status")
            assert server.dashboard_link


def test_a_failing_source_leaves_the_page_up_and_logs_once_per_streak(caplog):
    from bokeh.document import Document

    from framework.dashboard.page import turboserve_doc

    calls = []

    def source(last_seq):
        calls.append(last_seq)
        if len(calls) in (1, 2, 3):
            raise RuntimeError("registry unavailable")
        return frame()

    doc = Document()
    with caplog.at_level("WARNING", logger="framework.dashboard.page"):
        turboserve_doc(object(), {"prefix": "/"}, doc, source=source, interval_ms=250)
        (callback,) = doc.session_callbacks
        assert callback.period == 250 and len(doc.roots) == 1
        tick = callback.callback
        tick()  # fails again: same streak, not logged again
        tick()  # fails
        tick()  # works
    assert len(calls) == 4
    assert [r.getMessage() for r in caplog.records] == ["turboserve dashboard: update failed"]
    summary = doc.get_model_by_name("turboserve-summary")
    assert "<b>2</b> workers" in summary.text
