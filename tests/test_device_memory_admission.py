"""Admission counts a CUDA worker's device memory (issue 13, item 5: "admission that
protects workers").

A worker with a CUDA device measures the memory free on it once its default model is
loaded (``torch.cuda.mem_get_info``, :func:`workers.plugin.device_free_bytes`) and sends
it with its ready report; the scheduler's admission then counts each session's weights,
state and activation reserve (``kernels/presets.py`` via :func:`framework.limits.session_memory`)
against it, as it counts a CPU worker's ``memory_limit``, and refuses with
:class:`~framework.errors.InsufficientMemory` naming the device.

On CPU (no CUDA here), the live test sends the ready report a 1 GiB CUDA worker would
send from one real LocalCluster worker (``worker.log_event``, the same call and topic
:class:`~workers.plugin.ModelHost` uses); everything after it is the real path: the
scheduler plugin's event hook, admission at open (named worker and placement), the typed
error. The ``gpu`` test runs the whole path on a CUDA worker.
"""

from __future__ import annotations

import pytest

from framework import Server
from framework.errors import InsufficientMemory
from framework.limits import GIB, session_memory
from framework.registry import PLUGIN_NAME
from workers.plugin import READY_TOPIC, device_free_bytes

PROMPT = "a lighthouse in fog"


def _report_device(dask_worker, free):
    """The ready report of a worker whose CUDA device has ``free`` bytes free after its model loaded."""
    dask_worker.log_event(READY_TOPIC, {"models": ["tiny"], "error": None, "device_free": free})


def _device_free(dask_scheduler):
    return dict(dask_scheduler.plugins[PLUGIN_NAME].admission.device_free)


def _wait_reported(server, worker, timeout=30.0):
    import time

    deadline = time.monotonic() + timeout
    while worker not in server.client.run_on_scheduler(_device_free):
        assert time.monotonic() < deadline, f"{worker}'s device report did not reach admission"
        time.sleep(0.1)


def test_a_cpu_worker_reports_no_device_memory():
    assert device_free_bytes("cpu") is None


def test_sessions_are_admitted_against_a_cuda_worker_s_free_device_memory():
    # 480x832 tiny: 0.88 GiB of state and activations; the device has 1 GiB free less the
    # 512 MiB reserve (turboserve.admission.device-memory-reserve), the CPU worker 4 GiB less 1 GiB.
    assert 0.5 * GIB < session_memory("tiny", 480, 832).per_session < 3 * GIB
    with Server.local(n_workers=2, model="tiny", store=None, dashboard_address=None, memory_limit="4GiB") as server:
        cpu, gpu = server.workers()
        server.client.run(_report_device, free=GIB, workers=[gpu])
        _wait_reported(server, gpu)
        with pytest.raises(InsufficientMemory, match=rf"worker {gpu} has 0.50 GiB free on its CUDA device"):
            server.open_session(PROMPT, height=480, width=832, worker=gpu)
        placed = server.open_session(PROMPT, height=480, width=832)
        assert placed.worker == cpu  # placement leaves out the device it does not fit
        small = server.open_session(PROMPT, worker=gpu)  # 64x64 fits the device
        assert [c.index for c in small.stream(1)] == [0]
        # A session that fits no worker even empty is refused at once, naming the largest.
        with pytest.raises(InsufficientMemory, match="the largest worker"):
            server.open_session(PROMPT, model="wan-1.3b")
        assert server.workers() == [cpu, gpu]


@pytest.mark.gpu
def test_a_cuda_worker_reports_its_free_device_memory_and_admission_refuses_what_does_not_fit():
    import torch

    with Server.local(n_workers=1, model="tiny", store=None, dashboard_address=None) as server:
        (w,) = server.workers()
        _wait_reported(server, w, timeout=120)
        free = server.client.run_on_scheduler(_device_free)[w]
        total = server.client.run(lambda: torch.cuda.mem_get_info()[1], workers=[w])[w]
        assert 0 < free <= total
        need = session_memory("wan-14b", 720, 1280)
        if need.weights + need.per_session <= free - GIB // 2:
            pytest.skip(f"a wan-14b 720x1280 session ({need.weights + need.per_session} B) fits this GPU "
                        f"({free} B free): no refusal to check")
        with pytest.raises(InsufficientMemory, match="free on its CUDA device"):
            server.open_session(PROMPT, model="wan-14b", height=720, width=1280)
        s = server.open_session(PROMPT)
        assert [c.index for c in s.stream(1)] == [0]
