"""`turboserve demo` streams real frames from several sessions and writes their videos."""

import numpy as np
import pytest
import xarray as xr
from PIL import Image

from framework.cli import main


@pytest.mark.slow
def test_demo_writes_a_video_per_session(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--sessions", "3", "--chunks", "2", "--workers", "2", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "mean batch size" in printed
    gifs = sorted(out.glob("*.gif"))
    assert len(gifs) == 3
    for gif in gifs:
        assert gif.stem in printed
        with Image.open(gif) as im:
            assert im.n_frames == 2 * 12  # two 12-frame chunks
            assert im.size == (64, 64)
    ds = xr.open_zarr(out / "videos.zarr", group=gifs[0].stem, consolidated=False)
    assert ds.attrs["session"] == gifs[0].stem and ds.attrs["model"] == "tiny"
    frames = ds["frames"].values
    assert frames.shape == (24, 64, 64, 3) and frames.dtype == np.uint8
    assert frames.std() > 0  # real pixels, not a blank image
    assert (out / "state").exists() and not (tmp_path / "turboserve-state").exists()


def test_demo_rejects_empty_work(tmp_path, capsys):
    assert main(["demo", "--sessions", "0", "--out", str(tmp_path)]) == 2
    assert "at least one session" in capsys.readouterr().err
