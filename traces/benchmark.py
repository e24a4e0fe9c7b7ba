"""Benchmark: the vectorised generator against a per-session Python loop, side by side.

Run ``python -m traces.benchmark [--sessions N]``. Both build the same kind of trace
(one client, constant rate, Gamma inter-arrivals, lognormal lifetimes, active/idle
periods) from the same spec; the loop is what a direct transcription of the session
state machine looks like. Prints the times, their ratio, and the throughput of the
named scenarios at the sizes the simulator needs.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from traces.generator import generate
from traces.spec import ClientSpec, WorkloadSpec
from traces.io import validate
from traces.schema import COLUMNS


def loop_generate(spec: WorkloadSpec) -> pd.DataFrame:
    """The baseline: one session at a time, one event at a time, rows as dicts."""
    (client,) = spec.clients
    rng = np.random.default_rng(spec.seed)
    rate = float(client.rate) * spec.scale
    shape = 1.0 / client.cv**2
    v = client.mix[0]
    rows = []
    t = 0.0
    i = 0
    while True:
        t += rng.gamma(shape, 1.0 / (rate * shape))
        if t >= spec.duration_s:
            break
        sid = f"{client.client_id}-{i}"
        i += 1
        close = min(t + float(client.lifetime.sample(rng, 1)[0]), spec.duration_s)
        rows.append({"time_s": t, "session_id": sid, "event": "open", "client_id": client.client_id,
                     "model": v.model, "chunk_frames": v.chunk_frames, "height": v.height,
                     "width": v.width, "fps": v.fps})
        now, active = t, True
        while True:
            dist = client.active if active else client.idle
            now += float(dist.sample(rng, 1)[0])
            if now >= close:
                break
            active = not active
            rows.append({"time_s": now, "session_id": sid, "event": "active" if active else "idle",
                         "client_id": client.client_id})
        rows.append({"time_s": close, "session_id": sid, "event": "close",
                     "client_id": client.client_id})
    df = pd.DataFrame.from_records(rows, columns=list(COLUMNS))
    return df.sort_values("time_s", kind="stable").reset_index(drop=True)


def _timed(func, *args):
    start = time.perf_counter()
    out = func(*args)
    return out, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    """Print the side-by-side comparison and the scenario throughput."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=5000, help="sessions in the comparison")
    parser.add_argument("--skip-scenarios", action="store_true")
    args = parser.parse_args(argv)

    rate = 1.0
    spec = WorkloadSpec((ClientSpec("c", rate=rate, cv=2.0),), args.sessions / rate, seed=0)
    loop_df, loop_s = _timed(loop_generate, spec)
    vec_df, vec_s = _timed(generate, spec)
    validate(vec_df)
    validate(loop_df.astype({"chunk_frames": "Int64", "height": "Int64", "width": "Int64",
                             "fps": "Int64"}))
    print(f"{'generator':<22}{'sessions':>10}{'events':>10}{'seconds':>10}")
    print(f"{'per-session loop':<22}{loop_df['session_id'].nunique():>10}{len(loop_df):>10}{loop_s:>10.2f}")
    print(f"{'vectorised':<22}{vec_df['session_id'].nunique():>10}{len(vec_df):>10}{vec_s:>10.2f}")
    print(f"speed-up (loop / vectorised): {loop_s / vec_s:.1f}x")

    if not args.skip_scenarios:
        from traces.scenarios import scenario

        print(f"\n{'scenario':<24}{'scale':>6}{'hours':>6}{'sessions':>10}{'events':>10}{'seconds':>9}")
        for name, scale, hours in (("steady", 1.0, 1), ("diurnal", 1.0, 24), ("diurnal", 4.0, 24),
                                   ("servegen-language", 1.0, 24)):
            try:
                df, sec = _timed(lambda: scenario(name, duration_s=hours * 3600.0, scale=scale))
            except FileNotFoundError as exc:
                print(f"{name:<24} skipped: {exc}")
                continue
            print(f"{name:<24}{scale:>6g}{hours:>6}{df['session_id'].nunique():>10}{len(df):>10}{sec:>9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
