"""Plots of replay results: latency CDF per policy, GPUs over time, per-policy bars.

PNG through matplotlib (Agg backend, no display needed) and HTML through bokeh, one file
of each per figure, written next to the tables.
"""

from __future__ import annotations

import pathlib
from typing import Mapping

import numpy as np
import pandas as pd

_MAX_POINTS = 2000  # points per CDF curve: quantiles, so the plot stays small


def _cdf(latency: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lat = np.sort(np.asarray(latency, dtype=float))
    if lat.size > _MAX_POINTS:
        q = np.linspace(0.0, 1.0, _MAX_POINTS)
        return np.quantile(lat, q), q
    return lat, np.arange(1, lat.size + 1) / max(lat.size, 1)


def write_plots(
    out_dir: str | pathlib.Path,
    summary: pd.DataFrame,
    chunks: Mapping[str, pd.DataFrame],
    intervals: Mapping[str, pd.DataFrame],
) -> list[pathlib.Path]:
    """Write ``latency_cdf``, ``gpus_over_time`` and ``policy_bars`` as PNG and HTML.

    ``chunks`` and ``intervals`` map run labels (``"<trace>__<policy>"``) to tables; each
    summary row is one run. Returns the written paths.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from bokeh.io import save
    from bokeh.layouts import column
    from bokeh.plotting import figure
    from bokeh.resources import CDN

    from experiments.results import run_label

    out = pathlib.Path(out_dir)
    rows = summary.to_dict("records")
    labels = [run_label(r["trace"], r["policy"]) for r in rows]
    titles = [f"{r['policy']} [{r['trace']}]" for r in rows]
    written: list[pathlib.Path] = []

    # latency CDF
    fig, ax = plt.subplots(figsize=(7, 4))
    bk_cdf = figure(title="per-chunk latency CDF", x_axis_label="latency (s)", y_axis_label="share of chunks",
                    x_axis_type="log", width=800, height=400)
    for label, title in zip(labels, titles):
        df = chunks.get(label)
        if df is None or df.empty:
            continue
        x, y = _cdf(df["latency_s"].to_numpy(float))
        x = np.maximum(x, 1e-6)
        ax.plot(x, y, label=title)
        bk_cdf.line(x, y, legend_label=title)
    ax.set_xscale("log")
    ax.set_xlabel("latency (s)")
    ax.set_ylabel("share of chunks")
    ax.set_title("per-chunk latency CDF")
    if ax.lines:
        ax.legend(fontsize=7)
    written.append(_save_png(fig, out / "latency_cdf.png", plt))

    # GPUs over time
    fig, ax = plt.subplots(figsize=(7, 4))
    bk_gpu = figure(title="GPUs provisioned over time", x_axis_label="time (s)", y_axis_label="workers",
                    width=800, height=400)
    for label, title in zip(labels, titles):
        df = intervals.get(label)
        if df is None or df.empty:
            continue
        ax.step(df["time_s"], df["n_workers"], where="post", label=title)
        bk_gpu.step(df["time_s"].to_numpy(), df["n_workers"].to_numpy(), mode="after", legend_label=title)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("workers")
    ax.set_title("GPUs provisioned over time")
    if ax.lines:
        ax.legend(fontsize=7)
    written.append(_save_png(fig, out / "gpus_over_time.png", plt))

    # per-policy bars
    metrics = [("max_latency_s", "max latency (s)"), ("p99_latency_s", "p99 latency (s)"),
               ("slo_attainment", "SLO attainment"), ("gpu_hours", "GPU-hours")]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 4))
    bk_bars = []
    for ax, (col, name) in zip(axes, metrics):
        values = pd.to_numeric(summary[col], errors="coerce").to_numpy(float)
        ax.bar(range(len(values)), values)
        ax.set_xticks(range(len(values)), titles, rotation=75, fontsize=6)
        ax.set_title(name)
        p = figure(title=name, x_range=titles, width=800, height=300)
        p.vbar(x=titles, top=np.nan_to_num(values), width=0.8)
        p.xaxis.major_label_orientation = 1.2
        bk_bars.append(p)
    fig.tight_layout()
    written.append(_save_png(fig, out / "policy_bars.png", plt))

    for name, layout in (("latency_cdf", bk_cdf), ("gpus_over_time", bk_gpu), ("policy_bars", column(*bk_bars))):
        path = out / f"{name}.html"
        save(layout, filename=str(path), resources=CDN, title=name)
        written.append(path)
    return written


def _save_png(fig, path: pathlib.Path, plt) -> pathlib.Path:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
