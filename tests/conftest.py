"""Shared pytest setup: the `gpu` marker skips cleanly (with the reason) without CUDA;
the serving cluster and reference frames of the determinism tests.

``server`` is the module-scoped cluster of three CPU workers (tiny model, zarr checkpoints
every 2 chunks) that ``test_runtime_server.py`` and ``test_session_futures.py`` share the
shape of; a module that needs another cluster defines its own ``server`` fixture, which
pytest prefers to this one. ``reference`` gives the frames of the model's own
uninterrupted run.
"""

from __future__ import annotations

import dask.config
import pytest

# The closed control loop is on by default (turboserve.control.auto-start); tests run
# their servers without it (a policy's migrations and offloads would move sessions under
# the tests' feet) and start it where they test it.
dask.config.set({"turboserve.control.auto-start": False})


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch missing is a setup error reported elsewhere
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One LocalCluster of three tiny-model workers for the whole module (torch loads here)."""
    from framework import Server

    store = tmp_path_factory.mktemp("state")
    with Server.local(
        n_workers=3, model="tiny", store=str(store), checkpoint_every=2, dashboard_address=":0",
        settings={"max_sessions_per_worker": 6, "placement": "least-loaded"},
    ) as server:
        yield server


@pytest.fixture(scope="module")
def reference():
    """``frames(prompt, seed, n)``: chunks 0..n-1 of the model's uninterrupted run of ``(prompt, seed)``."""
    from kernels.model import StreamingVideoModel

    # One torch thread, as in a Dask worker (OMP_NUM_THREADS=1): the float reductions,
    # and therefore the rounded frames, then match bit for bit.
    model = StreamingVideoModel.from_preset("tiny", device="cpu", weights_seed=0, num_threads=1)
    cache: dict[tuple[str, int], list] = {}

    def frames(prompt: str, seed: int, n: int) -> list:
        state, done = cache.setdefault((prompt, seed), [model.new_session(prompt, seed), []])
        while len(done) < n:
            done.append(model.step([state])[0])
        return done[:n]

    return frames


@pytest.fixture(scope="session")
def burst_replay(tmp_path_factory):
    """``(trace, live, config)``: one live replay of a compressed burst trace with the closed loop.

    Shared by tests/test_controller_live.py and tests/test_parity.py (a replay takes
    about 35 s), with ``python -m experiments.parity``'s settings (``PARITY_CONFIG``: one
    active session per worker whatever this machine's speed, so the scale decisions are
    deterministic; ``PARITY_CONTROL``: no autoscaler headroom, any predicted gain worth a
    move). ``config``: the ``turboserve.*`` settings it ran under (simulate it under them too).
    """
    import dask

    from experiments.live_replay import replay_live
    from experiments.parity import PARITY_CONFIG, PARITY_CONTROL
    from experiments.replay_common import burst_trace

    trace = burst_trace(base=1, burst=3, burst_at_s=10, burst_len_s=100, tail_s=60)
    store = str(tmp_path_factory.mktemp("burst-state"))
    config = PARITY_CONFIG
    with dask.config.set({**config, "turboserve.state.store": store}):
        live = replay_live(trace, time_scale=5, workers=1, seed=0, progress=False, control=PARITY_CONTROL)
    return trace, live, config


def _kill_at_actor_start(dask_scheduler, kind, pid=None, pids=None):
    """SIGKILL a worker when the serving plugin next starts a session's actor from ``kind``.

    ``kind``: ``"peer"`` (a migration's target) or ``"store"`` (a resume or recovery from
    the checkpoint store). The process killed is ``pid``, or ``pids[worker]`` of the
    worker the actor starts on. One kill only; run it with ``client.run_on_scheduler``.
    """
    import os
    import signal

    from framework.registry import PLUGIN_NAME

    actors = dask_scheduler.plugins[PLUGIN_NAME].actors
    original = actors.start

    async def start(rec, worker, source):
        if source.get("kind") == kind:
            del actors.start  # back to the class's method: one kill only
            os.kill(pid if pid is not None else pids[worker], signal.SIGKILL)
        return await original(rec, worker, source)

    actors.start = start


@pytest.fixture
def kill_at_actor_start():
    """:func:`_kill_at_actor_start`, for ``server.client.run_on_scheduler(kill_at_actor_start, kind=..., pid=...)``."""
    return _kill_at_actor_start
