"""VideoStore: a session's frames as an xarray Dataset on zarr, appended chunk by chunk."""

from __future__ import annotations

import pathlib

import imageio.v3 as iio
import numpy as np
import pytest
import xarray as xr

from storage import VideoStore, VideoStoreError, open_video

H, W, FPS = 16, 24, 8


def frames_of(chunk_index: int, n: int = 4) -> np.ndarray:
    return np.random.default_rng(chunk_index).integers(0, 256, (n, H, W, 3), dtype=np.uint8)


def new_store(root: pathlib.Path, session: str = "s1", **overrides) -> VideoStore:
    kwargs = {"model": "tiny", "fps": FPS, "height": H, "width": W} | overrides
    return VideoStore(root, session, **kwargs)


def test_appended_chunks_read_back_as_a_dataset(tmp_path: pathlib.Path) -> None:
    video = new_store(tmp_path)
    for k in range(3):
        assert video.append(frames_of(k), chunk_index=k) is True
    ds = video.open()
    assert isinstance(ds, xr.Dataset)
    assert ds["frames"].dims == ("frame", "y", "x", "channel")
    assert ds["frames"].dtype == np.uint8
    assert ds.attrs["session"] == "s1" and ds.attrs["model"] == "tiny" and ds.attrs["fps"] == FPS
    np.testing.assert_array_equal(ds["frames"].values, np.concatenate([frames_of(k) for k in range(3)]))
    assert ds["chunk"].values.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert video.n_frames == 12


def test_a_reopened_store_continues_where_it_stopped(tmp_path: pathlib.Path) -> None:
    new_store(tmp_path).append(frames_of(0), chunk_index=0)
    again = new_store(tmp_path)
    assert again.chunk_indices() == [0]
    again.append(frames_of(1, n=2), chunk_index=1)  # chunks may differ in length
    np.testing.assert_array_equal(again.read_chunk(1), frames_of(1, n=2))
    np.testing.assert_array_equal(open_video(tmp_path, "s1")["frames"].values[:4], frames_of(0))


def test_re_appending_a_stored_chunk_does_not_duplicate_frames(tmp_path: pathlib.Path) -> None:
    video = new_store(tmp_path)
    video.append(frames_of(0), chunk_index=0)
    video.append(frames_of(1), chunk_index=1)
    assert video.append(frames_of(1), chunk_index=1) is False  # regenerated after recovery
    assert video.append(frames_of(0), chunk_index=0) is False
    assert video.n_frames == 8
    assert video.chunk_indices() == [0, 1]


def test_a_gap_in_chunk_indices_is_refused(tmp_path: pathlib.Path) -> None:
    video = new_store(tmp_path)
    with pytest.raises(VideoStoreError, match="the next one is 0"):
        video.append(frames_of(1), chunk_index=1)
    video.append(frames_of(0), chunk_index=0)
    with pytest.raises(VideoStoreError, match="chunk 2 appended after chunks 0..0; .* the next one is 1"):
        video.append(frames_of(2), chunk_index=2)
    assert video.n_frames == 4


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((4, H, W, 3), np.float32),
        np.zeros((4, H + 1, W, 3), np.uint8),
        np.zeros((4, H, W), np.uint8),
        np.zeros((0, H, W, 3), np.uint8),
    ],
    ids=["float", "height", "no-channels", "empty"],
)
def test_frames_of_the_wrong_shape_or_dtype_are_refused(tmp_path: pathlib.Path, bad: np.ndarray) -> None:
    with pytest.raises(VideoStoreError, match="expected"):
        new_store(tmp_path).append(bad, chunk_index=0)


def test_reopening_with_another_geometry_is_refused(tmp_path: pathlib.Path) -> None:
    new_store(tmp_path).append(frames_of(0), chunk_index=0)
    with pytest.raises(VideoStoreError, match="fps=8.*reopened with fps=16"):
        new_store(tmp_path, fps=16)


def test_sessions_share_a_root_without_mixing(tmp_path: pathlib.Path) -> None:
    a, b = new_store(tmp_path, "a"), new_store(tmp_path, "b")
    a.append(frames_of(0), chunk_index=0)
    b.append(frames_of(5), chunk_index=0)
    np.testing.assert_array_equal(a.read_chunk(0), frames_of(0))
    np.testing.assert_array_equal(b.read_chunk(0), frames_of(5))


def test_an_append_cut_off_between_its_arrays_is_repaired(tmp_path: pathlib.Path) -> None:
    import zarr

    video = new_store(tmp_path)
    video.append(frames_of(0), chunk_index=0)
    video.append(frames_of(1), chunk_index=1)
    # As if the process died after the labels of chunk 1 were written but not its frames.
    frames = zarr.open_group(str(tmp_path), path="s1", mode="a")["frames"]
    frames.resize((4, H, W, 3))
    assert video.chunk_indices() == [0]
    assert video.append(frames_of(1), chunk_index=1) is True
    np.testing.assert_array_equal(video.open()["frames"].values, np.concatenate([frames_of(0), frames_of(1)]))


def test_gif_export_has_every_frame(tmp_path: pathlib.Path) -> None:
    video = new_store(tmp_path / "store")
    video.append(frames_of(0), chunk_index=0)
    video.append(frames_of(1), chunk_index=1)
    path = video.to_video(tmp_path / "s1.gif")
    back = iio.imread(path, index=None)
    assert back.shape[:3] == (8, H, W)


def test_export_to_a_format_without_a_backend_says_what_to_do(tmp_path: pathlib.Path) -> None:
    video = new_store(tmp_path / "store")
    video.append(frames_of(0), chunk_index=0)
    try:
        import av  # noqa: F401
    except ImportError:
        with pytest.raises(VideoStoreError, match="pip install av"):
            video.to_video(tmp_path / "s1.mp4")
    else:
        assert video.to_video(tmp_path / "s1.mp4").stat().st_size > 0


def test_reading_before_any_append_is_an_error(tmp_path: pathlib.Path) -> None:
    video = new_store(tmp_path)
    assert video.chunk_indices() == [] and video.n_frames == 0
    with pytest.raises(VideoStoreError, match="no frames"):
        video.open()
    with pytest.raises(VideoStoreError, match="no video of session 'ghost'"):
        open_video(tmp_path, "ghost")


def test_works_on_an_fsspec_url(tmp_path: pathlib.Path) -> None:
    video = VideoStore(f"memory://video-{tmp_path.name}", "s1", model="tiny", fps=FPS, height=H, width=W)
    video.append(frames_of(0), chunk_index=0)
    video.append(frames_of(0), chunk_index=0)
    np.testing.assert_array_equal(video.open()["frames"].values, frames_of(0))


def test_a_video_store_pickles_as_its_arguments(tmp_path: pathlib.Path) -> None:
    import pickle

    video = new_store(tmp_path)
    video.append(frames_of(0), chunk_index=0)
    shipped = pickle.loads(pickle.dumps(video))
    assert shipped.append(frames_of(0), chunk_index=0) is False
    shipped.append(frames_of(1), chunk_index=1)
    assert video.chunk_indices() == [0, 1]


def test_a_group_left_empty_by_a_cut_off_first_append_is_replaced(tmp_path: pathlib.Path) -> None:
    import zarr

    zarr.open_group(str(tmp_path), mode="a").require_group("s1")  # created, but no arrays were written
    video = new_store(tmp_path)
    assert video.chunk_indices() == []
    assert video.append(frames_of(0), chunk_index=0) is True
    np.testing.assert_array_equal(video.read_chunk(0), frames_of(0))
