"""The chunk-path benchmark's instruments (issue 12): what its lines say is what was counted.

``experiments.bench_chunk_paths`` holds a chunk future against the direct stream; its
figures are only as good as these: the garbage-collection counter, the per-chunk
arithmetic of its CPU and collection lines, and the comparison on a real cluster.
"""

from __future__ import annotations

import gc

import pytest

from experiments import bench_chunk_paths as bench


def test_gc_totals_counts_every_collection_and_the_full_ones_with_their_pause():
    before = bench.gc_totals()
    gc.collect(0)
    gc.collect(2)
    after = bench.gc_totals()
    assert after[0] - before[0] == 2  # both collections
    assert after[2] - before[2] == 1  # one of them full
    assert after[1] - before[1] >= after[3] - before[3] > 0  # seconds: all >= the full one's


def test_gc_totals_installs_its_callback_once_per_process():
    bench.gc_totals()
    bench.gc_totals()
    assert sum(hasattr(cb, "turboserve_totals") for cb in gc.callbacks) == 1


def test_gc_line_gives_collections_per_100_chunks_and_pause_per_chunk():
    # 4 chunks per path; this process's four figures, then the worker's.
    collected = {"direct": [2, 0.002, 0, 0.0, 1, 0.001, 0, 0.0],
                 "future": [6, 0.004, 1, 0.200, 8, 0.008, 1, 0.300]}
    line = bench.gc_line(collected, 4)
    future = next(row for row in line.splitlines() if row.strip().startswith("future"))
    assert "client+scheduler 150.0 ( 1.00 ms/chunk), full 25.0 (50.00 ms/chunk)" in future
    assert "worker 200.0 ( 2.00 ms/chunk), full 25.0 (75.00 ms/chunk)" in future


def test_cpu_lines_take_the_idle_rate_times_the_longer_window_out():
    # The future's window is 0.1 s longer; at 20 ms/s of idle work that is 2 ms of its 5 ms more.
    cpu = {"direct": [(0.001, 0.05, 0.06, 0.002)], "future": [(0.006, 0.05, 0.06, 0.002)]}
    windows = {"direct": [0.2], "future": [0.3]}
    idle = [(0.02, 0.0, 0.0, 0.0)]
    first = bench.cpu_lines(cpu, windows, idle, 1.5).splitlines()[1]
    assert first.split()[-5:] == ["6.00", "+5.00", "+3.00", "(", "20.0)"]


@pytest.mark.slow
def test_chunk_paths_on_a_real_cluster_prints_both_paths_and_counts_the_future_s_task(capsys):
    from experiments.bare_model import BareModel
    from framework import Server

    bare = BareModel("tiny", [1])
    with Server.local(n_workers=1, model="tiny", dashboard_address=":0", checkpoint_every=0,
                      adaptive=False) as server:
        bench.chunk_paths(server, bare, 2)
        worker = server.workers()[0]
        frozen = lambda: server.client.run(gc.get_freeze_count, workers=[worker])[worker] > 0  # noqa: E731
        worker_frozen = frozen()  # a worker freezes its heap after its model load (turboserve.engine.gc-freeze)
        here, here_frozen, there, there_frozen = bench.full_collection_ms(server, worker)
        # Both processes hold torch and Dask: a full collection walks them, unless the heap is frozen.
        assert here_frozen < here and there_frozen < there
        # ...and the measurement leaves both as it found them.
        assert gc.get_freeze_count() == 0
        assert frozen() == worker_frozen
    out = capsys.readouterr().out
    assert "the future's extra cost" in out
    counts = next(line for line in out.splitlines() if "Dask's counters" in line)
    # A future chunk is one Dask task on the worker (several transitions), a streamed one none.
    assert "task transitions direct  0.0" in counts
    assert "future  0.0" not in counts.split("task transitions")[1].split("messages")[0]


def test_median_interval_is_seeded_and_holds_the_median():
    xs = [0.001 * i for i in range(1, 40)]
    low, high = bench.median_interval(xs)
    assert (low, high) == bench.median_interval(xs)
    assert low <= 0.020 <= high  # the sample's median
    assert low < high


def test_target_verdict_reads_the_bound_of_2_ms_or_5_percent_of_the_step_off_the_interval():
    step = 0.060  # 5% of it is 3 ms, above 2 ms
    assert bench.target_verdict(0.0005, 0.0029, step) == "target met"
    assert bench.target_verdict(0.0031, 0.0050, step) == "target NOT met"
    assert bench.target_verdict(0.0010, 0.0050, step).startswith("undecided")
    assert bench.target_verdict(0.0010, 0.0019, 0.020) == "target met"  # 2 ms when 5% is less
