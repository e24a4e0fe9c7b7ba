"""`turboserve demo`: a short burst on a local cluster, with the closed loop on.

On a fresh checkout the demo must show the loop at work: at least one scale-out, one
migration, one offload and its resume, next to the videos and a plot of it all; the
videos come from the trained tiny checkpoint: their prompts' colours, moving their way.
"""

import re

import av
import numpy as np
import pytest
import xarray as xr

from framework.cli import main
from framework.demo import DEFAULT_PROMPTS, burst
from kernels.synthetic import dominant_colour, motion_direction, parse_prompt


@pytest.mark.slow
def test_demo_shows_the_loop_scale_out_migrate_offload_and_resume(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "what the closed loop did" in printed
    line = next(ln for ln in printed.splitlines() if "workers over time" in ln)
    assert "scale-outs 0" not in line
    actions = next(ln for ln in printed.splitlines() if "placements" in ln and "migrations" in ln)
    for none in ("migrations 0", "offloads 0", "resumes 0"):
        assert none not in actions, printed  # all the demo said, to see why
    assert (out / "loop.png").stat().st_size > 10_000
    videos = sorted(out.glob("*.mp4"))  # H.264, what browsers and players open
    assert len(videos) == 3
    for video in videos:
        assert video.stem in printed
        with av.open(str(video)) as container:
            stream = container.streams.video[0]
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        assert stream.codec_context.name == "h264"
        assert len(frames) % 12 == 0 and frames[0].shape == (64, 64, 3)
    # The videos are the trained checkpoint's: each has its prompt's colour and motion (read
    # here from the exact frames on zarr; the random `tiny` preset's grey noise has neither).
    assert "model tiny-trained" in printed
    said = dict(re.findall(r"video (\S+) \(\d+ chunks, '([^']+)'", printed))
    assert sorted(said) == [v.stem for v in videos] and set(said.values()) <= set(DEFAULT_PROMPTS)
    for stem, prompt in said.items():
        ds = xr.open_zarr(out / "videos.zarr", group=stem, consolidated=False)
        frames = ds["frames"].values
        assert frames.dtype == np.uint8 and frames.std() > 0  # real pixels, not a blank image
        seen = dominant_colour(frames), motion_direction(frames[12:])  # motion after the first chunk
        assert seen == parse_prompt(prompt), (stem, prompt)
        assert f"seen: {seen[0]}, moving {seen[1]}" in printed
    assert (out / "state").exists() and not (tmp_path / "turboserve-state").exists()


def test_the_burst_has_arrivals_an_idle_spell_and_departures():
    visits = burst(3, 30.0)
    # two at once on the one worker (the loop has to scale out and move one), one later
    assert [v.arrive_s for v in visits[:2]] == [0, 0] and visits[2].arrive_s > 0
    assert [v.on_first_worker for v in visits] == [True, True, False]
    # the one that pauses is not on the first worker: the two there stay over its b* until one moves
    assert [v.idle_at_s is not None for v in visits] == [False, False, True]
    assert all(v.arrive_s < v.leave_s <= 30.0 for v in visits)
    idle = visits[2]
    assert idle.arrive_s < idle.idle_at_s < idle.idle_at_s + idle.idle_for_s < idle.leave_s
    assert [v.idle_at_s is not None for v in burst(2, 30.0)] == [False, True]


def test_demo_rejects_empty_work(tmp_path, capsys):
    assert main(["demo", "--sessions", "0", "--out", str(tmp_path)]) == 2
    assert "at least one session" in capsys.readouterr().err


def test_the_summary_lists_a_resume_the_sessions_own_request_woke_once():
    """No loop decision resumes a suspended session that streams again: its "resumed"
    event does. The summary counts and lists it once, whether or not the loop also
    logged a Resume for it."""
    from framework.demo import summarize

    t0 = 1.7e9
    log = {"intervals": [{"time_s": t0 + 1, "n_workers": 1}, {"time_s": t0 + 2, "n_workers": 2}],
           "decisions": [
               {"time_s": t0 + 3, "action": "Offload", "session_id": "a", "worker": None, "accepted": True},
               {"time_s": t0 + 9, "action": "Resume", "session_id": "b", "worker": "w1", "accepted": True},
           ]}
    events = {"a": [{"kind": "started", "t": t0, "worker": "w0"}, {"kind": "resumed", "t": t0 + 7.0, "worker": "w1"}],
              "b": [{"kind": "resumed", "t": t0 + 9.02, "worker": "w1"}]}
    summary = summarize(log, [], t0, events)
    assert summary["resumes"] == 2 and summary["offloads"] == 1 and summary["scale_outs"] == 1
    assert summary["moves"] == [(3.0, "Offload", "a", None), (7.0, "Resume", "a", "w1"), (9.0, "Resume", "b", "w1")]
    without = summarize(log, [], t0)  # no events: the loop's decisions alone
    assert without["resumes"] == 1 and [m[1] for m in without["moves"]] == ["Offload", "Resume"]


def test_a_sessions_latency_line_breaks_across_its_idle_spell():
    from framework.demo import _with_breaks

    x, y = _with_breaks([0.0, 0.5, 1.0, 1.5, 9.0, 9.5], [1, 2, 3, 4, 5, 6])
    assert np.isnan(x[4]) and np.isnan(y[4])
    assert [v for v in x if not np.isnan(v)] == [0.0, 0.5, 1.0, 1.5, 9.0, 9.5] and len(x) == 7
    assert _with_breaks([1.0], [2.0]) == ([1.0], [2.0])
