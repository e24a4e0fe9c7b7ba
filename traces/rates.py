"""Aggregate rate shapes: time-varying multipliers of every client's arrival rate.

A shape ``m(t)`` multiplies each client's own rate, so the aggregate arrival rate of a
workload is ``sum_c rate_c(t) * m(t)``. Shapes are vectorised over ``t`` (seconds).

Examples
--------
>>> import numpy as np
>>> d = Diurnal(period_s=86400.0, amplitude=0.5, peak_s=43200.0)
>>> d(np.array([0.0, 43200.0])).round(3).tolist()
[0.5, 1.5]
>>> rate_from_dict({"kind": "flash-crowd", "start_s": 100, "factor": 4})(np.array([0.0, 200.0])).tolist()
[1.0, 4.0]
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


class RateShape(Protocol):
    """A vectorised non-negative rate multiplier ``m(t)``."""

    def __call__(self, t: np.ndarray) -> np.ndarray:
        """Multiplier at times ``t`` (seconds), same shape as ``t``."""
        ...

    def to_dict(self) -> dict[str, Any] | list[dict[str, Any]]:
        """Plain-data form (see :func:`rate_from_dict`)."""
        ...


@dataclass(frozen=True, slots=True)
class Constant:
    """``m(t) = level``: a steady load."""

    level: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.level) and self.level >= 0):
            raise ValueError(f"constant level must be a finite number >= 0, got {self.level!r}")

    def __call__(self, t: np.ndarray) -> np.ndarray:
        return np.full(np.shape(t), self.level, dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "constant", "level": self.level}


@dataclass(frozen=True, slots=True)
class Diurnal:
    """A daily sinusoid: ``m(t) = 1 + amplitude * cos(2 pi (t - peak_s) / period_s)``.

    The peak-to-trough ratio is ``(1 + amplitude) / (1 - amplitude)``; ServeGen's
    language clients show about 6 (``amplitude`` about 0.7).
    """

    period_s: float = 86400.0
    amplitude: float = 0.5
    peak_s: float = 0.0

    def __post_init__(self) -> None:
        if not self.period_s > 0:
            raise ValueError(f"diurnal period_s must be > 0, got {self.period_s!r}")
        if not 0 <= self.amplitude <= 1:
            raise ValueError(f"diurnal amplitude must be in [0, 1], got {self.amplitude!r}")

    def __call__(self, t: np.ndarray) -> np.ndarray:
        phase = 2.0 * np.pi * (np.asarray(t, dtype=np.float64) - self.peak_s) / self.period_s
        return 1.0 + self.amplitude * np.cos(phase)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "diurnal", "period_s": self.period_s, "amplitude": self.amplitude,
                "peak_s": self.peak_s}


@dataclass(frozen=True, slots=True)
class FlashCrowd:
    """A spike: ``m`` rises linearly from 1 to ``factor`` over ``rise_s`` from ``start_s``,
    holds for ``hold_s``, then decays back to 1 exponentially with time constant ``decay_s``.
    """

    start_s: float
    factor: float = 5.0
    rise_s: float = 30.0
    hold_s: float = 300.0
    decay_s: float = 300.0

    def __post_init__(self) -> None:
        if not self.factor >= 0:
            raise ValueError(f"flash-crowd factor must be >= 0, got {self.factor!r}")
        for name in ("rise_s", "hold_s", "decay_s"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"flash-crowd {name} must be >= 0, got {getattr(self, name)!r}")

    def __call__(self, t: np.ndarray) -> np.ndarray:
        t = np.asarray(t, dtype=np.float64)
        x = t - self.start_s
        rise = np.clip(x / self.rise_s, 0.0, 1.0) if self.rise_s > 0 else (x >= 0).astype(float)
        after = x - self.rise_s - self.hold_s
        if self.decay_s > 0:
            decay = np.exp(-np.clip(after, 0.0, None) / self.decay_s)
        else:
            decay = (after <= 0).astype(float)
        envelope = np.where(x < 0, 0.0, np.where(after <= 0, rise, decay))
        return 1.0 + (self.factor - 1.0) * envelope

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "flash-crowd", "start_s": self.start_s, "factor": self.factor,
                "rise_s": self.rise_s, "hold_s": self.hold_s, "decay_s": self.decay_s}


@dataclass(frozen=True, slots=True)
class Product:
    """The product of several shapes (e.g. a diurnal day with a flash crowd in it)."""

    shapes: tuple[RateShape, ...] = field(default_factory=tuple)

    def __call__(self, t: np.ndarray) -> np.ndarray:
        out = np.ones(np.shape(t), dtype=np.float64)
        for shape in self.shapes:
            out *= shape(t)
        return out

    def to_dict(self) -> list[dict[str, Any]]:
        return [s.to_dict() for s in self.shapes]  # type: ignore[misc]


_KINDS: dict[str, type] = {"constant": Constant, "diurnal": Diurnal, "flash-crowd": FlashCrowd}


def rate_from_dict(data: dict[str, Any] | list[dict[str, Any]] | RateShape | None) -> RateShape:
    """Build a shape from ``{"kind": NAME, **params}`` (a list gives their product).

    ``None`` is the constant 1. Unknown kinds raise ``ValueError`` naming the known ones.
    """
    if data is None:
        return Constant()
    if isinstance(data, list):
        return Product(tuple(rate_from_dict(d) for d in data))
    if not isinstance(data, dict):
        return data
    params = dict(data)
    kind = params.pop("kind", None)
    if kind not in _KINDS:
        raise ValueError(f"unknown rate kind {kind!r}; known: {sorted(_KINDS)}")
    try:
        return _KINDS[kind](**{k: float(v) for k, v in params.items()})
    except TypeError as exc:
        raise ValueError(f"bad parameters for rate kind {kind!r}: {exc}") from exc
