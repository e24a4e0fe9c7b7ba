"""What a viewer feels, in the simulator: burst starts apart from in-stream chunks, phase
alignment of coalesced steps, and the quality valve."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from experiments.results import burst_first_mask, latency_stats
from experiments.sim import PolicySet, SimConfig, simulate
from policies.registry import make
from policies.types import BatchLatencyModel, Place, SessionStatus

COLUMNS = ["time_s", "session_id", "event", "client_id", "model", "chunk_frames", "height", "width", "fps"]


def trace(*events: tuple) -> pd.DataFrame:
    """Rows ``(time, session, event)``; open rows get 12 frames at 16 fps (a 0.75 s period)."""
    rows = []
    for t, sid, ev in events:
        shape = (12, 64, 64, 16) if ev == "open" else (None, None, None, None)
        rows.append((float(t), sid, ev, "c0", "tiny" if ev == "open" else None, *shape))
    return pd.DataFrame(rows, columns=COLUMNS).sort_values("time_s", kind="stable").reset_index(drop=True)


class OneWorker:
    """Test placement: every pending session onto the first running worker."""

    kind, name = "placement", "one-worker"

    def initial_state(self):
        return None

    def decide(self, snap, state):
        running = snap.running_workers()
        return [Place(s.session_id, running[0].address) for s in snap.sessions
                if s.status is SessionStatus.PENDING and running], state


def run(df, latency, **cfg):
    config = SimConfig(initial_workers=1, max_workers=1, **cfg)
    policies = PolicySet(OneWorker(), make("autoscaling", "fixed", n=1), make("offload", "never"))
    return simulate(df, policies, config, latency=latency)


# ---------------------------------------------------------------- burst starts


def test_the_first_chunk_of_each_burst_is_an_admission_chunk_not_an_in_stream_one():
    flat = BatchLatencyModel((1,), (0.1,))
    result = run(trace((0, "a", "open"), (3, "a", "idle"), (10, "a", "active"), (13, "a", "close")), flat)
    chunks = result.chunks.assign(first=result.burst_first)
    firsts = chunks[chunks["first"]]
    assert list(firsts["index"]) == [0, 4]  # chunks 0-3 in [0, 3), then the burst at 10 s
    assert firsts["t_request_s"].tolist() == [0.0, 10.0]
    # the chunk table alone tells the same (a request later than the playback cadence)
    np.testing.assert_array_equal(burst_first_mask(result.chunks, 0.75), result.burst_first)


def test_latency_stats_split_in_stream_chunks_from_admission_waits():
    lat = np.array([5.0, 0.5, 0.6, 2.0, 0.7, 0.4])
    index = np.array([0, 1, 2, 3, 4, 5])
    first = np.array([True, False, False, True, False, False])  # chunk 3 came back from idle
    stats = latency_stats(lat, 0.75, index, first)
    assert stats["instream_max_s"] == 0.7 and stats["stalls"] == 0
    assert stats["ttfc_max_s"] == 5.0 and stats["resume_wait_max_s"] == 2.0
    assert stats["max_latency_after_first_s"] == 2.0  # the older column counts the resume
    assert latency_stats(lat, 0.75, index)["instream_max_s"] == 2.0  # index 0 only


# ---------------------------------------------------------------- phase alignment

CHEAP = BatchLatencyModel((1, 2), (0.4, 0.44))  # batching is almost free: a = 0.1


def staggered(n: int, gap: float, horizon: float = 30.0) -> pd.DataFrame:
    events = []
    for i in range(n):
        events += [(i * gap, f"s{i}", "open"), (horizon, f"s{i}", "close")]
    return trace(*events)


def test_without_alignment_sessions_out_of_phase_wait_for_each_others_steps():
    result = run(staggered(4, 0.2), CHEAP, align_phases=False)
    instream = result.latency_s[~result.burst_first]
    assert instream.max() > 0.75  # each waits for the step of the others


def test_aligned_sessions_share_steps_and_meet_every_in_stream_deadline():
    result = run(staggered(4, 0.2), CHEAP, align_phases=True)
    instream = result.latency_s[~result.burst_first]
    assert instream.max() <= 0.75 + 1e-9
    unaligned = run(staggered(4, 0.2), CHEAP, align_phases=False)
    assert result.chunks["batch_size"].mean() > unaligned.chunks["batch_size"].mean()
    assert result.chunks["batch_size"].mean() > 3.5  # all four in one step, nearly always


def test_alignment_does_not_join_sessions_when_batching_does_not_pay():
    # a = 1: one more session costs a whole batch-1 step; nothing is made ahead
    dear = BatchLatencyModel((1, 2), (0.3, 0.6))
    result = run(staggered(2, 0.35), dear, align_phases=True)
    assert (result.chunks["t_start_s"] >= result.chunks["t_request_s"] - 1e-9).all()


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    offsets=st.lists(st.floats(0.0, 0.74), min_size=2, max_size=6),
    a=st.sampled_from([0.0, 0.05, 0.1, 0.3]),
)
# Found by this test: four sessions open at 0 s and one at 0.125 s; the latecomer's first
# chunk ran alone at 0.57-0.87 s, and the other four, due at 0.75 s, waited for it and
# then shared a step of five: 0.12 + 0.66 = 0.78 s. join_ahead now lets a first chunk
# (an admission wait) yield to in-stream chunks that would be late waiting for its step:
# all five start at 0.57 s. Derandomized so CI runs the same cases.
@example(offsets=[0.0, 0.0, 0.0, 0.0, 0.125], a=0.3)
def test_alignment_never_makes_an_in_stream_chunk_miss_a_deadline_a_full_batch_meets(offsets, a):
    """Whatever the phases: when even a step of every session meets the SLO, aligned
    steps keep every in-stream chunk within it (made-ahead chunks count 0 s)."""
    latency = BatchLatencyModel((1, 2), (0.3, 0.3 * (1 + a)))
    if latency.predict(len(offsets)) > 0.75:
        return
    df = trace(*[e for i, t in enumerate(offsets) for e in ((t, f"s{i}", "open"), (20.0, f"s{i}", "close"))])
    result = run(df, latency, align_phases=True)
    instream = result.latency_s[~result.burst_first]
    assert (instream <= 0.75 + 1e-9).all() and (instream >= 0).all()


# ---------------------------------------------------------------- quality valve

SLOW = BatchLatencyModel((1, 2), (0.3, 0.6))  # 3 sessions: 0.9 s, over the 0.75 s SLO


@pytest.mark.parametrize("valve", [False, True])
def test_the_quality_valve_degrades_steps_that_would_miss_the_slo_and_counts_them(valve):
    df = trace(*[e for i in range(3) for e in ((0.0, f"s{i}", "open"), (15.0, f"s{i}", "close"))])
    result = run(df, SLOW, quality_valve=valve, valve_step_ratio=0.7, align_phases=False)
    chunks = result.chunks
    full = chunks["batch_size"] == 3
    assert full.any()
    steps = (chunks["t_done_s"] - chunks["t_start_s"])[full]
    if valve:
        np.testing.assert_allclose(steps, 0.9 * 0.7)
        assert result.counters["degraded_chunks"] == int(result.degraded.sum()) == int(full.sum())
        assert not result.degraded[~full.to_numpy()].any()  # smaller steps meet the SLO at full quality
    else:
        np.testing.assert_allclose(steps, 0.9)
        assert result.counters.get("degraded_chunks", 0) == 0 and not result.degraded.any()
