"""Every state move is a transaction with an ownership epoch per session (issue 13).

- The checkpoint store fences writers: once an owner claimed epoch ``e``, a save by a
  writer of a lower epoch is refused and leaves the checkpoint as it was, so two
  workers can never both write one session's checkpoint.
- On a real LocalCluster (tiny model, CPU workers): the registry's epoch is the one
  the store records, after an open, a migration, a suspension to disk and a resume;
  a migration whose target is SIGKILLed 0, 150 or 400 ms into ``migrate()`` returns
  (an error before the commit, the session goes on at its source; after it, a worker
  loss recovered from the checkpoint), and the stream has every chunk once, each
  bit-identical to an uninterrupted run; an actor whose epoch is stale hands out no
  chunk and its checkpoints are refused.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

from framework import Server
from kernels.model import StreamingVideoModel
from storage import CheckpointFenced, CheckpointStore
from workers.actor_rpc import call_actor
from workers.errors import SessionMoved

PROMPT = "a lighthouse in a storm"


@pytest.fixture(scope="module")
def model():
    return StreamingVideoModel.from_preset("tiny", device="cpu", weights_seed=0, num_threads=1)


def _states(model, seed: int, chunks: list[int]):
    """The session's state after each number of chunks in ``chunks`` (ascending)."""
    state, out = model.new_session(PROMPT, seed), []
    for n in chunks:
        while state.chunk_index < n:
            model.step([state])
        out.append(state.to("cpu"))
    return out


# ------------------------------------------------------------------ the store's fence


def test_a_save_by_an_older_owner_is_refused_and_changes_nothing(tmp_path, model):
    early, late = _states(model, 1, [1, 2])
    old_owner, new_owner = CheckpointStore(tmp_path), CheckpointStore(tmp_path)  # two workers, one store
    old_owner.claim("s", 1)
    old_owner.save("s", early)
    new_owner.claim("s", 2)
    new_owner.save("s", late)
    with pytest.raises(CheckpointFenced, match="epoch 1 is older than the owner's 2"):
        old_owner.save("s", early)
    assert new_owner.load("s").equal(late)
    assert [g for g in new_owner._root["s"].group_keys()] == [new_owner.info("s").generation]
    assert new_owner.owner_epoch("s") == 2


def test_an_owner_claimed_while_a_save_is_written_wins(tmp_path, model, monkeypatch):
    (state,) = _states(model, 2, [1])
    old_owner, new_owner = CheckpointStore(tmp_path), CheckpointStore(tmp_path)
    old_owner.claim("s", 3)
    real = old_owner._check_owner
    calls = []

    def claim_in_between(session_id, epoch, drop=None):
        calls.append(drop)
        if drop is not None:  # the arrays are written, the pointer not yet switched
            new_owner.claim("s", 4)
        return real(session_id, epoch, drop=drop)

    monkeypatch.setattr(old_owner, "_check_owner", claim_in_between)
    with pytest.raises(CheckpointFenced):
        old_owner.save("s", state)
    assert len(calls) == 2
    assert not new_owner.exists("s") and not list(new_owner._root["s"].group_keys())


def test_claiming_an_epoch_lower_than_the_recorded_one_is_refused(tmp_path):
    store = CheckpointStore(tmp_path)
    store.claim("s", 5)
    store.claim("s", 5)  # the same owner again: fine
    with pytest.raises(CheckpointFenced, match="epoch 4 is stale"):
        CheckpointStore(tmp_path).claim("s", 4)
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="an ownership epoch is an int >= 1"):
            store.claim("s", bad)
    assert store.owner_epoch("s") == 5 and store.owner_epoch("never-claimed") is None


def test_saves_without_a_claim_are_not_fenced(tmp_path, model):
    """Tools that write a checkpoint outside a cluster (experiments, tests) are unchanged."""
    (state,) = _states(model, 3, [1])
    store = CheckpointStore(tmp_path)
    store.save("s", state)
    assert store.owner_epoch("s") is None and store.load("s").equal(state)


def test_the_pointer_switch_is_one_document_write(tmp_path, model, monkeypatch):
    """A worker killed mid-switch leaves the old pointer or the new one, never a mix of both."""
    first, second = _states(model, 6, [1, 2])
    store = CheckpointStore(tmp_path)
    store.save("s", first)
    written = []
    real_set = type(store._store).set

    async def counting_set(self, key, value):
        written.append(key)
        return await real_set(self, key, value)

    monkeypatch.setattr(type(store._store), "set", counting_set)
    store.save("s", second)
    assert written.count("s/zarr.json") == 1
    assert store.load("s").equal(second)


def test_a_closed_session_s_tombstone_refuses_its_last_owner_s_queued_save(tmp_path, model):
    (state,) = _states(model, 8, [1])
    owner = CheckpointStore(tmp_path)
    owner.claim("s", 3)
    owner.save("s", state)
    assert CheckpointStore(tmp_path).delete("s", fence=4)
    with pytest.raises(CheckpointFenced):
        owner.save("s", state)  # queued before the close, run after it
    assert not owner.exists("s") and owner.list() == [] and owner.owner_epoch("s") == 4


# ------------------------------------------------------------------ live


def _reference(model, seed: int, n: int) -> list[np.ndarray]:
    state = model.new_session(PROMPT, seed)
    return [model.step([state])[0] for _ in range(n)]


def _record(server, session):
    return next(r for r in server.sessions() if r["id"] == session.id)


@pytest.mark.slow
def test_a_migration_whose_target_dies_at_0_150_and_400_ms_loses_and_repeats_nothing(tmp_path, model):
    delays = (0.0, 0.15, 0.4)
    with Server.local(n_workers=3, model="tiny", store=str(tmp_path), checkpoint_every=1,
                      dashboard_address=None) as server:
        s = server.open_session(PROMPT, seed=7)
        chunks = list(s.stream(2))
        outcomes = []
        for delay in delays:
            # A source and a live target: the worker killed last restarts meanwhile (a
            # restart takes seconds: waiting for all three cost one restart a kill).
            server.client.wait_for_workers(2, timeout=120)
            source = s.worker
            target = next(w for w in server.workers() if w != source)
            pid = server.client.run(os.getpid, workers=[target])[target]
            outcome: dict = {}

            def move(target=target, outcome=outcome):
                try:
                    s.migrate(target)
                    outcome["result"] = "committed"
                except Exception as exc:  # the typed error the client sees
                    outcome["result"] = exc

            t0 = time.monotonic()
            mover = threading.Thread(target=move, daemon=True)
            mover.start()
            time.sleep(delay)
            os.kill(pid, signal.SIGKILL)
            mover.join(timeout=150)
            assert not mover.is_alive(), f"migrate() hung after its target died {delay * 1000:.0f} ms in"
            outcomes.append((delay, outcome["result"], time.monotonic() - t0))
            if outcome["result"] != "committed":
                assert "goes on at the source" in str(outcome["result"]), outcome
                assert _record(server, s)["worker"] == source
            chunks += list(s.stream(2))
        s.close()
    print(outcomes)
    assert [c.index for c in chunks] == list(range(len(chunks))) == list(range(2 + 2 * len(delays)))
    for got, want in zip(chunks, _reference(model, 7, len(chunks)), strict=True):
        np.testing.assert_array_equal(got.frames, want)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """One 2-worker cluster (a checkpoint every chunk) for the live tests that kill nothing.

    Its tests run after the kill test (which starts its own cluster), so that the two
    clusters never run at once.
    """
    root = tmp_path_factory.mktemp("live-state")
    with Server.local(n_workers=2, model="tiny", store=str(root), checkpoint_every=1,
                      dashboard_address=None) as server:
        yield server, root


@pytest.mark.slow
def test_the_registry_s_epoch_is_the_store_s_through_every_move(live, model):
    server, root = live
    store = CheckpointStore(root)
    s = server.open_session(PROMPT, seed=4)
    chunks = list(s.stream(1))
    epochs = [_record(server, s)["epoch"]]
    s.migrate(next(w for w in server.workers() if w != s.worker))
    chunks += list(s.stream(1))
    epochs.append(_record(server, s)["epoch"])
    assert store.owner_epoch(s.id) == epochs[-1]
    s.suspend(to="disk")
    s.resume(next(w for w in server.workers() if w != s.worker))
    chunks += list(s.stream(1))
    epochs.append(_record(server, s)["epoch"])
    assert store.owner_epoch(s.id) == epochs[-1]
    s.close()
    assert epochs == sorted(set(epochs)) and epochs[0] >= 1, epochs
    for got, want in zip(chunks, _reference(model, 4, 3), strict=True):
        np.testing.assert_array_equal(got.frames, want)


@pytest.mark.slow
def test_a_stale_owner_hands_out_no_chunk_and_cannot_save(live):
    server, root = live
    s = server.open_session(PROMPT, seed=5)
    list(s.stream(1))
    info = s.record()
    worker, key, epoch = info["worker"], info["actor_key"], info["epoch"]
    rpc = s._channel.rpc_to(worker)  # with the session's access token
    server.client.sync(call_actor, rpc, key, "request", 3)
    # A newer owner (a recovery elsewhere, while this worker lives on) claims the session.
    CheckpointStore(root).claim(s.id, epoch + 1)
    with pytest.raises(SessionMoved, match=f"epoch {epoch} is stale"):
        server.client.sync(call_actor, rpc, key, "poll", 1, 10.0)
    events = server.client.sync(call_actor, rpc, key, "events")
    assert [e for e in events if e["kind"] == "fenced"][0]["owner_epoch"] == epoch + 1
    state = server.client.sync(call_actor, rpc, key, "info")
    assert not state["attached"] and state["unread"] == 0  # off the engine, nothing to hand out
    assert CheckpointStore(root).owner_epoch(s.id) == epoch + 1  # its saves did not undo the claim
