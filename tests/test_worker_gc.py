"""A worker freezes the heap it loaded its model into (``turboserve.engine.gc-freeze``).

Real LocalCluster worker processes: after the model load, every object then alive is in
the permanent generation (``gc.get_freeze_count() > 0``), so a full collection no longer
scans the model, torch and Dask; with the setting off nothing is frozen.
"""

from __future__ import annotations

import gc

import dask
import pytest

from framework import Server


@pytest.mark.parametrize("freeze", [True, False])
def test_a_worker_freezes_its_heap_after_loading_its_model_unless_told_not_to(freeze):
    with dask.config.set({"turboserve.engine.gc-freeze": freeze}), \
            Server.local(n_workers=1, model="tiny", adaptive=False, dashboard_address=None) as server:
        s = server.open_session("a kite over the dunes", seed=1)
        assert [c.index for c in s.stream(1)] == [0]  # it serves as before
        (frozen,) = server.client.run(gc.get_freeze_count).values()
    assert (frozen > 0) == freeze, frozen
