"""Steering a live session (issue 12): ``Session.set_prompt`` on a real LocalCluster.

A switch takes effect at the next chunk boundary and is part of the session's state, so
the frames are a function of the prompt schedule: the same prompts at the same chunk
indices give the frames of the model's own run with those switches, whatever happened
to the session in between (a suspension to host or to disk, a resume on another worker,
a migration).
"""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
from distributed.core import Status

from framework import InvalidRequest, Server
from kernels.model import StreamingVideoModel, prompt_schedule

PROMPT = "a red fox running through snow"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    store = tmp_path_factory.mktemp("state")
    # No periodic checkpoints: a recovery restarts from the checkpoint a switch writes, or from chunk 0.
    # Three workers: each of the two worker-kill tests below leaves one fewer.
    with Server.local(n_workers=3, model="tiny", store=str(store), checkpoint_every=0, adaptive=False,
                      dashboard_address=":0") as server:
        yield server


@pytest.fixture(scope="module")
def model():
    return StreamingVideoModel.from_preset("tiny", device="cpu", weights_seed=0, num_threads=1)


def reference(model, seed: int, switches: dict[int, str], n: int) -> list[np.ndarray]:
    """Frames of the model's uninterrupted run with ``switches`` ``{chunk: prompt}``."""
    state, frames = model.new_session(PROMPT, seed), []
    for k in range(n):
        if k in switches:
            state = model.set_prompt(state, switches[k])
        frames.append(model.step([state])[0])
    return frames


def _assert_same(chunks, expected) -> None:
    assert [c.index for c in chunks] == list(range(len(expected)))
    for c, e in zip(chunks, expected):
        assert np.array_equal(c.frames, e), f"chunk {c.index} differs from the run with the same prompt schedule"


def test_a_switch_takes_effect_at_the_next_chunk_boundary(server, model):
    s = server.open_session(PROMPT, seed=0)
    chunks = list(s.stream(2))
    k = s.set_prompt("a blue bird over the sea")
    assert k >= 2  # never a chunk already made (one may have been made ahead)
    chunks += list(s.stream(k + 2 - len(chunks)))
    _assert_same(chunks, reference(model, 0, {k: "a blue bird over the sea"}, k + 2))
    unswitched = reference(model, 0, {}, k + 2)
    assert not np.array_equal(chunks[k + 1].frames, unswitched[k + 1])  # the prompt did steer
    assert s.prompts == [(0, PROMPT), (k, "a blue bird over the sea")]
    assert [e["chunk"] for e in s.events() if e["kind"] == "prompt"] == [k]
    s.close()


def test_listings_and_cards_show_the_prompt_the_stream_was_steered_to(server):
    from framework.notebook import server_card, session_card

    s = server.open_session(PROMPT, seed=5)
    list(s.stream(1))
    s.set_prompt("a blue bird over the sea")
    (row,) = [r for r in server.sessions() if r["id"] == s.id]
    assert (row["prompt"], row["current_prompt"]) == (PROMPT, "a blue bird over the sea")  # opening, current
    assert session_card(s).prompt == "a blue bird over the sea"
    assert [c.prompt for c in server_card(server).sessions if c.session_id == s.id] == ["a blue bird over the sea"]
    other = Server(server.client.scheduler.address, control=False)  # another client, without its token
    try:
        (seen,) = [r for r in other.sessions() if r["id"] == s.id]
        assert "prompt" not in seen and "current_prompt" not in seen
    finally:
        other.close()
    s.close()


@pytest.mark.parametrize("tier", ["host", "disk"])
def test_switches_survive_suspend_resume_elsewhere_and_migration(server, model, tier):
    s = server.open_session(PROMPT, seed=1 if tier == "host" else 2)
    switches = {}
    chunks = list(s.stream(1))
    switches[s.set_prompt("a green kite")] = "a green kite"
    chunks += list(s.stream(2))
    s.suspend(to=tier)
    if tier == "host":  # a suspended session is switched where it sleeps
        switches[s.set_prompt("a yellow submarine")] = "a yellow submarine"
    s.resume(worker=next(w for w in server.workers() if w != s.worker))
    chunks += list(s.stream(2))
    s.migrate(next(w for w in server.workers() if w != s.worker))
    switches[s.set_prompt("a purple storm")] = "a purple storm"
    n = max(switches) + 2
    chunks += list(s.stream(n - len(chunks)))
    _assert_same(chunks, reference(model, s.seed, switches, n))
    s.close()


def test_replay_repeats_the_schedule(model):
    state = model.new_session(PROMPT, 3)
    made = [model.step([state])[0]]
    state = model.set_prompt(state, "a white cat")
    made += [model.step([state])[0] for _ in range(2)]
    assert prompt_schedule(state) == [[0, PROMPT], [1, "a white cat"]]
    assert all(np.array_equal(model.replay(state, i), made[i]) for i in range(3))


def test_an_empty_prompt_is_refused_and_the_session_goes_on(server):
    s = server.open_session(PROMPT, seed=4)
    with pytest.raises(InvalidRequest):
        s.set_prompt("")
    assert [c.index for c in s.stream(1)] == [0]
    s.close()


def _crash(server, worker: str) -> str:
    """SIGKILL ``worker``'s process, its nanny told not to restart it (a crash); returns the address."""
    name = server.client.scheduler_info(n_workers=-1)["workers"][worker]["name"]
    server.cluster.workers[name].status = Status.closing_gracefully
    os.kill(server.client.run(os.getpid, workers=[worker])[worker], signal.SIGKILL)
    return worker


@pytest.mark.slow
def test_a_switch_survives_the_death_of_the_session_s_worker(server, model):
    s = server.open_session(PROMPT, seed=5)
    chunks = list(s.stream(2))
    k = s.set_prompt("an orange lantern")
    chunks += list(s.stream(k + 2 - len(chunks)))  # reading past k acknowledges every chunk before it
    victim = _crash(server, s.worker)
    chunks += list(s.stream(3))
    _assert_same(chunks, reference(model, 5, {k: "an orange lantern"}, k + 5))
    assert chunks[-1].worker != victim
    # The recovered session goes on from the switch: from the switched state's checkpoint,
    # or (its save still under way when the worker died) from an older state with the
    # recorded switch made again.
    loaded = [e for e in s.events() if e["kind"] in ("restored", "started", "regenerated")]
    assert loaded[-1]["from_chunk"] == k
    s.close()


@pytest.mark.slow
def test_a_switch_the_worker_dies_right_after_is_made_again_from_its_record(server, model):
    """Killed before the client read a chunk past the switch: no checkpoint holds the switched state."""
    s = server.open_session(PROMPT, seed=6)
    chunks = list(s.stream(2))
    k = s.set_prompt("an orange lantern")
    victim = _crash(server, s.worker)
    chunks += list(s.stream(k + 3 - len(chunks)))
    _assert_same(chunks, reference(model, 6, {k: "an orange lantern"}, k + 3))
    assert chunks[-1].worker != victim
    loaded = [e for e in s.events() if e["kind"] in ("restored", "started", "regenerated")][-1]
    assert loaded["from_chunk"] == k and loaded.get("switches", [k]) == [k]
    s.close()
