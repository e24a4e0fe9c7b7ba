"""Where a session actor's state comes from (:class:`workers.state_source.StateSource`), without Dask.

The source is given a stand-in for the worker's ``ModelHost`` (the real tiny model on the
CPU and a real checkpoint store in a temporary folder): a fresh state, a checkpoint
verified to be the session's (a foreign one refused, removed and regenerated), chunks
made again with the session's prompt switches, and the transport a pull from a peer
would take.
"""

from __future__ import annotations

import asyncio
import types

import numpy as np
import pytest

from kernels.model import StreamingVideoModel
from storage import CheckpointStore
from workers.errors import TransferError
from workers.state_source import StateSource

PROMPT = "a red fox running through snow"


class Host:
    """The parts of :class:`workers.plugin.ModelHost` a source uses."""

    def __init__(self, model: StreamingVideoModel, store: CheckpointStore | None = None,
                 device: str = "cpu") -> None:
        self.device, self._model, self._store = device, model, store

    def engine(self, name: str):
        assert name == "tiny", name
        return types.SimpleNamespace(model=self._model)

    def checkpoints(self) -> CheckpointStore | None:
        return self._store


@pytest.fixture(scope="module")
def model():
    return StreamingVideoModel.from_preset("tiny", device="cpu", weights_seed=0, num_threads=1)


def source(model, session_id: str = "s", seed: int = 0, store=None, **kw) -> StateSource:
    return StateSource(session_id, "tiny", PROMPT, seed, None, None, host=Host(model, store), **kw)


def run(model, state, n: int, switches: dict[int, str] | None = None) -> list[np.ndarray]:
    frames = []
    for k in range(n):
        if switches and k in switches:
            state = model.set_prompt(state, switches[k])
        frames.append(model.step([state])[0])
    return frames


def run_to(model, state, n: int):
    """``state`` after ``n`` steps."""
    run(model, state, n)
    return state


def test_fresh_is_the_model_s_new_session(model):
    state = source(model, seed=3).fresh()
    assert (state.chunk_index, state.prompt, state.seed) == (0, PROMPT, 3)
    assert all(np.array_equal(a, b) for a, b in zip(run(model, state, 2), run(model, model.new_session(PROMPT, 3), 2)))


def test_without_a_store_or_a_checkpoint_load_starts_fresh_and_says_why(model, tmp_path):
    state, event = source(model).load()
    assert state.chunk_index == 0 and event["kind"] == "started" and "no checkpoint store" in event["why"]
    state, event = source(model, store=CheckpointStore(tmp_path)).load()
    assert state.chunk_index == 0 and event["kind"] == "started" and "no checkpoint of the session" in event["why"]


@pytest.mark.parametrize("saved_at", [None, 1, 4])  # no checkpoint; one before the switch; one at it, unswitched
def test_switches_recorded_after_the_checkpoint_are_made_again_on_load(model, tmp_path, saved_at):
    store = CheckpointStore(tmp_path)
    reference = model.new_session(PROMPT, 2)
    expected = run(model, reference, 7, {4: "an orange lantern"})
    if saved_at is not None:
        state = model.new_session(PROMPT, 2)
        run(model, state, saved_at)
        store.save("s", state)
    live = model.set_prompt(run_to(model, model.new_session(PROMPT, 2), 4), "an orange lantern")
    store.record_prompts("s", live.scalars["prompt.schedule"])  # what SessionActor.set_prompt records
    loaded, event = source(model, seed=2, store=store).load()
    assert loaded.chunk_index == 4 and event["from_chunk"] == 4 and event["switches"] == [4]
    assert event["checkpoint_chunk"] == (saved_at or 0)
    assert all(np.array_equal(a, b) for a, b in zip(run(model, loaded, 3), expected[4:]))


def test_a_switch_the_checkpoint_holds_already_is_not_made_again(model, tmp_path):
    store = CheckpointStore(tmp_path)
    state = model.set_prompt(run_to(model, model.new_session(PROMPT, 2), 2), "an orange lantern")
    store.record_prompts("s", state.scalars["prompt.schedule"])
    run(model, state, 1)
    store.save("s", state)
    loaded, event = source(model, seed=2, store=store).load()
    assert loaded.chunk_index == 3 and event["kind"] == "restored" and "switches" not in event


def test_the_session_s_checkpoint_is_restored_where_it_stopped(model, tmp_path):
    store = CheckpointStore(tmp_path)
    state = model.new_session(PROMPT, 1)
    run(model, state, 3)
    store.save("s", state)
    loaded, event = source(model, seed=1, store=store).load()
    assert loaded.chunk_index == 3 and (event["kind"], event["from_chunk"]) == ("restored", 3)
    assert np.array_equal(run(model, loaded, 1)[0], run(model, model.new_session(PROMPT, 1), 4)[3])


def test_another_session_s_checkpoint_is_refused_removed_and_regenerated(model, tmp_path):
    store = CheckpointStore(tmp_path)
    foreign = model.new_session(PROMPT, 2)  # seed 2: another session's state under this one's id
    run(model, foreign, 2)
    store.save("s", foreign)
    state, event = source(model, seed=1, store=store).load()
    assert state.chunk_index == 0 and state.seed == 1
    assert (event["kind"], event["from_chunk"], event["error"]) == ("regenerated", 0, "CheckpointMismatch")
    assert not store.exists("s")  # the next saves start on a clean folder


def test_replay_makes_the_same_chunks_with_the_prompt_switches(model):
    src = source(model, seed=4)
    state = src.fresh()
    switches = {2: "a blue bird over the sea"}
    made = run(model, state, 4, switches)
    state = src.fresh()
    run(model, state, 2)
    schedule = model.set_prompt(state, switches[2]).scalars["prompt.schedule"]  # as the actor keeps it
    assert all(np.array_equal(src.replay(i, schedule), made[i]) for i in range(4))
    assert all(np.array_equal(a, b) for a, b in zip(src.replay_range(1, 4, schedule), made[1:]))
    assert not np.array_equal(src.replay(3, None), made[3])  # without the switches: the opening prompt's chunk


@pytest.mark.parametrize(("address", "device", "asked", "expected"), [
    ("tcp://10.0.0.1:1", "cpu", "auto", "host"),
    ("tcp://10.0.0.1:1", "cpu", "p2p", "p2p"),
    ("tls://10.0.0.1:1", "cuda:0", "auto", "host"),
])
def test_the_transport_of_a_pull(model, address, device, asked, expected):
    src = StateSource("s", "tiny", PROMPT, 0, None, None, host=Host(model, device=device),
                      worker=types.SimpleNamespace(address=address))
    assert asyncio.run(src._choose_transport(None, {"transport": asked, "key": "k"})) == expected


def test_p2p_is_refused_on_a_tls_cluster(model):
    src = StateSource("s", "tiny", PROMPT, 0, None, None, host=Host(model),
                      worker=types.SimpleNamespace(address="tls://10.0.0.1:1"))
    with pytest.raises(TransferError, match="TLS"):
        asyncio.run(src._choose_transport(None, {"transport": "p2p", "key": "k"}))
