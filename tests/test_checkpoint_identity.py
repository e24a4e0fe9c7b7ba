"""Verified checkpoints: sealed metadata, the session's identity, typed refusals.

Every test damages or swaps the real files of a checkpoint on disk (a flipped bit, a
foreign session's folder copied in, an edited seed) and expects a typed
:class:`~storage.CheckpointError`, never a state that is not the one saved.
"""

from __future__ import annotations

import json
import pathlib
import random
import shutil

import pytest
import torch

from storage import (
    CheckpointCorrupt,
    CheckpointError,
    CheckpointIdentity,
    CheckpointMismatch,
    CheckpointStore,
    CheckpointVersionError,
    SessionState,
    prompt_digest,
)
from storage.identity import seal


def make_state(chunk_index: int = 5, prompt: str = "a red fox", seed: int = 0, model: str = "tiny") -> SessionState:
    gen = torch.Generator().manual_seed(seed)
    return SessionState(
        model=model,
        prompt=prompt,
        seed=seed,
        height=64,
        width=64,
        chunk_index=chunk_index,
        tensors={
            "kv.0.k": torch.randn(2, 16, 4, generator=gen).half(),
            "kv.0.v": torch.randn(2, 16, 4, generator=gen).half(),
            "rng": torch.Generator().manual_seed(seed).get_state(),
        },
        scalars={"cached_tokens": 16},
    )


@pytest.fixture
def root(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "ckpt"


@pytest.fixture
def store(root: pathlib.Path) -> CheckpointStore:
    return CheckpointStore(root)


def stored_chunk(folder: pathlib.Path) -> int:
    """The chunk index a session's checkpoint pointer records."""
    return json.loads((folder / "zarr.json").read_text())["attributes"]["chunk_index"]


def flip_bit_in(path: pathlib.Path, needle: bytes, bit: int) -> None:
    """Flip ``bit`` of the last byte of the (unique) ``needle`` in the file."""
    data = bytearray(path.read_bytes())
    assert data.count(needle) == 1, f"{needle!r} occurs {data.count(needle)} times in {path}"
    at = data.index(needle) + len(needle) - 1
    data[at] ^= 1 << bit
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------------- the identity record


def test_identity_names_session_model_prompt_digest_and_seed(store: CheckpointStore, root: pathlib.Path) -> None:
    info = store.save("s1", make_state(prompt="a red fox", seed=7))
    attrs = json.loads((root / "s1" / info.generation / "zarr.json").read_text())["attributes"]
    assert attrs["identity"] == {
        "session_id": "s1", "model": "tiny", "prompt_digest": prompt_digest("a red fox"), "seed": 7,
    }
    assert attrs["digest"] == seal({k: v for k, v in attrs.items() if k not in ("digest", "complete")})
    assert attrs["generation"] == info.generation and attrs["state"]["chunk_index"] == 5


def test_the_matching_identity_loads_bit_exact(store: CheckpointStore) -> None:
    state = make_state(seed=3)
    store.save("s1", state)
    assert store.load("s1", expect=CheckpointIdentity.of("s1", "tiny", "a red fox", 3)).equal(state)


@pytest.mark.parametrize(
    ("expect", "phrase"),
    [
        (CheckpointIdentity.of("s1", "tiny", "a red fox", 4), "seed 3 (expected 4)"),
        (CheckpointIdentity.of("s1", "tiny", "a blue fox", 3), "another prompt"),
        (CheckpointIdentity.of("s1", "wan-1.3b", "a red fox", 3), "model 'tiny' (expected 'wan-1.3b')"),
    ],
    ids=["seed", "prompt", "model"],
)
def test_another_identity_is_a_typed_refusal(store: CheckpointStore, expect, phrase: str) -> None:
    store.save("s1", make_state(seed=3))
    with pytest.raises(CheckpointMismatch, match="belongs to another session") as err:
        store.load("s1", expect=expect)
    assert phrase in str(err.value)


# ---------------------------------------------------------------------- foreign checkpoints


def test_another_sessions_folder_copied_in_is_refused(store: CheckpointStore, root: pathlib.Path) -> None:
    store.save("victim", make_state(chunk_index=2, prompt="a cat", seed=1))
    store.save("other", make_state(chunk_index=9, prompt="a dog", seed=2))
    shutil.rmtree(root / "victim")
    shutil.copytree(root / "other", root / "victim")
    with pytest.raises(CheckpointMismatch, match="holds the state of session 'other'"):
        store.load("victim")
    with pytest.raises(CheckpointMismatch):
        store.load("victim", expect=CheckpointIdentity.of("victim", "tiny", "a cat", 1))


def test_another_sessions_generation_pointed_to_is_refused(store: CheckpointStore, root: pathlib.Path) -> None:
    mine = store.save("victim", make_state(chunk_index=2, prompt="a cat", seed=1))
    theirs = store.save("other", make_state(chunk_index=2, prompt="a dog", seed=2))
    shutil.copytree(root / "other" / theirs.generation, root / "victim" / theirs.generation)
    doc = json.loads((root / "victim" / "zarr.json").read_text())
    doc["attributes"]["current"] = theirs.generation
    (root / "victim" / "zarr.json").write_text(json.dumps(doc))
    assert mine.generation != theirs.generation
    with pytest.raises(CheckpointMismatch, match="'other'"):
        store.load("victim")


# ---------------------------------------------------------------------- flipped bits


@pytest.mark.parametrize(("bit", "becomes"), [(0, 4), (1, 7)], ids=["5->4", "5->7"])
def test_one_flipped_bit_of_the_pointers_chunk_index_is_caught(
    store: CheckpointStore, root: pathlib.Path, bit: int, becomes: int
) -> None:
    store.save("s1", make_state(chunk_index=5))
    flip_bit_in(root / "s1" / "zarr.json", b'"chunk_index": 5', bit)
    assert store.info("s1").chunk_index == becomes  # the pointer alone cannot tell
    with pytest.raises(CheckpointCorrupt, match=f"pointer says chunk {becomes} .* holds chunk 5"):
        store.load("s1")


@pytest.mark.parametrize("bit", [0, 1, 2], ids=["5->4", "5->7", "5->1"])
def test_one_flipped_bit_of_the_sealed_chunk_index_is_caught(
    store: CheckpointStore, root: pathlib.Path, bit: int
) -> None:
    info = store.save("s1", make_state(chunk_index=5))
    flip_bit_in(root / "s1" / info.generation / "zarr.json", b'"chunk_index": 5', bit)
    with pytest.raises(CheckpointCorrupt, match="fails its digest"):
        store.load("s1")


def test_an_edited_seed_or_prompt_fails_the_seal(store: CheckpointStore, root: pathlib.Path) -> None:
    info = store.save("s1", make_state(seed=0))
    path = root / "s1" / info.generation / "zarr.json"
    original = path.read_text()
    for edit in (lambda a: a["state"].update(seed=1), lambda a: a["state"].update(prompt="x"),
                 lambda a: a["identity"].update(session_id="s2"), lambda a: a["checksums"].update({"rng": 1})):
        doc = json.loads(original)
        edit(doc["attributes"])
        path.write_text(json.dumps(doc))
        with pytest.raises(CheckpointCorrupt, match="fails its digest"):
            store.load("s1")


def test_random_single_bit_flips_of_the_metadata_never_load_another_state(
    store: CheckpointStore, root: pathlib.Path
) -> None:
    """Flip one bit at 150 random places of either metadata document: refused, or the same state."""
    state = make_state(chunk_index=5, seed=11)
    info = store.save("s1", state)
    rng = random.Random(0)
    docs = [root / "s1" / "zarr.json", root / "s1" / info.generation / "zarr.json"]
    originals = {p: p.read_bytes() for p in docs}
    outcomes = {"refused": 0, "same": 0}
    for _ in range(150):
        path = rng.choice(docs)
        data = bytearray(originals[path])
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(data))
        try:
            loaded = store.load("s1", expect=CheckpointIdentity.of("s1", "tiny", "a red fox", 11))
        except CheckpointError:
            outcomes["refused"] += 1
        else:
            assert loaded.equal(state), "a damaged checkpoint loaded as another state"
            outcomes["same"] += 1
        path.write_bytes(originals[path])
    assert outcomes["refused"] > 100, outcomes  # most flips hit sealed or structural bytes


# ---------------------------------------------------------------------- versions


def test_a_layout_1_checkpoint_is_refused_as_a_version(store: CheckpointStore, root: pathlib.Path) -> None:
    info = store.save("s1", make_state())
    for path in (root / "s1" / "zarr.json", root / "s1" / info.generation / "zarr.json"):
        doc = json.loads(path.read_text())
        doc["attributes"]["turboserve_checkpoint"] = 1
        path.write_text(json.dumps(doc))
    with pytest.raises(CheckpointVersionError, match="layout version 1"):
        store.load("s1")


# ---------------------------------------------------------------------- on a live cluster

PROMPT = "a red fox running through snow"


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """One CPU worker, checkpoints every 2 chunks into a store the test can damage."""
    from framework import Server

    root = tmp_path_factory.mktemp("live-state")
    with Server.local(n_workers=1, model="tiny", store=str(root), checkpoint_every=2, dashboard_address=None) as server:
        yield server, root


@pytest.fixture(scope="module")
def reference():
    """Frames of the model's own uninterrupted run of ``(prompt, seed)``, chunk by chunk."""
    from kernels.model import StreamingVideoModel

    # One torch thread, as in a Dask worker: the rounded frames then match bit for bit.
    model = StreamingVideoModel.from_preset("tiny", device="cpu", weights_seed=0, num_threads=1)

    def frames(prompt: str, seed: int, n: int) -> list:
        state = model.new_session(prompt, seed)
        return [model.step([state])[0] for _ in range(n)]

    return frames


def assert_frames(chunks, expected) -> None:
    import numpy as np

    assert [c.index for c in chunks] == list(range(len(expected)))
    for c, e in zip(chunks, expected):
        assert np.array_equal(c.frames, e), f"chunk {c.index} is not this session's frame"


def test_a_foreign_checkpoint_is_never_streamed_and_the_client_is_told(live, reference) -> None:
    server, root = live
    victim = server.open_session(PROMPT, seed=1, session_id="victim")
    other = server.open_session("a blue whale singing", seed=2, session_id="other")
    got = list(victim.stream(4))
    list(other.stream(4))
    victim.suspend(to="disk")
    other.suspend(to="disk")
    shutil.rmtree(root / "victim")
    shutil.copytree(root / "other", root / "victim")  # another session's checkpoint, copied in
    got += list(victim.stream(3))  # resumes from the store: the copy is refused, 0.. regenerated
    assert_frames(got, reference(PROMPT, 1, 7))
    regenerated = [e for e in victim.events() if e["kind"] == "regenerated"]
    assert len(regenerated) == 1, victim.events()
    assert regenerated[0]["from_chunk"] == 0 and regenerated[0]["error"] == "CheckpointMismatch"
    assert "holds the state of session 'other'" in regenerated[0]["why"]
    victim.close()
    other.close()


@pytest.mark.parametrize(("where", "bit"), [("pointer", 0), ("generation", 1)], ids=["pointer-4->5", "sealed-4->6"])
def test_a_flipped_bit_of_the_chunk_index_regenerates_the_same_frames(live, reference, where: str, bit: int) -> None:
    server, root = live
    sid = f"flip-{where}"
    s = server.open_session(PROMPT, seed=3, session_id=sid)
    got = list(s.stream(4))
    s.suspend(to="disk")  # the checkpoint now resumes at chunk 4 (or 5: a chunk made ahead, unread)
    folder = root / sid
    k = stored_chunk(folder)
    doc = folder / "zarr.json" if where == "pointer" else next(p for p in folder.iterdir() if p.is_dir()) / "zarr.json"
    flip_bit_in(doc, b'"chunk_index": %d' % k, bit)
    got += list(s.stream(2))
    assert_frames(got, reference(PROMPT, 3, 6))
    events = s.events()
    regenerated = [e for e in events if e["kind"] == "regenerated"]
    assert len(regenerated) == 1 and regenerated[0]["error"] == "CheckpointCorrupt", events
    assert ("pointer says chunk" if where == "pointer" else "fails its digest") in regenerated[0]["why"]
    s.close()


def test_a_good_checkpoint_is_restored_and_says_so(live, reference) -> None:
    server, root = live
    s = server.open_session(PROMPT, seed=4, session_id="good")
    got = list(s.stream(4))
    s.suspend(to="disk")
    k = stored_chunk(root / "good")
    got += list(s.stream(2))
    assert_frames(got, reference(PROMPT, 4, 6))
    kinds = [(e["kind"], e.get("from_chunk")) for e in s.events()]
    assert k in (4, 5) and ("restored", k) in kinds and not any(k == "regenerated" for k, _ in kinds), kinds
    s.close()
