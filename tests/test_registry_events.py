"""``Session.events()`` keeps what happened after the actor that saw it died (issue 13,
"no silent repairs"): the registry on the scheduler records migrations, a worker lost
under the session and its recovery at chunk k; an actor's own list goes through a
suspension to disk.

Live, on two CPU workers (tiny model, a checkpoint after every chunk): a session is
migrated, then the worker it migrated to is SIGKILLed; the client, which has not read
any event before, then sees the migration once (the actor that recorded it is dead), the
worker lost and the recovery at the checkpoint's chunk. A second session suspended to
disk and resumed still shows the ``started`` event of its first actor.
"""

from __future__ import annotations

import os
import signal

import pytest

from framework import Server

pytestmark = pytest.mark.slow


def test_the_registry_keeps_migration_worker_loss_and_recovery_after_the_actor_died(tmp_path):
    with Server.local(n_workers=2, model="tiny", store=str(tmp_path), checkpoint_every=1,
                      dashboard_address=None) as server:
        s = server.open_session("a heron in the reeds", seed=5)
        assert [c.index for c in s.stream(2)] == [0, 1]
        source = s.worker
        (target,) = [w for w in server.workers() if w != source]
        s.migrate(target)
        assert [c.index for c in s.stream(1)] == [2]
        os.kill(server.client.run(os.getpid, workers=[target])[target], signal.SIGKILL)
        assert [c.index for c in s.stream(2)] == [3, 4]

        events = s.events()
        kinds = [e["kind"] for e in events]
        migrated = [e for e in events if e["kind"] == "migrated"]
        assert len(migrated) == 1, events
        assert migrated[0]["from_worker"] == source and migrated[0]["worker"] == target
        (lost,) = [e for e in events if e["kind"] == "worker-lost"]
        assert lost["worker"] == target and lost["chunk"] >= 3 and "left" in lost["why"], lost
        (recovered,) = [e for e in events if e["kind"] == "recovered"]
        # from the newest checkpoint that landed: the source's save of chunk 1 may be fenced off by
        # the move (its ownership ended) and the target's may not have landed before the kill, so
        # any chunk from 0 (a regeneration from the start) to 3 is a correct recovery
        assert recovered["worker"] != target and 0 <= recovered["from_chunk"] <= 3, recovered
        assert kinds.index("migrated") < kinds.index("worker-lost") < kinds.index("recovered"), kinds

        s2 = server.open_session("a heron in the reeds", seed=6)
        assert [c.index for c in s2.stream(1)] == [0]
        s2.suspend(to="disk")
        s2.resume()
        assert [c.index for c in s2.stream(1)] == [1]
        kinds2 = [e["kind"] for e in s2.events()]
        assert "started" in kinds2 and "suspended" in kinds2 and "restored" in kinds2, kinds2
