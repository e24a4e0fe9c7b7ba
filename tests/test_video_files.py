"""Video files people can watch: H.264 mp4 a browser plays, WebM, GIF as the fallback."""

from __future__ import annotations

import io

import numpy as np
import pytest

from storage import VideoStore
from storage.errors import VideoStoreError
from storage.video_files import decode_video, encode_video, video_encoder_available, write_video

av = pytest.importorskip("av", reason="PyAV is a turboserve dependency: pip install av")


def moving_square(t: int = 12, size: int = 64) -> np.ndarray:
    frames = np.zeros((t, size, size, 3), np.uint8)
    for i in range(t):
        frames[i, 16:32, 2 * i : 2 * i + 16] = (255, 0, 0)
    return frames


def test_mp4_is_h264_in_yuv420p_that_browsers_play():
    data = encode_video(moving_square(), fps=16)
    assert data[4:8] == b"ftyp"
    with av.open(io.BytesIO(data)) as c:
        stream = c.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"  # High 4:4:4 would not play in browsers
        assert stream.average_rate == 16
    # faststart: the index (moov) comes before the media data (mdat)
    assert data.index(b"moov") < data.index(b"mdat")


def test_mp4_frames_come_back_close_to_the_originals():
    frames = moving_square()
    back = decode_video(encode_video(frames, fps=16))
    assert back.shape == frames.shape
    err = np.abs(back.astype(int) - frames.astype(int)).mean()
    assert err < 4.0, err  # near lossless at crf 18
    assert back[5, 24, 10 + 8, 0] > 200 and back[5, 24, 10 + 8, 2] < 60  # the red square is red


def test_odd_sizes_are_padded_to_even():
    back = decode_video(encode_video(np.full((3, 33, 17, 3), 128, np.uint8), fps=8))
    assert back.shape == (3, 34, 18, 3)


@pytest.mark.skipif(not video_encoder_available(".webm"), reason="this PyAV build has no VP9 encoder")
def test_webm_round_trip(tmp_path):
    path = write_video(tmp_path / "v.webm", moving_square(), fps=16)
    assert decode_video(path.read_bytes()).shape == (12, 64, 64, 3)


def test_gif_is_the_fallback_that_always_works(tmp_path):
    from PIL import Image

    path = write_video(tmp_path / "v.gif", moving_square(4), fps=8)
    assert Image.open(path).n_frames == 4


def test_bad_input_and_unknown_formats_are_refused_with_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="uint8 of shape"):
        encode_video(np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="fps must be positive"):
        encode_video(moving_square(2), fps=0)
    with pytest.raises(VideoStoreError, match=r"\.mp4"):
        write_video(tmp_path / "v.avi", moving_square(2))


def test_video_store_exports_mp4(tmp_path):
    store = VideoStore(tmp_path / "videos.zarr", "s1", model="tiny", fps=16, height=64, width=64)
    frames = moving_square()
    store.append(frames[:6], chunk_index=0)
    store.append(frames[6:], chunk_index=1)
    back = decode_video(store.to_video(tmp_path / "s1.mp4").read_bytes())
    assert back.shape == frames.shape
