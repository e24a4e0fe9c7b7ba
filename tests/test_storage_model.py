"""A session resumed from any tier produces exactly the chunks of an uninterrupted one.

Uses the real tiny model (random weights, CPU): chunk k after offload/restore or after a
zarr checkpoint, on the same or a freshly built worker model, equals chunk k of the
session that never stopped (``np.array_equal`` on the uint8 frames).
"""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import torch

from kernels.model import StreamingVideoModel
from storage import CheckpointStore, SessionState, VideoStore, offload_to_host, restore_to_device

PROMPT, SEED, N_CHUNKS = "a red fox running through snow", 7, 3


@pytest.fixture(scope="module")
def model():
    return StreamingVideoModel.from_preset("tiny")


@pytest.fixture(scope="module")
def reference(model) -> list[np.ndarray]:
    """The frames of an uninterrupted session, chunk by chunk."""
    state = model.new_session(PROMPT, seed=SEED)
    return [model.step([state])[0] for _ in range(N_CHUNKS)]


def run_until(model, chunk_index: int) -> SessionState:
    state = model.new_session(PROMPT, seed=SEED)
    for _ in range(chunk_index):
        model.step([state])
    return state


def continue_session(model, state: SessionState) -> list[np.ndarray]:
    return [model.step([state])[0] for _ in range(state.chunk_index, N_CHUNKS)]


def assert_same_chunks(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    assert len(got) == len(want)
    for k, (g, w) in enumerate(zip(got, want)):
        assert g.dtype == np.uint8 and g.shape == w.shape
        assert np.array_equal(g, w), f"chunk {k} differs from the uninterrupted session"


def test_the_reference_is_not_trivial(reference: list[np.ndarray]) -> None:
    assert not np.array_equal(reference[1], reference[2])


def test_chunks_after_host_offload_and_restore_equal_the_uninterrupted_ones(model, reference) -> None:
    state = run_until(model, 1)
    resumed = restore_to_device(offload_to_host(state), model.device)
    assert_same_chunks(continue_session(model, resumed), reference[1:])


def test_chunks_after_a_zarr_checkpoint_on_a_fresh_worker_equal_the_uninterrupted_ones(
    model, reference, tmp_path: pathlib.Path
) -> None:
    CheckpointStore(tmp_path / "ckpt").save("s1", run_until(model, 1))
    worker_model = StreamingVideoModel.from_preset("tiny")  # another worker: same preset, same weights seed
    loaded = CheckpointStore(tmp_path / "ckpt").load("s1", model=worker_model, device=str(worker_model.device))
    assert loaded.chunk_index == 1
    assert_same_chunks(continue_session(worker_model, loaded), reference[1:])


def test_a_bfloat16_session_resumes_exactly_from_zarr(tmp_path: pathlib.Path) -> None:
    bf16 = StreamingVideoModel.from_preset("tiny", dtype=torch.bfloat16)
    state = bf16.new_session(PROMPT, seed=SEED)
    bf16.step([state])
    store = CheckpointStore(tmp_path / "ckpt")
    store.save("s1", state)
    want = bf16.step([state])[0]
    loaded = store.load("s1", model=bf16)
    assert loaded.tensors["kv.0.k"].dtype == torch.bfloat16
    assert np.array_equal(bf16.step([loaded])[0], want)


def test_recovery_from_an_older_checkpoint_duplicates_no_frame(model, reference, tmp_path: pathlib.Path) -> None:
    checkpoints = CheckpointStore(tmp_path / "ckpt")
    p = model.preset
    video = VideoStore(
        tmp_path / "video", "s1", model=model.name, fps=16, height=p.default_height, width=p.default_width
    )
    state = model.new_session(PROMPT, seed=SEED)
    video.append(model.step([state])[0], chunk_index=0)
    checkpoints.save("s1", state)  # resumes at chunk 1
    for _ in range(2):
        k = state.chunk_index
        video.append(model.step([state])[0], chunk_index=k)
    del state  # the worker dies; chunks 1 and 2 were already stored
    recovered = checkpoints.load("s1", model=model)
    while recovered.chunk_index < N_CHUNKS:
        k = recovered.chunk_index
        assert video.append(model.step([recovered])[0], chunk_index=k) is False
    assert video.chunk_indices() == list(range(N_CHUNKS))
    assert np.array_equal(video.open()["frames"].values, np.concatenate(reference))
