"""Cost of one dashboard tick against its refresh period, on a large registry.

Usage::

    python -m framework.dashboard.bench [--sessions 1000] [--workers 64] [--repeats 21]

Builds a :class:`~framework.registry.SessionRegistry` of ``--sessions`` records over
``--workers`` workers (60% active, 20% idle, 15% suspended, 5% pending; 32 recent
latencies each) and a chunk log receiving one chunk per active session per tick (every
active session streaming at once). A tick is what the scheduler's event loop runs for
one open page: :func:`~framework.dashboard.source.plugin_frame` (frame from the
registry) and :meth:`SessionsDashboard.update` (bokeh data sources; without a browser
attached, so no websocket serialisation). Prints the median and minimum tick time and
the median as a share of the refresh period (``turboserve.dashboard.interval``).
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from types import SimpleNamespace

from framework.dashboard.page import SessionsDashboard
from framework.dashboard.source import DashboardFeed, plugin_frame, update_interval_ms
from framework.registry import SessionRecord, SessionRegistry
from policies.types import SessionStatus


def build(n_sessions: int, n_workers: int, seed: int = 0):
    """A plugin-like object (``registry``, ``dashboard``) and a scheduler-like one (``workers``)."""
    rng = random.Random(seed)
    workers = [f"tcp://10.0.{i // 256}.{i % 256}:8786" for i in range(n_workers)]
    registry = SessionRegistry()
    statuses = [SessionStatus.ACTIVE] * 12 + [SessionStatus.IDLE] * 4 + [SessionStatus.SUSPENDED] * 3 + [
        SessionStatus.PENDING]
    for i in range(n_sessions):
        status = rng.choice(statuses)
        rec = SessionRecord(
            session_id=f"s{i:06d}", model="tiny", prompt="p", seed=i, height=64, width=64, status=status,
            worker=None if status is SessionStatus.PENDING else rng.choice(workers),
            tier="host" if status is SessionStatus.SUSPENDED else None, state_bytes=rng.randint(1, 8) << 20,
            chunks=rng.randint(0, 500), chunk_period_s=0.75,
        )
        rec.latencies.extend(rng.uniform(0.1, 1.0) for _ in range(32))
        registry.add(rec)
    plugin = SimpleNamespace(registry=registry, dashboard=DashboardFeed())
    return plugin, SimpleNamespace(workers=dict.fromkeys(workers))


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print one line per measure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=21)
    args = parser.parse_args(argv)
    plugin, scheduler = build(args.sessions, args.workers)
    active = [r.session_id for r in plugin.registry.records() if r.status is SessionStatus.ACTIVE]
    dash = SessionsDashboard(lambda seq: plugin_frame(plugin, scheduler, seq))
    dash.update()
    times = []
    for k in range(args.repeats):
        now = time.time()
        plugin.dashboard.on_chunks((sid, k, 0.5, 4, now) for sid in active)
        t0 = time.perf_counter()
        dash.update()
        times.append(time.perf_counter() - t0)
    period_s = update_interval_ms() / 1000
    med = statistics.median(times)
    print(f"sessions={args.sessions} workers={args.workers} new chunks per tick={len(active)} repeats={args.repeats}")
    print(f"tick median {med * 1000:.2f} ms, min {min(times) * 1000:.2f} ms")
    print(f"tick / refresh period ({period_s * 1000:.0f} ms): {med / period_s:.3f}")


if __name__ == "__main__":
    main()
