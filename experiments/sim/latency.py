"""Latency models of the simulator, loaded from profile CSV files.

A profile is a CSV with columns ``batch_size,step_s`` (seconds of one coalesced chunk
step for that many sessions) and optionally ``context_frames`` (cached context frames per
session when the row was measured). ``#`` lines are comments: say there where the numbers
come from. A name (``"tiny-cpu"``) is looked up in ``kernels/profiles/`` (measured) and
then in ``experiments/profiles/`` (derived from published figures); a path is read as is.
"""

from __future__ import annotations

import pathlib
from dataclasses import dataclass

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


# ---------------------------------------------------------------- the latency space

PUBLISHED_T1 = _ROOT / "experiments" / "profiles" / "published-t1.csv"


def linear_profile(t1_s: float, batch_cost: float) -> BatchLatencyModel:
    """The parametric profile ``step(b) = t1 * (1 + a * (b - 1))``.

    ``a`` (``batch_cost``) is the share of a batch-1 step that each further session
    adds: 0 means batching is free, 1 means fully compute-bound (``b`` sessions cost
    ``b`` steps). Published DiT measurements put a 480p chunk between about 0.1 and 1
    (``MODEL_NOTES``); only a GPU measurement settles it.

    Examples
    --------
    >>> m = linear_profile(0.344, 0.1)
    >>> round(m.predict(1), 4), round(m.predict(9), 4)
    (0.344, 0.6192)
    """
    if not t1_s > 0:
        raise ValueError(f"t1_s (seconds of a batch-1 step) must be > 0, got {t1_s!r}")
    if not 0 <= batch_cost <= 10:
        raise ValueError(f"batch_cost a must be in [0, 10] (0: free batching, 1: compute-bound), got {batch_cost!r}")
    return BatchLatencyModel(batch_sizes=(1, 2), step_s=(float(t1_s), float(t1_s) * (1.0 + float(batch_cost))))


def published_t1(model: str, gpu: str = "h100") -> float:
    """The published batch-1 chunk time of ``model`` on ``gpu`` (``experiments/profiles/published-t1.csv``).

    Raises ValueError naming the rows the file has.
    """
    table = pd.read_csv(PUBLISHED_T1, comment="#", skipinitialspace=True)
    rows = table[(table["model"] == model) & (table["gpu"] == gpu.lower())]
    if rows.empty:
        known = sorted(f"{m}@{g}" for m, g in zip(table["model"], table["gpu"]))
        raise ValueError(f"no published t1 for model {model!r} on gpu {gpu!r}; known: {known}")
    return float(rows["t1_s"].iloc[0])


@dataclass(frozen=True, slots=True)
class LatencySpec:
    """Which step-time model a run uses, as plain data (the experiment flags).

    Parameters
    ----------
    profile
        A profile name or CSV path (:func:`load_profile`); ``None``: the model
        preset's own profile (``experiments.sim.models``).
    t1_s, batch_cost
        With ``batch_cost`` set, the parametric :func:`linear_profile` is used instead,
        with ``t1_s`` (default: the published figure of the model on ``gpu``).
    gpu
        GPU class for the published ``t1`` (``h100``, ``gb200``, ``gb300``).

    Examples
    --------
    >>> LatencySpec(batch_cost=1.0).model_for("wan-1.3b").predict(2)
    0.688
    """

    profile: str | None = None
    t1_s: float | None = None
    batch_cost: float | None = None
    gpu: str = "h100"

    def __post_init__(self) -> None:
        if self.profile is not None and self.batch_cost is not None:
            raise ValueError("give either a latency profile or a batch cost (--batch-cost), not both")
        if self.t1_s is not None and self.batch_cost is None:
            raise ValueError("--t1-s needs --batch-cost A: the parametric profile t1 * (1 + A (b - 1))")
        if self.batch_cost is not None:
            linear_profile(self.t1_s if self.t1_s is not None else 1.0, self.batch_cost)  # validate

    def model_for(self, model: str) -> BatchLatencyModel:
        """The :class:`BatchLatencyModel` for sessions of preset ``model``."""
        if self.batch_cost is not None:
            t1 = self.t1_s if self.t1_s is not None else published_t1(model, self.gpu)
            return linear_profile(t1, self.batch_cost)
        if self.profile is not None:
            return load_profile(self.profile)
        from experiments.sim.models import model_cost

        return load_profile(model_cost(model).profile)

    def label(self) -> str:
        """A short description for summaries (``profile NAME`` or ``t1=... a=...``)."""
        if self.batch_cost is not None:
            t1 = f"{self.t1_s:g}" if self.t1_s is not None else f"published-{self.gpu}"
            return f"linear t1={t1} a={self.batch_cost:g}"
        return f"profile {self.profile}" if self.profile is not None else "model profile"
