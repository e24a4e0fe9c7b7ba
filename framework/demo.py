"""``turboserve demo``: a short burst on a local cluster, and what the closed loop did about it.

The demo starts a one-worker LocalCluster with the closed control loop and session-aware
autoscaling (:meth:`framework.Server.adapt`) and plays a scripted burst (:func:`burst`):
sessions arrive and stream at their playback pace, one goes idle and comes back, all
leave. The loop places the newcomers, asks for more workers when one worker cannot keep
every chunk under the SLO, migrates sessions onto the new workers, offloads the idle
session to host memory, resumes it when it streams again, and retires workers after the
burst. The demo prints what it did (from the loop's decision log and interval rows and
the chunks' own metrics), draws it (``loop.png``: workers and sessions over time, chunk
latency per session, the loop's actions) and writes each session's video.

The videos come from the small checkpoint trained on CPU that ships in the package
(``tiny-trained``, :mod:`kernels.train`), prompted in the form it was trained on ("a red
square moving right"): each video shows a square of the prompt's colour moving its way,
and the demo prints the colour and motion it measured in the frames next to the video
(``--model tiny`` streams the random-weight preset's noise instead).

The demo's knobs make the loop act within a minute on any machine: the SLO is set below
any step time (``slo-s``), so the load-driven autoscaler budgets one active session per
worker; idle sessions are offloaded after a few seconds; any predicted gain is worth a
move. They are set with ``dask.config`` for the demo only. How soon a new worker is
usable depends on the machine, so the sessions stay past the burst (up to three times
its length) until the loop has migrated one.
"""

from __future__ import annotations

import pathlib
import threading
import time
from dataclasses import dataclass
from typing import Any

#: The demo's model: the small checkpoint trained on CPU that ships in the package
#: (``kernels/weights/tiny-trained``, :mod:`kernels.train`); ``tiny`` (random weights) also works.
DEFAULT_MODEL = "tiny-trained"
#: Prompts in the form the trained checkpoint knows (:func:`kernels.synthetic.prompt_for`):
#: its videos show a square of the prompt's colour moving in the prompt's direction.
DEFAULT_PROMPTS = (
    "a red square moving right",
    "a cyan square moving down",
    "a yellow square moving left",
    "a blue square moving up",
)

#: Settings of the demo (``turboserve.*`` keys), applied unless ``keep_config``.
DEMO_CONFIG = {
    "turboserve.slo-s": 0.01,                # below any step (a quiet CPU steps in ~40 ms): one active session per worker
    "turboserve.control.interval": "500ms",
    "turboserve.control.idle-offload-s": 3,
    "turboserve.autoscale.wait-count": 1,
    # any predicted gain is worth a move; and the SLO being below any step, the
    # autoscaler buys a worker a session only where running alone gains as much
    "turboserve.control.migration-gain": 0.01,
}
#: Control-loop overrides of the demo (:class:`framework.control_settings.ControlSettings`).
DEMO_CONTROL = {
    "autoscaling_params": {"downscale_delay_s": 8, "headroom_quantile": 0},
    # Plan with the preset's measured CPU profile (kernels/profiles/<model>-cpu.csv; for
    # tiny-trained a batch of 2 costs 1.2x one, of 4 2.2x), not with what the burst's few
    # chunks measure: on a busy 2-core machine the smallest recent latency per batch size
    # comes out nearly flat as often as not, and then moving a session off the first
    # worker "gains" under min_gain and nothing moves (1 run in 4-5 showed no migration).
    "measure": False,
}


@dataclass(frozen=True, slots=True)
class Visit:
    """One session of the burst: when it opens, when it pauses and for how long, when it leaves.

    Times are seconds from the start of the burst; ``idle_at_s`` None: never idle.
    """

    arrive_s: float
    leave_s: float
    idle_at_s: float | None = None
    idle_for_s: float = 0.0
    on_first_worker: bool = False  # opened on the cluster's first worker, not where placement would put it


def burst(n_sessions: int, length_s: float) -> list[Visit]:
    """The demo's burst: sessions 0 and 1 together, the others a few seconds later, one idle a while.

    The first two open at the same instant on a cluster of one warm worker
    (:func:`run_demo` waits for the model), both asking for that worker by name
    (``on_first_worker``): both stream there, over its ``b*``, and the loop must scale out
    and migrate one of them. Left to placement, one of them would wait for a worker the
    loop starts for it instead (the one whose open comes second, or both when the loop
    ticks while an open is under way: which depends on the machine's speed), and then
    nothing needs to move.

    Every session leaves by ``length_s``. Session 2 (session 1 when there are only two)
    goes idle at half time for a third of the burst, long enough for the idle-timeout
    offload: not one of the two on the first worker, which would then no longer be over
    its ``b*`` (and, resumed, go wherever there is room) should the new workers be slow
    to start and the idle spell come first: nothing would have to move.
    """
    idle = 2 if n_sessions > 2 else 1
    visits = []
    for i in range(n_sessions):
        arrive = 0.0 if i < 2 else 2.0 + 0.5 * i
        leave = length_s - 2.0 * (n_sessions - 1 - i) / max(n_sessions, 1)
        pause = {"idle_at_s": 0.45 * length_s, "idle_for_s": length_s / 3} if i == idle else {}
        visits.append(Visit(arrive, leave, on_first_worker=i < 2, **pause))
    return visits


def _play(server: Any, visit: Visit, prompt: str, seed: int, t0: float, out: dict[str, Any],
          stay: threading.Event | None = None, cap_s: float = 0.0, first_worker: str | None = None) -> None:
    """Stream one session along its visit, at playback pace; fill ``out`` (session, chunks).

    While ``stay`` is set the session stays past its ``leave_s`` (up to ``cap_s``).
    ``first_worker``: where a visit ``on_first_worker`` opens.
    """
    time.sleep(max(0.0, t0 + visit.arrive_s - time.time()))
    session = server.open_session(prompt, seed=seed, worker=first_worker if visit.on_first_worker else None)
    out["session"], out["chunks"] = session, []
    period = session.frames / session.fps
    idle_done = visit.idle_at_s is None
    try:
        while time.time() - t0 < visit.leave_s or (stay is not None and stay.is_set() and time.time() - t0 < cap_s):
            if not idle_done and time.time() - t0 >= visit.idle_at_s:
                idle_done = True
                session.pause()  # the viewer looks away: idle, its state still on the device
                time.sleep(1.0)
                session.pause()  # again: a chunk the engine had in flight counts as a new request
                time.sleep(visit.idle_for_s)
                continue  # streaming again resumes it, wherever the loop put it
            asked = time.time()
            for chunk in session.stream(1):
                out["chunks"].append(chunk)
            time.sleep(max(0.0, period - (time.time() - asked)))
    except Exception as exc:  # shown in the summary, never hidden
        out["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        out["events"] = session.events()
        session.close()


def _warm_workers(dask_scheduler: Any) -> int:
    """Workers in the scheduler that have loaded their model (run on the scheduler)."""
    from framework.registry import PLUGIN_NAME

    warming = dask_scheduler.plugins[PLUGIN_NAME].warming()
    return sum(1 for address in dask_scheduler.workers if address not in warming)


def _wait_warm(server: Any, timeout_s: float = 300.0) -> float:
    """Wait until a worker has loaded the model; returns the seconds waited.

    The burst starts on a cluster that can serve: sessions opened while the only worker
    still loads its model wait for it, and the loop meanwhile starts workers for them,
    so each lands on a worker of its own and there is nothing to migrate.
    """
    t0 = time.monotonic()
    while server.client.run_on_scheduler(_warm_workers) < 1:
        if time.monotonic() - t0 > timeout_s:
            raise TimeoutError(f"no worker loaded the model within {timeout_s:.0f} s")
        time.sleep(0.2)
    return time.monotonic() - t0


def _relative(log: dict[str, Any], t0: float) -> dict[str, Any]:
    """The loop's log with its times in seconds since ``t0`` (the live loop stamps wall time)."""
    def rel(t: float) -> float:
        return t - t0 if t > 1e8 else t

    return {
        "decisions": [{**d, "time_s": rel(d["time_s"])} for d in log["decisions"]],
        "intervals": [{**r, "time_s": rel(r["time_s"])} for r in log["intervals"]],
    }


def _migrated(server: Any) -> bool:
    """Whether the loop has migrated a session yet."""
    log = server.client.sync(server.client.scheduler.turboserve_control_log)
    return any(d["accepted"] and d["action"] == "Migrate" for d in log["decisions"])


def summarize(log: dict[str, Any], chunks: list[Any], t0: float,
              events: dict[str, list[dict[str, Any]]] | None = None) -> dict[str, Any]:
    """What the loop did, from its log (``turboserve_control_log``) and the chunks received."""
    import numpy as np

    log = _relative(log, t0)
    accepted = [d for d in log["decisions"] if d["accepted"]]
    n_workers = [row["n_workers"] for row in log["intervals"]]
    ups = sum(1 for a, b in zip(n_workers, n_workers[1:]) if b > a)
    downs = sum(1 for a, b in zip(n_workers, n_workers[1:]) if b < a)
    latency = np.array([c.latency_s for c in chunks]) if chunks else np.zeros(0)

    def count(action: str) -> int:
        return sum(1 for d in accepted if d["action"] == action)

    resumed = _resumed(events or {}, t0)
    moves = [(round(d["time_s"], 1), d["action"], d["session_id"], d["worker"]) for d in accepted
             if d["action"] in ("Migrate", "Offload") or (d["action"] == "Resume" and events is None)]
    # a suspended session's own request resumes it (no decision): its "resumed" events
    moves += [(round(t, 1), "Resume", sid, worker) for sid, t, worker in resumed]

    return {
        "workers": n_workers,
        "max_workers": max(n_workers, default=0),
        "scale_outs": ups,
        "scale_ins": downs,
        "placements": count("Place"),
        "migrations": count("Migrate"),
        "offloads": count("Offload"),
        # the loop's Resume actions, and the resumes a session's own request woke
        "resumes": max(count("Resume"), len(resumed)),
        "chunks": len(chunks),
        "migrated_chunks": sum(1 for c in chunks if c.migrated),
        "latency_p50_s": float(np.percentile(latency, 50)) if len(latency) else None,
        "latency_p95_s": float(np.percentile(latency, 95)) if len(latency) else None,
        "moves": sorted(moves),
    }


def _resumed(events: dict[str, list[dict[str, Any]]], t0: float) -> list[tuple[str, float, str | None]]:
    """``(session, seconds since t0, worker)`` of every resume in the sessions' events."""
    return [(sid, e["t"] - t0, e.get("worker")) for sid, ev in events.items() for e in ev
            if e["kind"] == "resumed" and e.get("t") is not None]


def plot(path: pathlib.Path, log: dict[str, Any], per_session: dict[str, list[Any]], t0: float,
         events: dict[str, list[dict[str, Any]]] | None = None) -> pathlib.Path:
    """``loop.png``: workers and sessions over time, chunk latency per session, the loop's actions.

    ``events``: the sessions' own events (:meth:`framework.Session.events`), for the
    resumes a session's request woke without a decision of the loop.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    log = _relative(log, t0)
    fig, (top, mid, low) = plt.subplots(3, 1, figsize=(9, 8), sharex=True,
                                        gridspec_kw={"height_ratios": [2, 3, 2]})
    rows = log["intervals"]
    t = [r["time_s"] for r in rows]
    top.step(t, [r["n_workers"] for r in rows], where="post", lw=2, label="workers")
    top.step(t, [r["n_active"] for r in rows], where="post", label="active sessions")
    top.step(t, [r["n_idle"] for r in rows], where="post", ls="--", label="idle")
    top.step(t, [r["n_suspended"] for r in rows], where="post", ls=":", label="offloaded")
    top.set_ylabel("count")
    top.legend(loc="upper right", fontsize=8, ncol=4)
    ids = sorted(per_session)
    for i, sid in enumerate(ids):
        cs = per_session[sid]
        x, y = _with_breaks([c.t_done_s - t0 for c in cs], [c.latency_s for c in cs])
        mid.plot(x, y, ".-", ms=4, lw=0.6, label=sid, color=f"C{i}")
        moved = [c for c in cs if c.migrated]
        mid.plot([c.t_done_s - t0 for c in moved], [c.latency_s for c in moved], "kx", ms=8)
    mid.set_ylabel("chunk latency (s)\n(x: first after a move)")
    mid.legend(loc="upper right", fontsize=7)
    marks = {"Place": "o", "Migrate": ">", "Offload": "v", "Resume": "^", "Retire": "s", "ScaleTo": "*"}
    lanes = {sid: i for i, sid in enumerate(ids)}
    for d in log["decisions"]:
        if d["accepted"] and d["action"] in marks and not (d["action"] == "Resume" and events is not None):
            y = lanes.get(d["session_id"], len(ids))
            low.plot(d["time_s"], y, marks[d["action"]], color="C%d" % y if y < len(ids) else "k", ms=7)
    for sid, t, _ in _resumed(events or {}, t0):
        if sid in lanes:
            low.plot(t, lanes[sid], marks["Resume"], color="C%d" % lanes[sid], ms=7)
    low.set_yticks(range(len(ids) + 1), [*ids, "workers"], fontsize=7)
    low.set_xlabel("seconds since the burst started")
    low.set_title("actions: o place  > migrate  v offload  ^ resume  * scale  s retire", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _with_breaks(x: list[float], y: list[float]) -> tuple[list[float], list[float]]:
    """``x, y`` with a gap (NaN) where a session paused: no line drawn across its idle spell."""
    gaps = sorted(b - a for a, b in zip(x, x[1:]))
    if not gaps:
        return x, y
    limit = 4 * gaps[len(gaps) // 2]  # four times the usual spacing of its chunks
    xs, ys = [x[0]], [y[0]]
    for (a, b), v in zip(zip(x, x[1:]), y[1:]):
        if b - a > limit:
            xs.append(float("nan"))
            ys.append(float("nan"))
        xs.append(b)
        ys.append(v)
    return xs, ys


def run_demo(
    n_sessions: int = 3,
    length_s: float = 30.0,
    out_dir: str | pathlib.Path = "turboserve-demo",
    prompts: list[str] | None = None,
    max_workers: int = 3,
    video_format: str = "mp4",
    keep_config: bool = False,
    model: str = DEFAULT_MODEL,
) -> dict[str, Any]:
    """Play :func:`burst` on a local cluster with the closed loop; print, plot and write videos.

    Returns ``{"videos": {session_id: path}, "plot": path, "summary": summarize(...), "colours":
    {session_id: dominant colour of its frames}, "motions": {session_id: their direction}, ...}``.
    """
    import dask.config
    import numpy as np
    from dask.utils import parse_timedelta

    from framework import Server, config
    from kernels.synthetic import dominant_colour, motion_direction
    from storage import VideoStore
    from storage.errors import VideoStoreError

    if n_sessions < 1 or length_s <= 0:
        raise ValueError(f"demo needs at least one session and a positive length, got {n_sessions=} {length_s=}")
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prompts = list(prompts or DEFAULT_PROMPTS)
    settings = {} if keep_config else dict(DEMO_CONFIG)
    if config.get("state.store") == config.DEFAULTS["turboserve"]["state"]["store"]:
        # Keep the demo's checkpoints beside its videos rather than in the working directory.
        settings["turboserve.state.store"] = str(out / "state")
    started = time.perf_counter()
    with dask.config.set(settings), Server.local(n_workers=1, model=model, adaptive=False) as server:
        server.adapt(minimum=1, maximum=max_workers, **({} if keep_config else DEMO_CONTROL))
        waited = _wait_warm(server)
        print(f"cluster up: 1 worker, model {model} loaded in {waited:.1f}s, closed loop on "
              f"(autoscaling 1..{max_workers}), dashboard {server.dashboard_link}")
        t0 = time.time()
        visits = burst(n_sessions, length_s)
        results = [{} for _ in visits]
        # The sessions stay past their leave time (up to three times the burst) until the
        # loop has migrated one: how soon new workers are usable (started, model loaded)
        # depends on the machine; on a loaded 2-core machine twice the burst was not always enough.
        stay, cap_s = threading.Event(), 3 * length_s
        stay.set()
        first = server.workers()[0]
        threads = [threading.Thread(target=_play, args=(server, v, prompts[i % len(prompts)], i, t0, results[i],
                                                        stay, cap_s, first), daemon=True) for i, v in enumerate(visits)]
        for th in threads:
            th.start()
        # Check for the migration every second and print every five; go on as soon as the
        # sessions have left (a fixed 5 s sleep here cost up to 5 s at the end).
        next_print = t0 + 5.0
        while alive := [th for th in threads if th.is_alive()]:
            alive[0].join(timeout=1.0)
            if stay.is_set() and _migrated(server):
                stay.clear()
            if time.time() >= next_print and any(th.is_alive() for th in threads):
                next_print += 5.0
                status = [r["session"].status if "session" in r else "-" for r in results]
                print(f"  t={time.time() - t0:5.1f}s  workers {len(server.workers())}  "
                      f"chunks {sum(len(r.get('chunks', ())) for r in results)}  sessions {' '.join(status)}",
                      flush=True)
        for th in threads:
            th.join()
        time.sleep(3 * float(parse_timedelta(config.get("control.interval"))))  # a last tick or two
        log = server.client.sync(server.client.scheduler.turboserve_control_log)
        per_session = {r["session"].id: r["chunks"] for r in results if "session" in r}
        chunks = [c for cs in per_session.values() for c in cs]
        events = {r["session"].id: r.get("events", []) for r in results if "session" in r}
        summary = summarize(log, chunks, t0, events)
        videos = {}
        for r in results:
            if "session" not in r or not r["chunks"]:
                continue
            s = r["session"]
            store = VideoStore(out / "videos.zarr", s.id, model=s.model, fps=s.fps, height=s.height, width=s.width)
            for c in r["chunks"]:
                store.append(c.frames, chunk_index=c.index)
            try:
                videos[s.id] = store.to_video(out / f"{s.id}.{video_format}")
            except VideoStoreError as exc:  # no encoder for that format here: GIF always works
                print(f"  {video_format} not written ({exc}); writing GIF instead")
                videos[s.id] = store.to_video(out / f"{s.id}.gif")
        figure = plot(out / "loop.png", log, per_session, t0, events)
    prompt_of = {r["session"].id: prompts[i % len(prompts)] for i, r in enumerate(results) if "session" in r}
    frames = {sid: np.concatenate([c.frames for c in sorted(per_session[sid], key=lambda c: c.index)])
              for sid in videos}
    colours = {sid: dominant_colour(f) for sid, f in frames.items()}
    # after the first chunk, as kernels.train --evaluate measures it
    motions = {sid: motion_direction(f[len(per_session[sid][0].frames):]) for sid, f in frames.items()}
    errors = [r["error"] for r in results if "error" in r]
    print("what the closed loop did:")
    print(f"  workers over time: {' -> '.join(str(n) for i, n in enumerate(summary['workers']) if i == 0 or n != summary['workers'][i - 1])}"
          f"  (scale-outs {summary['scale_outs']}, scale-ins {summary['scale_ins']})")
    print(f"  placements {summary['placements']}, migrations {summary['migrations']}, "
          f"offloads {summary['offloads']}, resumes {summary['resumes']}")
    for t, action, sid, worker in summary["moves"]:
        print(f"    t={t:5.1f}s  {action:8s} {sid} " + (f"-> {worker}" if worker else "off its worker"))
    if summary["chunks"]:
        print(f"  chunk latency p50 {summary['latency_p50_s']:.2f}s, p95 {summary['latency_p95_s']:.2f}s over "
              f"{summary['chunks']} chunks ({summary['migrated_chunks']} first after a move)")
    for sid, path in videos.items():
        print(f"  video {sid} ({len(per_session[sid])} chunks, {prompt_of[sid]!r}, "
              f"seen: {colours[sid]}, moving {motions[sid]}): {path}")
    print(f"  plot: {figure}")
    for e in errors:
        print(f"  error: {e}")
    print(f"done in {time.perf_counter() - started:.1f}s")
    return {"videos": videos, "plot": figure, "summary": summary, "errors": errors, "events": events,
            "model": model, "prompts": prompt_of, "colours": colours, "motions": motions}
