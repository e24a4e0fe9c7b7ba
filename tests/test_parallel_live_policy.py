"""The adaptive parallelism policy in the live control loop on a real LocalCluster.

Two CPU workers (tiny model, gloo). The loop runs with ``parallelism="adaptive"`` and a
latency model whose batch-1 step misses the SLO at degree 1 and meets it at degree 2 with
the step model the snapshot carries (:func:`framework.control_settings.parallel_step_model`
of ``tiny``): the loop forms the degree-2 group through ``set_parallelism`` by itself, a
session opened afterwards is placed on the group's leader, and its chunks are the model's
degree-1 frames within one uint8 level.
"""

from __future__ import annotations

import time

import pytest

from framework import Server
from test_parallel_live import PROMPT, assert_within_one_level, reference


@pytest.mark.slow
def test_the_loop_forms_the_group_the_deadline_needs_and_serves_a_session_on_it(tmp_path):
    with Server.local(n_workers=2, model="tiny", store=str(tmp_path), adaptive=False, dashboard_address=":0") as server:
        server.start_control(
            placement="least-loaded", autoscaling="fixed", autoscaling_params={"n": 2}, offload="never",
            minimum=2, maximum=2, interval_s=0.5, slo_s=0.6, latency_points=((1, 1.0), (8, 1.5)), measure=False,
            parallelism="adaptive", parallelism_params={"degrees": (1, 2)},
        )
        deadline = time.monotonic() + 120
        groups = []
        while time.monotonic() < deadline:
            groups = [row for row in server.parallelism() if row["degree"] == 2]
            if groups:
                break
            time.sleep(0.5)
        (group,) = groups
        assert sorted(group["workers"]) == sorted(server.workers())
        s = server.open_session(PROMPT, seed=3)
        chunks = list(s.stream(3))
        assert s.worker == group["leader"] and all(c.worker == group["leader"] for c in chunks)
        assert_within_one_level(chunks, reference(3, 3))
        s.close()
