"""Result tables of a replay (simulated or live): columns, the summary, the output folder.

Nothing here knows the simulator: the live replay builds the same chunk and interval
tables and calls :func:`summarize` and :func:`write_outputs` the same way.

Output folder (``--out DIR``) of one run::

    DIR/chunks.parquet     one row per chunk        (CHUNK_COLUMNS, exactly)
    DIR/intervals.parquet  one row per control tick (INTERVAL_COLUMNS, exactly)
    DIR/summary.csv        one row per trace x policy (SUMMARY_COLUMNS first, extras after)
    DIR/config.yaml        the resolved configuration
    DIR/results.zarr       xarray Dataset: summary by run, workers/active over time by run
    DIR/*.png, DIR/*.html  plots (experiments.plots)

With several runs (a paper table, a sweep) each run's chunk and interval tables go to
``DIR/runs/<trace>__<policy>/`` (same file names, same columns) and the summary, zarr
store and plots at the top cover all runs.
"""

from __future__ import annotations

import pathlib
import re
from typing import Any, Mapping

import numpy as np
import pandas as pd
import xarray as xr
import yaml

from framework.controller import INTERVAL_COLUMNS  # declared where the live loop writes them
from workers.chunk import CHUNK_COLUMNS  # declared with the chunk record

SUMMARY_COLUMNS: tuple[str, ...] = (
    "trace", "policy", "gpus", "max_latency_s", "p99_latency_s", "slo_attainment", "gpu_hours", "migrations",
)
_CHUNK_DTYPES = {
    "session_id": object, "index": "int64", "t_request_s": float, "t_start_s": float, "t_done_s": float,
    "latency_s": float, "worker": object, "batch_size": "int64", "migrated": bool,
}


def empty_chunks() -> pd.DataFrame:
    """A chunk table with the contract columns and no rows."""
    return pd.DataFrame({c: pd.Series(dtype=_CHUNK_DTYPES[c]) for c in CHUNK_COLUMNS})


def check_columns(df: pd.DataFrame, expected: tuple[str, ...], what: str) -> pd.DataFrame:
    """Return ``df`` with exactly ``expected`` columns in order; ValueError naming the missing ones."""
    missing = [c for c in expected if c not in df.columns]
    if missing:
        raise ValueError(f"{what} table lacks columns {missing}; it has {list(df.columns)}")
    return df.loc[:, list(expected)]


def latency_stats(
    latency_s: np.ndarray,
    slo_s: np.ndarray | float,
    index: np.ndarray | None = None,
    burst_first: np.ndarray | None = None,
) -> dict[str, float]:
    """Latency statistics that separate what a viewer feels, from per-chunk arrays.

    ``slo_s`` is one target or one per chunk. ``index`` (chunk index in its session) and
    ``burst_first`` (True for the first chunk of each active burst: index 0, or the first
    after a resume from idle) split the chunks in two:

    - **admission** chunks (``burst_first``): time to first chunk (``ttfc_*``, index 0)
      and the wait of a session coming back from idle (``resume_wait_*``);
    - **in-stream** chunks (all the others): ``instream_max_s``, ``instream_p99_s`` and
      ``stalls`` (in-stream chunks later than their target: the viewer sees the
      previous chunk run out).

    Without ``burst_first`` only index-0 chunks count as admission chunks.
    ``max_latency_after_first_s`` (every chunk but index 0) is kept for older tables.
    """
    lat = np.asarray(latency_s, dtype=float)
    nan = float("nan")
    if lat.size == 0:
        return dict(max_latency_s=nan, p99_latency_s=nan, p50_latency_s=nan, slo_attainment=nan,
                    stalls=0, chunks=0, ttfc_p50_s=nan, ttfc_p99_s=nan, max_latency_after_first_s=nan,
                    instream_max_s=nan, instream_p99_s=nan, resume_wait_p99_s=nan, resume_wait_max_s=nan,
                    ttfc_max_s=nan)
    slo = np.broadcast_to(np.asarray(slo_s, dtype=float), lat.shape)
    late = lat > slo + 1e-9
    out = dict(
        max_latency_s=float(lat.max()),
        p99_latency_s=float(np.quantile(lat, 0.99)),
        p50_latency_s=float(np.quantile(lat, 0.5)),
        slo_attainment=float(1.0 - late.mean()),
        chunks=int(lat.size),
    )
    if index is None:
        return out

    def q(values: np.ndarray, p: float) -> float:
        return float(np.quantile(values, p)) if values.size else nan

    idx = np.asarray(index)
    first = idx == 0
    burst = first if burst_first is None else (np.asarray(burst_first, dtype=bool) | first)
    instream = ~burst
    resumed = burst & ~first
    out["stalls"] = int(late[instream].sum())
    out["instream_max_s"] = float(lat[instream].max()) if instream.any() else nan
    out["instream_p99_s"] = q(lat[instream], 0.99)
    out["ttfc_p50_s"] = q(lat[first], 0.5)
    out["ttfc_p99_s"] = q(lat[first], 0.99)
    out["ttfc_max_s"] = float(lat[first].max()) if first.any() else nan
    out["resume_wait_p99_s"] = q(lat[resumed], 0.99)
    out["resume_wait_max_s"] = float(lat[resumed].max()) if resumed.any() else nan
    later = lat[~first]
    out["max_latency_after_first_s"] = float(later.max()) if later.size else nan
    return out


def burst_first_mask(chunks: pd.DataFrame, period_s: float | Mapping[str, float]) -> np.ndarray:
    """Which rows of a chunk table are the first of an active burst, from the contract columns.

    A session asks for chunk ``i+1`` at ``max(t_request_i + period, t_done_i)`` while it
    is active, so a request later than that by more than half a period follows an idle
    spell: that chunk waited for a resume, not in-stream. Index-0 chunks are first too.
    Returns a boolean array aligned with ``chunks``' rows.
    """
    if chunks.empty:
        return np.zeros(0, dtype=bool)
    if isinstance(period_s, Mapping):
        period = chunks["session_id"].map(period_s).to_numpy(float)
    else:
        period = np.full(len(chunks), float(period_s))
    order = np.lexsort((chunks["index"].to_numpy(), chunks["session_id"].astype(str).to_numpy()))
    sid = chunks["session_id"].astype(str).to_numpy()[order]
    req = chunks["t_request_s"].to_numpy(float)[order]
    done = chunks["t_done_s"].to_numpy(float)[order]
    per = period[order]
    first_sorted = np.ones(len(order), dtype=bool)
    same = sid[1:] == sid[:-1]
    expected = np.maximum(req[:-1] + per[:-1], done[:-1])
    first_sorted[1:] = ~same | (req[1:] > expected + 0.5 * per[1:])
    mask = np.empty(len(order), dtype=bool)
    mask[order] = first_sorted
    return mask | (chunks["index"].to_numpy() == 0)


def summarize(
    chunks: pd.DataFrame,
    intervals: pd.DataFrame,
    *,
    trace: str,
    policy: str,
    gpus: int,
    slo_s: float | Mapping[str, float],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One summary row (a dict; contract keys first) from a run's chunk and interval tables.

    Parameters
    ----------
    chunks, intervals
        Tables with :data:`CHUNK_COLUMNS` and :data:`INTERVAL_COLUMNS`.
    trace, policy, gpus
        Labels of the run (``gpus``: the cluster size the run was given).
    slo_s
        The per-chunk latency target, or one per session id.
    extra
        More columns to append (offloads, refused actions, ...).
    """
    check_columns(chunks, CHUNK_COLUMNS, "chunk")
    check_columns(intervals, INTERVAL_COLUMNS, "interval")
    if isinstance(slo_s, Mapping):
        slo = chunks["session_id"].map(slo_s).to_numpy(float)
        if np.isnan(slo).any():
            raise ValueError("slo_s mapping lacks some session ids of the chunk table")
    else:
        slo = float(slo_s)
    stats = latency_stats(chunks["latency_s"].to_numpy(float), slo, chunks["index"].to_numpy(),
                          burst_first_mask(chunks, slo_s))
    return summary_row(
        trace=trace, policy=policy, gpus=gpus, stats=stats,
        gpu_seconds=float(intervals["cost_gpu_s"].sum()),
        migrations=int(intervals["migrations"].sum()),
        extra=extra,
    )


def summary_row(
    *, trace: str, policy: str, gpus: int, stats: Mapping[str, float], gpu_seconds: float,
    migrations: int, extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble a summary row in contract order from precomputed latency stats."""
    row: dict[str, Any] = {
        "trace": trace,
        "policy": policy,
        "gpus": int(gpus),
        "max_latency_s": stats["max_latency_s"],
        "p99_latency_s": stats["p99_latency_s"],
        "slo_attainment": stats["slo_attainment"],
        "gpu_hours": gpu_seconds / 3600.0,
        "migrations": int(migrations),
    }
    for key in ("instream_max_s", "instream_p99_s", "stalls", "ttfc_p99_s", "resume_wait_p99_s", "p50_latency_s",
                "ttfc_p50_s", "ttfc_max_s", "resume_wait_max_s", "max_latency_after_first_s", "chunks"):
        if key in stats:
            row[key] = stats[key]
    row.update(extra or {})
    return row


def _safe(raw: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=,+-]+", "-", raw)


def _run_label(row: Mapping[str, Any]) -> str:
    return _safe(f"{row['trace']}__{row['policy']}")


def results_dataset(summary: pd.DataFrame, intervals: Mapping[str, pd.DataFrame]) -> xr.Dataset:
    """An xarray Dataset of the runs: numeric summary columns by ``run``; workers, active
    sessions and cost over ``time_s`` by ``run`` (NaN where a run has no tick)."""
    runs = [_run_label(r) for r in summary.to_dict("records")]
    # Variable-length strings (object dtype): zarr v3 has a spec for those, not for fixed-width.
    ds = xr.Dataset(coords={"run": np.array(runs, dtype=object)})
    ds = ds.assign_coords(trace=("run", summary["trace"].astype(str).to_numpy(dtype=object)),
                          policy=("run", summary["policy"].astype(str).to_numpy(dtype=object)))
    for col in summary.columns:
        if col in ("trace", "policy"):
            continue
        values = pd.to_numeric(summary[col], errors="coerce")
        if values.notna().any():
            ds[col] = ("run", values.to_numpy(float))
    frames = {run: intervals[run].set_index("time_s") for run in runs if run in intervals}
    if frames:
        for col in ("n_workers", "n_active", "n_idle", "n_suspended", "cost_gpu_s"):
            table = pd.DataFrame({run: f[col] for run, f in frames.items()}).sort_index()
            table = table.reindex(columns=runs)
            ds[col] = (("time_s", "run"), table.to_numpy(float))
        ds = ds.assign_coords(time_s=table.index.to_numpy(float))
        ds = ds.transpose("run", "time_s")
    return ds


def write_outputs(
    out_dir: str | pathlib.Path,
    chunks: pd.DataFrame | Mapping[str, pd.DataFrame],
    intervals: pd.DataFrame | Mapping[str, pd.DataFrame],
    summary: pd.DataFrame | Mapping[str, Any] | list[Mapping[str, Any]],
    config: Mapping[str, Any],
    *,
    plots: bool = True,
) -> pathlib.Path:
    """Write the output folder of one run or of several (see the module docstring).

    Parameters
    ----------
    chunks, intervals
        One table each (a single run), or a mapping ``run label -> table`` where the label
        is ``"<trace>__<policy>"`` of the matching summary row (:func:`run_label`).
    summary
        One summary row (dict), a list of rows, or a DataFrame.
    config
        The resolved configuration, written as YAML.
    plots
        Also write the PNG/HTML plots.

    Returns
    -------
    The output folder.
    """
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(summary, pd.DataFrame):
        table = summary.reset_index(drop=True)
    elif isinstance(summary, Mapping):
        table = pd.DataFrame([dict(summary)])
    else:
        table = pd.DataFrame([dict(r) for r in summary])
    check_columns(table, SUMMARY_COLUMNS, "summary")
    extras = [c for c in table.columns if c not in SUMMARY_COLUMNS]
    table = table.loc[:, list(SUMMARY_COLUMNS) + extras]
    labels = [_run_label(r) for r in table.to_dict("records")]
    if isinstance(chunks, pd.DataFrame):
        if len(labels) != 1 or not isinstance(intervals, pd.DataFrame):
            raise ValueError("a single chunk table needs a single summary row and a single interval table")
        chunk_map, interval_map = {labels[0]: chunks}, {labels[0]: intervals}
        check_columns(chunks, CHUNK_COLUMNS, "chunk").to_parquet(out / "chunks.parquet", index=False)
        check_columns(intervals, INTERVAL_COLUMNS, "interval").to_parquet(out / "intervals.parquet", index=False)
    else:
        chunk_map = {_safe(k): v for k, v in chunks.items()}
        interval_map = {_safe(k): v for k, v in intervals.items()}  # type: ignore[union-attr]
        unknown = sorted(set(chunk_map) - set(labels))
        if unknown:
            raise ValueError(f"chunk tables {unknown} match no summary row; run labels are {labels}")
        for label in labels:
            run_dir = out / "runs" / label
            if label in chunk_map or label in interval_map:
                run_dir.mkdir(parents=True, exist_ok=True)
            if label in chunk_map:
                check_columns(chunk_map[label], CHUNK_COLUMNS, "chunk").to_parquet(run_dir / "chunks.parquet", index=False)
            if label in interval_map:
                check_columns(interval_map[label], INTERVAL_COLUMNS, "interval").to_parquet(
                    run_dir / "intervals.parquet", index=False
                )
    table.to_csv(out / "summary.csv", index=False)
    with (out / "config.yaml").open("w") as f:
        yaml.safe_dump(_plain(config), f, sort_keys=False)
    ds = results_dataset(table, interval_map)
    ds.to_zarr(out / "results.zarr", mode="w", consolidated=False)
    if plots:
        from experiments.plots import write_plots

        write_plots(out, table, chunk_map, interval_map, [run_label(r["trace"], r["policy"]) for _, r in table.iterrows()])
    return out


def run_label(trace: str, policy: str) -> str:
    """The folder/mapping label of a run: ``"<trace>__<policy>"`` with unsafe characters replaced."""
    return _run_label({"trace": trace, "policy": policy})


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
