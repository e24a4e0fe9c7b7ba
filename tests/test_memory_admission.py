"""Admission by memory (issue 13, item 5): a session is admitted only where its model's
weights, its state and its activations fit the worker's memory limit.

Pure tests of :mod:`framework.limits` (the estimate against the model actually built, the
fit arithmetic, the message), then live: on a CPU worker with a 4 GiB memory limit,
``open_session(model="wan-1.3b")`` and a ``tiny`` session at 720x1280 are refused with
:class:`framework.errors.InsufficientMemory` at once, the worker stays up, and a small
session still streams. (Issue 13 saw the worker die after 11-18 s and an untyped
``CommClosedError``.)
"""

from __future__ import annotations

import os
import time

import pytest

from framework.errors import CapacityExceeded, InsufficientMemory
from framework.limits import (
    GIB,
    MemoryNeed,
    activation_bytes,
    insufficient_memory_message,
    memory_fit,
    session_memory,
    weights_bytes,
)
from kernels.presets import PRESETS, get_preset


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_the_weights_estimate_is_never_below_the_built_model_and_close_to_it(name):
    torch = pytest.importorskip("torch")
    from kernels.networks import build_transformer, build_vae

    preset = get_preset(name)
    with torch.device("meta"):
        nets = (build_transformer(preset), build_vae(preset))
    real = sum(t.numel() for m in nets for t in [*m.parameters(), *m.buffers()]) * preset.dtype_bytes
    estimate = weights_bytes(preset)
    assert real <= estimate <= 1.2 * real, (name, real, estimate)
    if name.startswith("wan"):
        assert estimate <= 1.02 * real, (name, real, estimate)


def test_state_and_activations_grow_with_the_resolution():
    small, large = session_memory("tiny", 64, 64), session_memory("tiny", 720, 1280)
    assert small.weights == large.weights
    assert large.state > 10 * small.state
    assert large.activations > 1000 * small.activations
    assert activation_bytes("tiny", 720, 1280) == large.activations
    assert session_memory("wan-1.3b") == session_memory("wan-1.3b", 480, 832)  # the preset's default resolution


def test_the_fit_counts_weights_once_the_reserve_and_what_the_worker_holds():
    need = MemoryNeed(weights=3 * GIB, state=2 * GIB, activations=GIB)
    assert memory_fit(need, 8 * GIB, reserve=GIB).needed == 6 * GIB
    assert not memory_fit(need, 6 * GIB, reserve=GIB).fits  # 6 GiB needed, 5 GiB free
    assert memory_fit(need, 6 * GIB, reserve=GIB, weights_loaded=True).fits  # 3 GiB needed
    assert not memory_fit(need, 6 * GIB, reserve=GIB, weights_loaded=True, held=3 * GIB).fits
    assert memory_fit(need, GIB, reserve=2 * GIB).available == 0  # never negative


def test_the_wan_model_does_not_fit_a_4_gib_worker_and_the_message_says_why():
    need = session_memory("wan-1.3b")
    fit = memory_fit(need, 4 * GIB)
    assert not fit.fits and fit.needed > 3 * fit.available
    text = insufficient_memory_message("wan-1.3b", 480, 832, need, fit, "worker tcp://w:1")
    for part in ("wan-1.3b", "480x832", "needs 13.67 GiB", "weights 2.93 GiB", "3.00 GiB free", "memory_limit"):
        assert part in text, (part, text)


def test_insufficient_memory_is_a_capacity_error():
    assert issubclass(InsufficientMemory, CapacityExceeded)


@pytest.mark.slow
def test_a_session_that_does_not_fit_a_4_gib_worker_is_refused_before_it_runs(tmp_path):
    from framework import Server

    with Server.local(n_workers=1, model="tiny", store=str(tmp_path), memory_limit="4GiB",
                      dashboard_address=None) as server:
        (worker,) = server.workers()
        pid = server.client.run(os.getpid)[worker]
        for kwargs in ({"model": "wan-1.3b"}, {"height": 720, "width": 1280},
                       {"model": "wan-1.3b", "worker": worker}):
            t0 = time.monotonic()
            with pytest.raises(InsufficientMemory, match=r"needs .* GiB .* free under its memory limit"):
                server.open_session("a red fox", seed=1, **kwargs)
            assert time.monotonic() - t0 < 5.0
        assert server.workers() == [worker] and server.client.run(os.getpid)[worker] == pid  # still the same process
        assert [r for r in server.sessions() if r["status"] != "closed"] == []
        s = server.open_session("a red fox", seed=1)  # a small session still fits and streams
        assert [c.index for c in s.stream(2)] == [0, 1]


@pytest.mark.slow
def test_a_migration_to_a_worker_the_session_does_not_fit_is_refused_and_it_stays(tmp_path):
    from framework import Server

    # 6 GiB workers, 5 GiB free each: one tiny 720x1280 session (3.5 GiB of activations) fits, two do not.
    with Server.local(n_workers=2, model="tiny", store=str(tmp_path), memory_limit="6GiB",
                      dashboard_address=None) as server:
        a, b = server.workers()
        s1 = server.open_session("a red fox", seed=1, height=720, width=1280, worker=a)
        server.open_session("a red fox", seed=2, height=720, width=1280, worker=b)
        with pytest.raises(InsufficientMemory, match=f"worker {b} has"):
            s1.migrate(b)
        rec = next(r for r in server.sessions() if r["id"] == s1.id)
        assert rec["worker"] == a and rec["status"] in ("idle", "active"), rec
        s1.suspend(to="disk")
        with pytest.raises(InsufficientMemory):
            s1.resume(worker=b)
        assert next(r for r in server.sessions() if r["id"] == s1.id)["status"] == "suspended"
