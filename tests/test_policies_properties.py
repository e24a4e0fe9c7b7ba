"""Invariants of every policy on random snapshots (hypothesis).

No policy ever names a session twice, acts on an unknown or closed session, pushes a
worker over its memory or batch slots, sends a session to a worker that is not
running, or leaves the autoscaling bounds; the autoscalers do not flap under a
constant load.
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies.combined import Combined
from policies.registry import make, names
from policies.types import (
    GiB,
    BatchLatencyModel,
    Migrate,
    Offload,
    Place,
    Reject,
    Resume,
    Retire,
    ScaleTo,
    SessionStatus,
    SessionView,
    Snapshot,
    WorkerStatus,
    WorkerView,
)

# Examples per test are kept small so the whole file runs in ~20 s on a shared 2-core
# machine; each policy is checked on its own examples.
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
RUNNING, STARTING, DRAINING = WorkerStatus.RUNNING, WorkerStatus.STARTING, WorkerStatus.DRAINING
COMPUTING = (SessionStatus.ACTIVE, SessionStatus.MIGRATING)
HALF_GIB = GiB // 2


@st.composite
def latency_models(draw) -> BatchLatencyModel:
    base = draw(st.floats(0.01, 0.5))
    slope = draw(st.floats(0.0, 0.2))
    return BatchLatencyModel((1, 8), (base, base + 7 * slope), context_slope_s=draw(st.sampled_from([0.0, 0.002])))


@st.composite
def snapshots(draw) -> Snapshot:
    """A consistent cluster: on-device sessions fit their (running or draining) worker."""
    workers = [
        WorkerView(
            f"w{i}",
            status=draw(st.sampled_from([RUNNING, RUNNING, STARTING, DRAINING])),
            memory_bytes=draw(st.integers(1, 12)) * HALF_GIB,
            max_batch=draw(st.integers(1, 6)),
        )
        for i in range(draw(st.integers(0, 6)))
    ]
    used = {w.address: 0 for w in workers}
    slots = {w.address: 0 for w in workers}
    by_address = {w.address: w for w in workers}
    sessions = []
    for j in range(draw(st.integers(0, 30))):
        status = draw(st.sampled_from(list(SessionStatus)))
        nbytes = draw(st.integers(0, 4)) * HALF_GIB
        worker = None
        if status.on_device:
            worker = draw(st.sampled_from([w.address for w in workers] + ["ghost"]))
            w = by_address.get(worker)
            computing = status in COMPUTING
            fits = w is not None and w.status is not STARTING and used[worker] + nbytes <= w.memory_bytes
            fits = fits and (not computing or slots[worker] < w.max_batch)
            if w is not None and not fits:
                status, worker = SessionStatus.SUSPENDED, None
            elif w is not None:
                used[worker] += nbytes
                slots[worker] += computing
        sessions.append(
            SessionView(
                f"s{j}",
                status,
                worker,
                state_bytes=nbytes if status is not SessionStatus.CLOSED else 0,
                model=draw(st.sampled_from(["tiny", "wan-1.3b"])),
                since_s=draw(st.floats(0.0, 200.0)),
                context_frames=draw(st.floats(0.0, 30.0)),
                next_active_s=draw(st.none() | st.floats(150.0, 300.0)),
            )
        )
    low = draw(st.integers(0, 4))
    return Snapshot(
        now_s=200.0,
        workers=tuple(workers),
        sessions=tuple(sessions),
        slo_s=draw(st.floats(0.3, 2.0)),
        latency=draw(latency_models()),
        migrate_bytes_per_s=draw(st.sampled_from([1e9, 25e9, 1e12])),
        min_workers=low,
        max_workers=low + draw(st.integers(0, 6)),
    )


def reserve_of(snap: Snapshot, s: SessionView, new_session_bytes: int | None) -> int:
    """Bytes a placed session will hold: its state, or a new session's reserve."""
    if s.state_bytes or new_session_bytes is not None:
        return s.state_bytes or new_session_bytes
    return max((o.state_bytes for o in snap.sessions if o.model == s.model), default=0)


def check_session_actions(snap: Snapshot, actions, new_session_bytes: int | None = None) -> None:
    """Apply the session actions to ``snap`` and assert every capacity rule."""
    sessions = {s.session_id: s for s in snap.sessions}
    workers = {w.address: w for w in snap.workers}
    named = Counter(a.session_id for a in actions if hasattr(a, "session_id"))
    assert all(n == 1 for n in named.values()), f"a session is named twice: {named.most_common(1)}"
    memory = {a: 0 for a in workers}
    computing = {a: 0 for a in workers}
    for s in snap.sessions:
        if s.status.on_device and s.worker in workers:
            memory[s.worker] += s.state_bytes
            computing[s.worker] += s.status in COMPUTING
    for a in actions:
        assert a.cause, f"{a!r} carries no cause"
        if isinstance(a, (ScaleTo, Retire)):
            continue
        s = sessions.get(a.session_id)
        assert s is not None and s.status is not SessionStatus.CLOSED, f"{a!r} acts on an unknown or closed session"
        if isinstance(a, Place):
            assert s.status is SessionStatus.PENDING
            assert workers[a.worker].status is RUNNING
            memory[a.worker] += reserve_of(snap, s, new_session_bytes)
            computing[a.worker] += 1
        elif isinstance(a, Migrate):
            assert s.status is SessionStatus.ACTIVE and s.worker == a.source != a.target
            assert workers[a.target].status is RUNNING
            memory[a.target] += s.state_bytes  # the source keeps its copy until done
            computing[a.target] += 1
            computing[a.source] -= 1
        elif isinstance(a, Resume):
            assert s.status is SessionStatus.SUSPENDED
            assert workers[a.worker].status is RUNNING
            memory[a.worker] += s.state_bytes
        elif isinstance(a, Offload):
            assert s.status is SessionStatus.IDLE and s.worker in workers and a.tier in ("host", "disk")
        elif isinstance(a, Reject):
            assert s.status is SessionStatus.PENDING and s.state_bytes == 0
        else:  # pragma: no cover - a new action type needs a rule here
            raise AssertionError(f"unchecked action {a!r}")
    for address, w in workers.items():
        assert memory[address] <= w.memory_bytes, f"{address} over memory: {memory[address]} > {w.memory_bytes}"
        assert computing[address] <= w.max_batch, f"{address} over max_batch: {computing[address]} > {w.max_batch}"


def check_scaling(snap: Snapshot, actions) -> None:
    """At most one ScaleTo, within bounds; Retire exactly the surplus, of live workers."""
    current = sum(w.status is not DRAINING for w in snap.workers)
    targets = [a.n for a in actions if isinstance(a, ScaleTo)]
    retired = [a.worker for a in actions if isinstance(a, Retire)]
    assert len(targets) <= 1
    if not targets:
        assert snap.min_workers <= current <= snap.max_workers and not retired
        return
    n = targets[0]
    assert snap.min_workers <= n <= snap.max_workers and n != current
    assert len(retired) == max(current - n, 0) == len(set(retired))
    status = {w.address: w.status for w in snap.workers}
    assert all(status[r] is not DRAINING for r in retired)


POLICIES = [("placement", n, {}) for n in names("placement")]
POLICIES += [
    ("placement", "migration-aware", {"on_full": "refuse", "min_gain": 0.0, "max_migrations": 3}),
    ("placement", "least-loaded", {"on_full": "refuse", "new_session_bytes": HALF_GIB}),
    ("placement", "round-robin", {"new_session_bytes": 0}),
]
POLICIES += [("autoscaling", n, {}) for n in names("autoscaling")]
POLICIES += [("offload", n, {}) for n in names("offload")]
POLICIES += [("offload", "idle-timeout", {"idle_s": 0.0, "prefetch_s": 100.0, "high_water": 0.5})]


@pytest.mark.parametrize("kind, name, params", POLICIES, ids=lambda p: str(p) if not isinstance(p, dict) else "")
@SETTINGS
@given(snap=snapshots())
def test_no_policy_breaks_a_capacity_rule_or_the_bounds(kind, name, params, snap):
    policy = make(kind, name, **params)
    actions, _ = policy.decide(snap, policy.initial_state())
    check_session_actions(snap, actions, params.get("new_session_bytes"))
    if kind == "autoscaling":
        check_scaling(snap, actions)
    else:
        assert not any(isinstance(a, (ScaleTo, Retire)) for a in actions)


@settings(SETTINGS, max_examples=120)
@given(
    snap=snapshots(),
    placement=st.sampled_from(names("placement")),
    autoscaling=st.sampled_from(names("autoscaling")),
)
def test_combined_decisions_respect_capacity_across_policies(snap, placement, autoscaling):
    combined = Combined(
        make("placement", placement),
        make("autoscaling", autoscaling),
        make("offload", "idle-timeout", idle_s=10.0, prefetch_s=100.0, high_water=1.0),
    )
    actions, _ = combined.decide(snap, combined.initial_state())
    check_session_actions(snap, actions)
    check_scaling(snap, actions)


@settings(SETTINGS, max_examples=30)
@given(snap=snapshots(), name=st.sampled_from(names("placement")))
def test_placement_is_deterministic(snap, name):
    policy = make("placement", name)
    assert policy.decide(snap, policy.initial_state()) == policy.decide(snap, policy.initial_state())


def run_constant_load(policy, *, n_sessions, n_workers, max_batch, latency, low, high, ticks=150, dt_s=10.0):
    """Cluster sizes over ``ticks`` decisions of ``policy`` under a constant load.

    A small model of the mechanism: ScaleTo adds STARTING workers that run after
    60 s; Retire drains and removes a worker at once; sessions spread evenly over the
    running workers (up to ``max_batch`` each), the rest wait as pending.
    """
    workers = {f"w{i}": (RUNNING, 0.0) for i in range(n_workers)}
    state, sizes, serial = policy.initial_state(), [], n_workers
    for k in range(ticks):
        now = k * dt_s
        workers = {a: (RUNNING if st_ is STARTING and now - t0 >= 60.0 else st_, t0) for a, (st_, t0) in workers.items()}
        running = sorted(a for a, (st_, _) in workers.items() if st_ is RUNNING)
        sessions = []
        for i in range(n_sessions):
            slot = i % len(running) if running else None
            on = running[slot] if running and i < len(running) * max_batch else None
            status = SessionStatus.ACTIVE if on else SessionStatus.PENDING
            sessions.append(SessionView(f"s{i}", status, on, state_bytes=HALF_GIB if on else 0))
        snap = Snapshot(
            now_s=now,
            workers=tuple(WorkerView(a, status=st_, max_batch=max_batch) for a, (st_, _) in workers.items()),
            sessions=tuple(sessions),
            latency=latency,
            min_workers=low,
            max_workers=high,
        )
        actions, state = policy.decide(snap, state)
        check_scaling(snap, actions)
        for a in actions:
            if isinstance(a, ScaleTo) and a.n > len(workers):
                for _ in range(a.n - len(workers)):
                    workers[f"w{serial}"] = (STARTING, now)
                    serial += 1
            elif isinstance(a, Retire):
                del workers[a.worker]
        sizes.append(len(workers))
    return sizes


@pytest.mark.parametrize("name", ["hpa", "load-driven"])
@settings(max_examples=25, deadline=None)
@given(
    n_sessions=st.integers(0, 120),
    n_workers=st.integers(0, 12),
    max_batch=st.integers(1, 16),
    latency=latency_models(),
    low=st.integers(0, 3),
    span=st.integers(0, 30),
)
def test_autoscalers_settle_without_flapping_under_constant_load(name, n_sessions, n_workers, max_batch, latency, low, span):
    policy = make("autoscaling", name)
    sizes = run_constant_load(
        policy, n_sessions=n_sessions, n_workers=n_workers, max_batch=max_batch, latency=latency, low=low, high=low + span
    )
    steps = [b - a for a, b in zip(sizes, sizes[1:]) if b != a]
    assert all(d > 0 for d in steps) or all(d < 0 for d in steps), f"flapping: {sizes}"
    assert len(set(sizes[len(sizes) // 2 :])) == 1, f"not settled: {sizes}"


@settings(max_examples=40, deadline=None)
@given(
    counts=st.lists(st.integers(0, 8), min_size=2, max_size=6),
    contexts=st.lists(st.floats(0.0, 21.0), min_size=48, max_size=48),
    latency=latency_models(),
    min_gain=st.sampled_from([0.0, 0.1, 0.3]),
)
def test_migration_aware_rebalancing_converges_and_never_raises_the_max(counts, contexts, latency, min_gain):
    policy = make("placement", "migration-aware", min_gain=min_gain, max_migrations=2)
    workers = tuple(WorkerView(f"w{i}", max_batch=8) for i in range(len(counts)))
    where = {f"s{i}-{j}": f"w{i}" for i, n in enumerate(counts) for j in range(n)}
    ctx = {sid: contexts[k % len(contexts)] for k, sid in enumerate(sorted(where))}

    def snap_now() -> Snapshot:
        sessions = tuple(
            SessionView(sid, SessionStatus.ACTIVE, w, state_bytes=HALF_GIB, context_frames=ctx[sid])
            for sid, w in sorted(where.items())
        )
        return Snapshot(now_s=0.0, workers=workers, sessions=sessions, latency=latency, migrate_bytes_per_s=1e12)

    def max_latency(snap: Snapshot) -> float:
        per: dict[str, list[float]] = {}
        for s in snap.sessions:
            per.setdefault(s.worker, []).append(s.context_frames)
        return max((latency.predict(len(c), sum(c) / len(c)) for c in per.values()), default=0.0)

    snap = snap_now()
    for _ in range(30):
        actions, _ = policy.decide(snap, None)
        if not actions:
            break
        before = max_latency(snap)
        where.update({a.session_id: a.target for a in actions})
        snap = snap_now()
        assert max_latency(snap) <= before + 1e-12
    else:
        raise AssertionError(f"still migrating after 30 decisions: {sorted(where.items())}")


@settings(max_examples=40, deadline=None)
@given(
    demands=st.lists(st.integers(0, 40), min_size=2, max_size=40),
    quantile=st.sampled_from([0.0, 0.5, 0.8, 0.99]),
    startup=st.sampled_from([0.0, 10.0, 60.0]),
    bounds=st.tuples(st.integers(0, 5), st.integers(5, 60)),
)
@pytest.mark.parametrize("model", ["horizon", "random-walk"])
def test_load_driven_headroom_never_undercuts_the_demand_and_decays_when_the_load_is_still(
    demands, quantile, startup, bounds, model
):
    # One active session per GPU (0.1 s per session, SLO 0.12 s): the budget is the demand.
    latency = BatchLatencyModel((1, 8), (0.1, 0.8))
    policy = make("autoscaling", "load-driven", headroom_quantile=quantile, downscale_delay_s=0.0,
                  headroom_model=model)
    low, high = bounds
    state, n = policy.initial_state(), low
    spares = []
    for k, d in enumerate(demands + [demands[-1]] * (20 + int(startup))):
        workers = tuple(WorkerView(f"w{i}", max_batch=4) for i in range(max(n, 1)))
        sessions = tuple(SessionView(f"s{i}", SessionStatus.PENDING) for i in range(d))
        snap = Snapshot(now_s=float(k), workers=workers, sessions=sessions, slo_s=0.12, latency=latency,
                        min_workers=low, max_workers=high, worker_startup_s=startup)
        actions, state = policy.decide(snap, state)
        targets = [a.n for a in actions if isinstance(a, ScaleTo)]
        n = targets[0] if targets else len(workers)
        assert low <= n <= high
        assert n >= min(d, high), f"target {n} below the demand {d}"
        spares.append(policy.headroom(snap, state))
    # the random-walk estimate decays at once; the horizon one once the last change is a
    # horizon old (until then that change is part of the swing it measures)
    still = spares[len(demands) + (0 if model == "random-walk" else int(startup) + 1):]
    assert all(b <= a for a, b in zip(still, still[1:])), f"headroom grew under a still load: {still}"
    if quantile <= 0.5 or startup == 0.0:
        assert max(spares) == 0
