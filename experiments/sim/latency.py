"""Latency models of the simulator, loaded from profile CSV files.

A profile is a CSV with columns ``batch_size,step_s`` (seconds of one coalesced chunk
step for that many sessions) and optionally ``context_frames`` (cached context frames per
session when the row was measured). ``#`` lines are comments: say there where the numbers
come from. A name (``"tiny-cpu"``) is looked up in ``kernels/profiles/`` (measured) and
then in ``experiments/profiles/`` (derived from published figures); a path is read as is.
"""

from __future__ import annotations

import pathlib

import numpy as np
import pandas as pd

from policies.types import BatchLatencyModel

_ROOT = pathlib.Path(__file__).resolve().parents[2]
PROFILE_DIRS: tuple[pathlib.Path, ...] = (
    _ROOT / "kernels" / "profiles",
    _ROOT / "experiments" / "profiles",
)


def profile_path(name_or_path: str | pathlib.Path) -> pathlib.Path:
    """Resolve a profile name or path to an existing CSV file.

    Raises
    ------
    FileNotFoundError
        Naming the searched folders and the profiles found there.
    """
    path = pathlib.Path(name_or_path)
    if path.suffix == ".csv" or path.parent != pathlib.Path("."):
        if path.is_file():
            return path
        raise FileNotFoundError(f"latency profile file {str(path)!r} does not exist")
    for folder in PROFILE_DIRS:
        candidate = folder / f"{name_or_path}.csv"
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"unknown latency profile {str(name_or_path)!r}; known: {available_profiles()} "
        f"(searched {[str(d) for d in PROFILE_DIRS]}); pass a CSV path with columns batch_size,step_s"
    )


def available_profiles() -> list[str]:
    """Names of the profiles shipped in the profile folders."""
    return sorted({p.stem for d in PROFILE_DIRS if d.is_dir() for p in d.glob("*.csv")})


def load_profile(name_or_path: str | pathlib.Path) -> BatchLatencyModel:
    """Read a profile CSV into a :class:`~policies.types.BatchLatencyModel`.

    Rows at the smallest ``context_frames`` give the batch curve (median per batch size);
    when several context lengths were measured, the per-frame, per-session slope is the
    least-squares fit of the remaining time.

    Examples
    --------
    >>> model = load_profile("wan-1.3b-h100-published")
    >>> model.predict(1) > 0
    True
    """
    path = profile_path(name_or_path)
    df = pd.read_csv(path, comment="#", skipinitialspace=True)
    missing = {"batch_size", "step_s"} - set(df.columns)
    if missing:
        raise ValueError(
            f"latency profile {str(path)!r} lacks columns {sorted(missing)}; "
            f"it has {list(df.columns)} (need batch_size,step_s[,context_frames])"
        )
    if df.empty or (df["step_s"] <= 0).any() or (df["batch_size"] < 1).any():
        raise ValueError(f"latency profile {str(path)!r} needs rows with batch_size >= 1 and step_s > 0")
    context = df["context_frames"] if "context_frames" in df.columns else pd.Series(0.0, index=df.index)
    base_rows = df[context == context.min()]
    curve = base_rows.groupby("batch_size")["step_s"].median().sort_index()
    model = BatchLatencyModel(
        batch_sizes=tuple(int(b) for b in curve.index), step_s=tuple(float(s) for s in curve.values)
    )
    extra = df[context > context.min()]
    if extra.empty:
        return model
    base = np.array([model.predict(int(b), 0.0) for b in extra["batch_size"]])
    x = (extra["context_frames"] - context.min()).to_numpy(float) * extra["batch_size"].to_numpy(float)
    y = extra["step_s"].to_numpy(float) - base
    slope = float(max((x @ y) / (x @ x), 0.0)) if (x @ x) > 0 else 0.0
    return BatchLatencyModel(model.batch_sizes, model.step_s, context_slope_s=slope)
