"""Plots of replay results: latency CDF per policy, GPUs over time, per-policy bars.

PNG through matplotlib (Agg backend, no display needed) and HTML through bokeh, one file
of each per figure, written next to the tables.
"""

from __future__ import annotations

import pathlib
from collections.abc import Mapping, Sequence

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
    labels: Sequence[str],
) -> list[pathlib.Path]:
    """Write ``latency_cdf``, ``gpus_over_time`` and ``policy_bars`` as PNG and HTML.

    ``chunks`` and ``intervals`` map run labels (``"<trace>__<policy>"``) to tables; each
    summary row is one run, ``labels`` its label, row by row. Returns the written paths.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from bokeh.io import save
    from bokeh.layouts import column
    from bokeh.plotting import figure
    from bokeh.resources import CDN

    out = pathlib.Path(out_dir)
    rows = summary.to_dict("records")
    labels = list(labels)
    titles = [f"{r['policy']} [{r['trace']}]" for r in rows]
    traces = list(dict.fromkeys(str(r["trace"]) for r in rows))
    policies = list(dict.fromkeys(str(r["policy"]) for r in rows))
    colors = {p: plt.get_cmap("tab10")(k % 10) for k, p in enumerate(policies)}
    hexes = {p: matplotlib.colors.to_hex(c) for p, c in colors.items()}
    written: list[pathlib.Path] = []

    def panels(kind: str, draw_mpl, draw_bk, xlabel: str, ylabel: str, **bk_args):
        # One panel per trace, one line per policy (same colour for a policy everywhere).
        n = len(traces)
        cols = min(n, 3)
        nrows = (n + cols - 1) // cols
        fig, axes = plt.subplots(nrows, cols, figsize=(5 * cols, 3.6 * nrows), squeeze=False)
        bk_figs = []
        for k, trace in enumerate(traces):
            ax = axes[k // cols][k % cols]
            bk = figure(title=f"{kind} [{trace}]", x_axis_label=xlabel, y_axis_label=ylabel, width=700,
                        height=320, **bk_args)
            for row, label in zip(rows, labels):
                if str(row["trace"]) != trace:
                    continue
                policy = str(row["policy"])
                draw_mpl(ax, label, policy)
                draw_bk(bk, label, policy)
            ax.set_title(trace, fontsize=9)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            if ax.lines:
                ax.legend(fontsize=7)
            bk_figs.append(bk)
        for k in range(n, nrows * cols):
            axes[k // cols][k % cols].set_visible(False)
        fig.suptitle(kind)
        fig.tight_layout()
        return fig, bk_figs

    def cdf_mpl(ax, label, policy):
        df = chunks.get(label)
        if df is not None and not df.empty:
            x, y = _cdf(df["latency_s"].to_numpy(float))
            ax.plot(np.maximum(x, 1e-6), y, label=policy, color=colors[policy])
            ax.set_xscale("log")

    def cdf_bk(bk, label, policy):
        df = chunks.get(label)
        if df is not None and not df.empty:
            x, y = _cdf(df["latency_s"].to_numpy(float))
            bk.line(np.maximum(x, 1e-6), y, legend_label=policy, color=hexes[policy])

    fig, bk_cdf = panels("per-chunk latency CDF", cdf_mpl, cdf_bk, "latency (s)", "share of chunks",
                         x_axis_type="log")
    written.append(_save_png(fig, out / "latency_cdf.png", plt))

    def gpu_mpl(ax, label, policy):
        df = intervals.get(label)
        if df is not None and not df.empty:
            ax.step(df["time_s"], df["n_workers"], where="post", label=policy, color=colors[policy])

    def gpu_bk(bk, label, policy):
        df = intervals.get(label)
        if df is not None and not df.empty:
            bk.step(df["time_s"].to_numpy(), df["n_workers"].to_numpy(), mode="after", legend_label=policy,
                    color=hexes[policy])

    fig, bk_gpu = panels("GPUs provisioned over time", gpu_mpl, gpu_bk, "time (s)", "workers")
    written.append(_save_png(fig, out / "gpus_over_time.png", plt))

    # per-policy bars
    metrics = [("max_latency_s", "max latency (s)"), ("p99_latency_s", "p99 latency (s)"),
               ("slo_attainment", "SLO attainment"), ("gpu_hours", "GPU-hours")]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.5 * len(metrics), 4), squeeze=False)
    width = 0.8 / max(len(policies), 1)
    bk_bars = []
    for ax, (col, name) in zip(axes[0], metrics):
        values = pd.to_numeric(summary[col], errors="coerce")
        # grouped bars: one group per trace, one colour per policy
        for j, policy in enumerate(policies):
            mask = summary["policy"].astype(str) == policy
            xs = [traces.index(str(t)) + (j - (len(policies) - 1) / 2) * width for t in summary.loc[mask, "trace"]]
            ax.bar(xs, values[mask].to_numpy(float), width=width, color=colors[policy], label=policy)
        ax.set_xticks(range(len(traces)), traces, rotation=30, fontsize=7, ha="right")
        ax.set_title(name)
        p = figure(title=name, x_range=titles, width=800, height=300)
        p.vbar(x=titles, top=np.nan_to_num(values.to_numpy(float)), width=0.8,
               color=[hexes[str(r["policy"])] for r in rows])
        p.xaxis.major_label_orientation = 1.2
        bk_bars.append(p)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    written.append(_save_png(fig, out / "policy_bars.png", plt))

    for name, layout in (("latency_cdf", column(*bk_cdf)), ("gpus_over_time", column(*bk_gpu)),
                         ("policy_bars", column(*bk_bars))):
        path = out / f"{name}.html"
        save(layout, filename=str(path), resources=CDN, title=name)
        written.append(path)
    return written


def _save_png(fig, path: pathlib.Path, plt) -> pathlib.Path:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def write_frontier_plot(path: str | pathlib.Path, frontier: pd.DataFrame) -> pathlib.Path:
    """GPU-hours against the in-stream worst chunk and p99, one line per policy family.

    One row of panels per trace (worst case left, p99 right); a family's points are its
    runs ordered by knob, averaged over seeds (the frontier table has every seed).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    traces = list(dict.fromkeys(frontier["trace"]))
    fig, axes = plt.subplots(len(traces), 2, figsize=(12, 4 * len(traces)), squeeze=False)
    mean = frontier.groupby(["trace", "policy", "knob"], sort=False)[
        ["gpu_hours", "instream_max_s", "instream_p99_s"]].mean().reset_index()
    for row, trace in enumerate(traces):
        part = mean[mean["trace"] == trace]
        for col, tail in enumerate(("instream_max_s", "instream_p99_s")):
            ax = axes[row][col]
            for policy, g in part.groupby("policy", sort=False):
                g = g.sort_values("knob")
                bold = policy.startswith("turboserve") and "ref" not in policy
                ax.plot(g["gpu_hours"], g[tail], marker="o", linewidth=2.5 if bold else 1.2, label=policy)
            ax.set_xlabel("GPU-hours")
            ax.set_ylabel(f"{tail} (s)")
            ax.set_title(f"{trace}: {'in-stream worst chunk' if col == 0 else 'in-stream p99'}")
            ax.grid(alpha=0.3)
        axes[row][0].legend(fontsize=7)
    fig.tight_layout()
    return _save_png(fig, pathlib.Path(path), plt)
