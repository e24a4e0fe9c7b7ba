"""Workers load real (saved) weights when `turboserve.weights` names a checkpoint."""

import dask.config
import numpy as np
import pytest

from framework import Server
from kernels.model import StreamingVideoModel


@pytest.mark.slow
def test_workers_load_the_configured_checkpoint(tmp_path):
    # Weights seeded differently from the default (0) stand in for a real checkpoint:
    # the frames match them only if the workers loaded the folder.
    saved = StreamingVideoModel.from_preset("tiny", weights_seed=7)
    saved.save_pretrained(tmp_path / "ckpt")
    reference = saved.new_session("a lighthouse in a storm", seed=3)
    expected = [saved.step([reference])[0] for _ in range(2)]

    settings = {"turboserve.weights": {"tiny": str(tmp_path / "ckpt")}, "turboserve.state.store": str(tmp_path / "state")}
    with dask.config.set(settings), Server.local(n_workers=1, model="tiny", dashboard_address=":0") as server:
        session = server.open_session("a lighthouse in a storm", seed=3)
        got = [chunk.frames for chunk in session.stream(2)]
    for a, b in zip(got, expected):
        # the worker's torch runs one thread; allow the VAE's last-level rounding.
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    default = StreamingVideoModel.from_preset("tiny")
    other = default.step([default.new_session("a lighthouse in a storm", seed=3)])[0]
    assert np.abs(other.astype(int) - expected[0].astype(int)).max() > 1
