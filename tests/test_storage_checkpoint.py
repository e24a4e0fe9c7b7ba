"""CheckpointStore: exact round trips, atomic replacement, and refusals of bad checkpoints.

The damage tests change the real files of a checkpoint on disk (truncate, flip, delete,
rewrite metadata) and expect the documented error, never a wrong state.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import storage.checkpoint
from storage import (
    STATE_FORMAT_VERSION,
    CheckpointCorrupt,
    CheckpointError,
    CheckpointFenced,
    CheckpointMismatch,
    CheckpointNotFound,
    CheckpointStore,
    CheckpointVersionError,
    SessionState,
)

DTYPES = [
    torch.bfloat16,
    torch.float16,
    torch.float32,
    torch.float64,
    torch.uint8,
    torch.int8,
    torch.int32,
    torch.int64,
    torch.bool,
]


def random_tensor(shape: tuple[int, ...], dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    """Random bits of every kind (incl. NaN/inf patterns for floats): exactness is about bytes."""
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=gen).bool()
    itemsize = torch.empty(0, dtype=dtype).element_size()
    raw = torch.randint(0, 256, (int(np.prod(shape)) * itemsize,), dtype=torch.uint8, generator=gen)
    return raw.view(dtype).reshape(shape)


def make_state(chunk_index: int = 3, model: str = "tiny", seed: int = 0) -> SessionState:
    """A state shaped like the model's: prompt embeds, per-layer KV, VAE cache, rng bytes."""
    gen = torch.Generator().manual_seed(seed)
    tensors = {
        "prompt_embeds": torch.randn(8, 16, generator=gen).to(torch.bfloat16),
        "kv.0.k": torch.randn(2, 48, 12, generator=gen).half(),
        "kv.0.v": torch.randn(2, 48, 12, generator=gen).half(),
        "vae.0": torch.randn(1, 3, 2, 8, 8, generator=gen),
        "rng": torch.Generator().manual_seed(seed).get_state(),
        "pos": torch.arange(48, dtype=torch.int64),
    }
    return SessionState(
        model=model,
        prompt="a red fox",
        seed=seed,
        height=64,
        width=64,
        chunk_index=chunk_index,
        tensors=tensors,
        scalars={"cached_tokens": 48, "vae.count": 1, "scale": 0.5, "note": "x"},
    )


def same_bits(a: SessionState, b: SessionState) -> bool:
    """Meta equal and every tensor byte-identical (``SessionState.equal`` says NaN != NaN)."""
    if a.meta() != b.meta():
        return False
    return all(
        torch.equal(a.tensors[k].reshape(-1).view(torch.uint8), b.tensors[k].reshape(-1).view(torch.uint8))
        for k in a.tensors
    )


def chunk_files(root: pathlib.Path, session_id: str, tensor: str) -> list[pathlib.Path]:
    """The chunk files of one tensor of the session's current checkpoint."""
    files = sorted(p for p in root.glob(f"{session_id}/*/{tensor}/c/**/*") if p.is_file())
    assert files, f"no chunk files for {tensor} under {root}"
    return files


def edit_json(path: pathlib.Path, edit) -> None:
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


@pytest.fixture
def root(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "ckpt"


@pytest.fixture
def store(root: pathlib.Path) -> CheckpointStore:
    return CheckpointStore(root, chunk_bytes=1024)  # small chunks: every tensor spans several files


# ---------------------------------------------------------------------- exact round trips


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_save_load_is_bit_identical_for_every_dtype(store: CheckpointStore, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(1)
    state = make_state()
    state.tensors["x"] = random_tensor((5, 33, 7), dtype, gen)
    store.save("s1", state)
    loaded = store.load("s1", model="tiny")
    assert loaded.tensors["x"].dtype == dtype
    assert same_bits(loaded, state)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    shape=st.lists(st.integers(0, 6), min_size=0, max_size=4).map(tuple),
    dtype=st.sampled_from(DTYPES),
    chunk_bytes=st.sampled_from([7, 200, 4096]),  # odd sizes: chunks that do not divide a row
)
def test_round_trip_of_any_shape_and_chunking(tmp_path: pathlib.Path, shape, dtype, chunk_bytes) -> None:
    gen = torch.Generator().manual_seed(sum(shape) + len(shape))
    state = make_state()
    state.tensors = {"t": random_tensor(shape, dtype, gen)}
    store = CheckpointStore(tmp_path / f"h{chunk_bytes}", chunk_bytes=chunk_bytes)
    store.save("s", state)
    loaded = store.load("s")
    assert loaded.tensors["t"].shape == torch.Size(shape)
    assert same_bits(loaded, state)


@pytest.mark.parametrize("compression", ["zstd", "blosc"])
def test_compressed_checkpoints_are_exact_too(tmp_path: pathlib.Path, compression: str) -> None:
    store = CheckpointStore(tmp_path / "c", compression=compression)
    state = make_state()
    store.save("s1", state)
    assert store.load("s1").equal(state)


def test_any_fsspec_url_works(tmp_path: pathlib.Path) -> None:
    state = make_state()
    memory = CheckpointStore(f"memory://turboserve-test-{tmp_path.name}")
    memory.save("s1", state)
    assert memory.load("s1").equal(state)
    local_url = CheckpointStore(f"file://{tmp_path / 'u'}")
    local_url.save("s1", state)
    assert CheckpointStore(tmp_path / "u").load("s1").equal(state)


def test_load_puts_tensors_on_the_requested_device(store: CheckpointStore) -> None:
    store.save("s1", make_state())
    assert store.load("s1", device="cpu").device == torch.device("cpu")
    assert store.load("s1", device=torch.device("cpu")).equal(make_state())


def test_model_may_be_given_as_an_object_with_a_name(store: CheckpointStore) -> None:
    class Model:
        name = "tiny"

    store.save("s1", make_state())
    assert store.load("s1", model=Model()).equal(make_state())


# ---------------------------------------------------------------------- bookkeeping


def test_save_replaces_the_previous_checkpoint_and_keeps_one_generation(
    store: CheckpointStore, root: pathlib.Path
) -> None:
    first = store.save("s1", make_state(chunk_index=3, seed=0))
    second = store.save("s1", make_state(chunk_index=11, seed=1))
    assert first.generation != second.generation
    assert [p.name for p in (root / "s1").iterdir() if p.is_dir()] == [second.generation]
    assert store.latest_chunk("s1") == 11
    assert store.load("s1").equal(make_state(chunk_index=11, seed=1))


def test_info_list_exists_delete(store: CheckpointStore) -> None:
    state = make_state(chunk_index=5)
    info = store.save("b", state)
    store.save("a", make_state())
    assert (info.session_id, info.model, info.chunk_index, info.nbytes) == ("b", "tiny", 5, state.nbytes)
    assert store.info("b") == info
    assert store.list() == ["a", "b"]
    assert store.exists("a") and not store.exists("zzz")
    assert store.delete("a") is True
    assert store.delete("a") is False
    assert store.list() == ["b"]
    with pytest.raises(CheckpointNotFound, match="'a'"):
        store.load("a")


def test_recorded_prompt_switches_outlive_saves_and_a_discard_but_not_a_stale_owner(store: CheckpointStore) -> None:
    assert store.recorded_prompts("s") is None
    schedule = json.dumps([[0, "a red fox"], [3, "an orange lantern"]])
    store.record_prompts("s", schedule)  # before any checkpoint of the session
    assert store.recorded_prompts("s") == schedule and not store.exists("s")
    store.save("s", make_state(chunk_index=2))  # the pointer's write keeps it
    assert store.recorded_prompts("s") == schedule and store.exists("s")
    store.discard("s")  # a refused checkpoint goes; the switches stay for its regeneration
    assert store.recorded_prompts("s") == schedule and not store.exists("s")
    old = CheckpointStore(store.url)
    old.claim("s", 1)
    store.claim("s", 2)
    with pytest.raises(CheckpointFenced):
        old.record_prompts("s", json.dumps([[0, "a red fox"]]))
    assert store.recorded_prompts("s") == schedule
    assert store.delete("s") is True and store.recorded_prompts("s") is None


def test_a_claim_that_loses_the_race_for_the_sessions_group_still_records_its_epoch(store: CheckpointStore) -> None:
    """zarr's ``require_group`` looks, then creates: a new owner's claim and the old owner's
    first save may both find no group for the session, and the second creation raises
    ``ContainsGroupError``. The loser opens the group the winner made."""
    from zarr.errors import ContainsGroupError

    root = store._root

    class LosesTheRace:  # the store's root, where the old owner's save creates the group first
        def require_group(self, name):
            store._root = root
            root.create_group(name)
            raise ContainsGroupError(f"A group exists at path {name!r}")

        def __getattr__(self, name):
            return getattr(root, name)

        def __getitem__(self, name):
            return root[name]

        def __contains__(self, name):
            return name in root

    store._root = LosesTheRace()
    store.claim("s", 3)
    assert store.owner_epoch("s") == 3
    store.save("s", make_state(chunk_index=2))
    assert store.load("s").equal(make_state(chunk_index=2))


def test_a_reopened_store_sees_the_same_checkpoints(store: CheckpointStore, root: pathlib.Path) -> None:
    store.save("s1", make_state())
    assert CheckpointStore(root).load("s1").equal(make_state())


@pytest.mark.parametrize("bad", ["", "a/b", "__x", ".."])
def test_invalid_session_ids_are_refused(store: CheckpointStore, bad: str) -> None:
    with pytest.raises(ValueError, match="session id"):
        store.save(bad, make_state())


def test_invalid_options_are_refused(root: pathlib.Path) -> None:
    with pytest.raises(ValueError, match="'lzma'"):
        CheckpointStore(root, compression="lzma")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="chunk_bytes"):
        CheckpointStore(root, chunk_bytes=0)


# ---------------------------------------------------------------------- crash during save


class Crash(Exception):
    pass


def crash_on_second_tensor(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the save die after the first tensor is written (as a killed process would)."""
    calls = {"n": 0}
    real = storage.checkpoint.checksum

    def dying_checksum(data, *args):
        calls["n"] += 1
        if calls["n"] == 2:
            raise Crash("killed mid-save")
        return real(data, *args)

    monkeypatch.setattr(storage.checkpoint, "checksum", dying_checksum)


def test_a_save_cut_off_midway_leaves_the_previous_checkpoint(
    store: CheckpointStore, root: pathlib.Path, monkeypatch
) -> None:
    old = make_state(chunk_index=3, seed=0)
    store.save("s1", old)
    crash_on_second_tensor(monkeypatch)
    with pytest.raises(Crash):
        store.save("s1", make_state(chunk_index=11, seed=1))
    monkeypatch.undo()
    assert len([p for p in (root / "s1").iterdir() if p.is_dir()]) == 2  # the partial generation is there
    assert store.latest_chunk("s1") == 3
    assert store.load("s1").equal(old)
    store.save("s1", make_state(chunk_index=12, seed=2))  # the next save cleans up
    assert len([p for p in (root / "s1").iterdir() if p.is_dir()]) == 1
    assert store.load("s1").equal(make_state(chunk_index=12, seed=2))


def test_a_first_save_cut_off_leaves_no_checkpoint(store: CheckpointStore, monkeypatch) -> None:
    crash_on_second_tensor(monkeypatch)
    with pytest.raises(Crash):
        store.save("s1", make_state())
    monkeypatch.undo()
    assert not store.exists("s1")
    assert store.list() == []
    with pytest.raises(CheckpointNotFound, match="interrupted"):
        store.load("s1")


# ---------------------------------------------------------------------- refusals


def test_missing_checkpoint(store: CheckpointStore) -> None:
    with pytest.raises(CheckpointNotFound, match="no checkpoint of session 'ghost'"):
        store.load("ghost")
    with pytest.raises(CheckpointNotFound):
        store.latest_chunk("ghost")


def test_wrong_model_is_refused_with_both_names(store: CheckpointStore) -> None:
    store.save("s1", make_state(model="tiny"))
    with pytest.raises(CheckpointMismatch) as err:
        store.load("s1", model="wan-1.3b")
    assert str(err.value) == "checkpoint of session 's1' was made by model 'tiny', this worker runs 'wan-1.3b'"


def test_other_layout_version_is_refused(store: CheckpointStore, root: pathlib.Path) -> None:
    store.save("s1", make_state())
    edit_json(root / "s1" / "zarr.json", lambda d: d["attributes"].update(turboserve_checkpoint=99))
    with pytest.raises(CheckpointVersionError, match="layout version 99"):
        store.load("s1")


def test_other_state_format_version_is_refused(store: CheckpointStore, root: pathlib.Path) -> None:
    info = store.save("s1", make_state())
    edit_json(
        root / "s1" / info.generation / "zarr.json",
        lambda d: d["attributes"]["state"].update(format_version=STATE_FORMAT_VERSION + 1),
    )
    with pytest.raises(CheckpointVersionError, match=f"state format version {STATE_FORMAT_VERSION + 1}"):
        store.load("s1")


def test_truncated_chunk_file_is_corrupt(store: CheckpointStore, root: pathlib.Path) -> None:
    store.save("s1", make_state())
    victim = chunk_files(root, "s1", "vae.0")[0]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    with pytest.raises(CheckpointCorrupt, match="'vae.0'"):
        store.load("s1")


def test_flipped_byte_fails_the_checksum(store: CheckpointStore, root: pathlib.Path) -> None:
    store.save("s1", make_state())
    victim = chunk_files(root, "s1", "kv.0.k")[0]  # a full chunk (edge chunks carry padding)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.write_bytes(bytes(data))
    with pytest.raises(CheckpointCorrupt, match="'kv.0.k' fails its checksum"):
        store.load("s1")


def test_deleted_chunk_file_is_reported_by_name(store: CheckpointStore, root: pathlib.Path) -> None:
    store.save("s1", make_state())
    chunk_files(root, "s1", "kv.0.v")[0].unlink()  # plain zarr would read the fill value silently
    with pytest.raises(CheckpointCorrupt, match=r"'kv.0.v' cannot be read .*c/0/0/0' is missing"):
        store.load("s1")


def test_grown_chunk_file_is_corrupt(store: CheckpointStore, root: pathlib.Path) -> None:
    store.save("s1", make_state())
    with chunk_files(root, "s1", "pos")[0].open("ab") as f:
        f.write(b"\x00" * 8)
    with pytest.raises(CheckpointCorrupt, match="'pos' cannot be read .*expected"):
        store.load("s1")


def test_deleted_chunk_on_an_fsspec_store_fails_the_checksum(tmp_path: pathlib.Path) -> None:
    from zarr.core.sync import sync

    store = CheckpointStore(f"memory://turboserve-damage-{tmp_path.name}", chunk_bytes=1024)
    info = store.save("s1", make_state())
    sync(store._store.delete(f"s1/{info.generation}/kv.0.v/c/0/0/0"))  # zarr reads the fill value instead
    with pytest.raises(CheckpointCorrupt, match="'kv.0.v' fails its checksum"):
        store.load("s1")


def test_missing_array_is_corrupt(store: CheckpointStore, root: pathlib.Path) -> None:
    import shutil

    info = store.save("s1", make_state())
    shutil.rmtree(root / "s1" / info.generation / "prompt_embeds")
    with pytest.raises(CheckpointCorrupt, match="array 'prompt_embeds' is missing"):
        store.load("s1")


def test_array_of_the_wrong_shape_is_corrupt(store: CheckpointStore, root: pathlib.Path) -> None:
    info = store.save("s1", make_state())
    edit_json(root / "s1" / info.generation / "pos" / "zarr.json", lambda d: d.update(shape=[24]))
    with pytest.raises(CheckpointCorrupt, match=r"'pos' has shape \(24,\).*the state says \(48,\)"):
        store.load("s1")


def test_pointer_to_a_missing_generation_is_corrupt(store: CheckpointStore, root: pathlib.Path) -> None:
    import shutil

    info = store.save("s1", make_state())
    shutil.rmtree(root / "s1" / info.generation)
    with pytest.raises(CheckpointCorrupt, match="which is missing"):
        store.load("s1")


def test_garbled_metadata_is_corrupt(store: CheckpointStore, root: pathlib.Path) -> None:
    store.save("s1", make_state())
    (root / "s1" / "zarr.json").write_text('{"zarr_format": 3, "node_ty')
    with pytest.raises(CheckpointCorrupt, match="cannot be read"):
        store.load("s1")


def test_every_refusal_is_a_checkpoint_error() -> None:
    for cls in (CheckpointNotFound, CheckpointMismatch, CheckpointVersionError, CheckpointCorrupt):
        assert issubclass(cls, CheckpointError)


def test_garbled_generation_metadata_is_corrupt(store: CheckpointStore, root: pathlib.Path) -> None:
    info = store.save("s1", make_state())
    (root / "s1" / info.generation / "zarr.json").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointCorrupt, match="cannot be read"):
        store.load("s1")


def test_a_store_pickles_as_its_arguments(store: CheckpointStore) -> None:
    import pickle

    store.save("s1", make_state())
    shipped = pickle.loads(pickle.dumps(store))  # as when sent to a Dask worker
    assert (shipped.url, shipped.chunk_bytes, shipped.compression) == (store.url, 1024, None)
    assert shipped.load("s1").equal(make_state())


@pytest.mark.gpu
def test_a_gpu_state_saves_and_loads_back_onto_the_gpu(store: CheckpointStore) -> None:
    store.save("s1", make_state().to("cuda"))
    loaded = store.load("s1", device="cuda")
    assert loaded.device.type == "cuda"
    assert loaded.equal(make_state())


def test_unknown_checksum_algorithm_is_a_version_error(store: CheckpointStore, root: pathlib.Path) -> None:
    info = store.save("s1", make_state())
    edit_json(root / "s1" / info.generation / "zarr.json", lambda d: d["attributes"].update(checksum="md5"))
    with pytest.raises(CheckpointVersionError, match="'md5'"):
        store.load("s1")


@pytest.mark.parametrize("algorithm", ["crc32c", "crc32"])
def test_checksums_see_a_single_flipped_bit(algorithm: str) -> None:
    from storage.tensors import checksum

    data = np.arange(1000, dtype=np.int64)
    flipped = data.copy()
    flipped.view(np.uint8)[4321] ^= 0x10
    assert checksum(data, algorithm) == checksum(data.copy(), algorithm)
    assert checksum(data, algorithm) != checksum(flipped, algorithm)
    with pytest.raises(ValueError, match="unknown checksum 'sha1'"):
        checksum(data, "sha1")
