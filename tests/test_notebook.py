"""Jupyter display helpers: frame buffer, GIF encoding, session/server cards."""

from __future__ import annotations

import base64
import io

import dask.config
import numpy as np
import pytest
from PIL import Image

from workers.chunk import Chunk

from framework.notebook import (
    DEFAULT_KEEP_FRAMES,
    AnimatedGif,
    FrameBuffer,
    ServerCard,
    SessionCard,
    StreamHistory,
    encode_gif,
    server_html,
    server_mimebundle,
    session_html,
    session_mimebundle,
    session_text,
    turboserve_page_url,
)

RED, BLUE, GREEN = (255, 0, 0), (0, 0, 255), (0, 255, 0)


def solid(colours, h=8, w=8) -> np.ndarray:
    """Frames ``(len(colours), h, w, 3)``, each one solid colour."""
    return np.stack([np.full((h, w, 3), c, np.uint8) for c in colours])


def decode_gif(data: bytes) -> list[np.ndarray]:
    img = Image.open(io.BytesIO(data))
    frames = []
    for i in range(img.n_frames):
        img.seek(i)
        frames.append(np.asarray(img.convert("RGB")))
    return frames


class TestFrameBuffer:
    def test_keeps_the_newest_frames_in_order(self):
        buf = FrameBuffer(max_frames=3)
        buf.append(solid([RED, RED]))
        buf.append(solid([BLUE, GREEN]))
        kept = buf.frames()
        assert kept.shape == (3, 8, 8, 3)
        assert [tuple(f[0, 0]) for f in kept] == [RED, BLUE, GREEN]

    def test_a_chunk_longer_than_the_buffer_keeps_its_tail(self):
        buf = FrameBuffer(max_frames=2)
        buf.append(solid([RED, BLUE, GREEN]))
        assert [tuple(f[0, 0]) for f in buf.frames()] == [BLUE, GREEN]

    def test_empty_and_zero_size_buffers_have_no_frames(self):
        assert FrameBuffer().frames() is None
        none = FrameBuffer(max_frames=0)
        none.append(solid([RED]))
        assert len(none) == 0 and none.frames() is None

    def test_clear_forgets_frames(self):
        buf = FrameBuffer(4)
        buf.append(solid([RED]))
        buf.clear()
        assert buf.frames() is None

    @pytest.mark.parametrize(
        "bad",
        [np.zeros((8, 8, 3), np.uint8), np.zeros((1, 8, 8, 4), np.uint8), np.zeros((1, 8, 8, 3), np.float32)],
    )
    def test_rejects_what_is_not_uint8_rgb_video(self, bad):
        with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
            FrameBuffer().append(bad)

    def test_negative_size_is_refused(self):
        with pytest.raises(ValueError, match="-1"):
            FrameBuffer(max_frames=-1)


class TestStreamHistory:
    def chunk(self, index, latency, colours, worker="tcp://w:1") -> Chunk:
        return Chunk("s", index, solid(colours), latency, worker, 1, 0.0, 0.0, latency)

    def test_records_counts_latencies_worker_and_frames(self):
        h = StreamHistory(max_frames=3)
        h.record(self.chunk(0, 0.4, [RED, RED]))
        h.record(self.chunk(1, 0.9, [BLUE, GREEN], worker="tcp://w:2"))
        h.record(self.chunk(2, 0.2, [GREEN]))
        assert (h.chunks, h.last_latency_s, h.max_latency_s, h.worker) == (3, 0.2, 0.9, "tcp://w:1")
        assert [tuple(f[0, 0]) for f in h.buffer.frames()] == [BLUE, GREEN, GREEN]

    def test_frames_kept_come_from_config(self):
        assert StreamHistory().buffer.max_frames == DEFAULT_KEEP_FRAMES
        with dask.config.set({"turboserve.notebook.keep-frames": 5}):
            assert StreamHistory().buffer.max_frames == 5
        assert StreamHistory(max_frames=0).buffer.max_frames == 0


class TestGif:
    def test_round_trip_keeps_frame_count_and_colours(self):
        frames = solid([RED, BLUE, GREEN, RED])
        data = encode_gif(frames, fps=8)
        assert data[:6] == b"GIF89a"
        decoded = decode_gif(data)
        assert len(decoded) == 4
        assert [tuple(f[4, 4]) for f in decoded] == [RED, BLUE, GREEN, RED]

    def test_frame_duration_follows_fps_and_loops(self):
        img = Image.open(io.BytesIO(encode_gif(solid([RED, BLUE]), fps=10)))
        assert img.info["duration"] == 100
        assert img.info["loop"] == 0

    @pytest.mark.parametrize("frames", [np.zeros((0, 8, 8, 3), np.uint8), np.zeros((2, 8, 8), np.uint8)])
    def test_rejects_empty_or_misshapen_frames(self, frames):
        with pytest.raises(ValueError, match="non-empty uint8"):
            encode_gif(frames)

    def test_rejects_non_positive_fps(self):
        with pytest.raises(ValueError, match="fps"):
            encode_gif(solid([RED]), fps=0)

    def test_animated_gif_mimebundle_carries_the_same_gif(self):
        gif = AnimatedGif.from_frames(solid([RED, BLUE], h=6, w=10), fps=4)
        bundle = gif._repr_mimebundle_()
        assert base64.b64decode(bundle["image/gif"]) == gif.data
        assert f'src="data:image/gif;base64,{bundle["image/gif"]}"' in bundle["text/html"]
        assert (gif.n_frames, gif.height, gif.width) == (2, 6, 10)
        assert "2 frames 6x10" in bundle["text/plain"]

    def test_save_writes_the_gif(self, tmp_path):
        gif = AnimatedGif.from_frames(solid([RED, GREEN]))
        gif.save(str(tmp_path / "v.gif"))
        assert len(decode_gif((tmp_path / "v.gif").read_bytes())) == 2


class TestCards:
    def card(self, **kw) -> SessionCard:
        base = dict(session_id="s1", prompt="a fox <b>", status="active", worker="tcp://w:1", chunks=3,
                    last_latency_s=0.25, max_latency_s=1.5, slo_s=0.75)
        return SessionCard(**{**base, **kw})

    def test_session_card_shows_facts_and_escapes_the_prompt(self):
        html = session_html(self.card())
        assert "a fox &lt;b&gt;" in html
        assert "a fox <b>" not in html
        for text in ("s1", "active", "tcp://w:1", ">3<", "250 ms", "1.50 s", "750 ms"):
            assert text in html, text
        assert "no frames yet" in html

    def test_latency_over_the_target_is_flagged(self):
        html = session_html(self.card())
        assert 'color:#c62828" title="over the 750 ms target">1.50 s' in html
        assert 'title="over the 750 ms target">250 ms' not in html

    def test_session_with_frames_embeds_its_video(self):
        from storage.video_files import decode_video

        frames = solid([RED, BLUE, GREEN])
        html = session_html(self.card(frames=frames, fps=8))
        assert "<video autoplay loop muted" in html
        b64 = html.split("data:video/mp4;base64,")[1].split('"')[0]
        assert len(decode_video(base64.b64decode(b64))) == 3
        assert "last 3 frames" in html

    def test_inline_video_is_an_mp4_with_a_gif_fallback(self):
        from framework.notebook import InlineVideo, inline_video
        from storage.video_files import decode_video

        video = inline_video(solid([RED, BLUE], h=8, w=8), fps=4)
        assert isinstance(video, InlineVideo)
        bundle = video._repr_mimebundle_()
        assert f'src="data:video/mp4;base64,{base64.b64encode(video.data).decode()}"' in bundle["text/html"]
        assert len(decode_video(video.data)) == 2
        assert len(decode_gif(base64.b64decode(bundle["image/gif"]))) == 2

    def test_session_mimebundle_has_html_and_text(self):
        bundle = session_mimebundle(self.card(worker=None, status="suspended"))
        assert set(bundle) == {"text/html", "text/plain"}
        assert bundle["text/plain"] == session_text(self.card(worker=None, status="suspended"))
        assert "suspended" in bundle["text/plain"] and " on " not in bundle["text/plain"]

    def test_server_card_lists_workers_sessions_and_links(self):
        card = ServerCard(
            workers=["tcp://w:1", "tcp://w:2"],
            sessions=[self.card(), self.card(session_id="s2", status="idle")],
            dashboard_link="http://127.0.0.1:8787/status",
            model="tiny",
        )
        html = server_html(card)
        assert html.count("<tr>") == 3  # header + two sessions
        assert "tcp://w:2" in html and "s2" in html and "idle" in html
        assert 'href="http://127.0.0.1:8787/individual-turboserve"' in html
        assert "2 workers" in server_mimebundle(card)["text/plain"]

    def test_server_card_without_sessions_or_dashboard(self):
        html = server_html(ServerCard(workers=[]))
        assert "no sessions" in html and "none" in html

    @pytest.mark.parametrize(
        "link, expected",
        [
            ("http://h:8787/status", "http://h:8787/individual-turboserve"),
            ("http://h:8787/", "http://h:8787/individual-turboserve"),
            ("http://h/proxy/8787/status", "http://h/proxy/8787/individual-turboserve"),
        ],
    )
    def test_page_url_from_dashboard_link(self, link, expected):
        assert turboserve_page_url(link) == expected
