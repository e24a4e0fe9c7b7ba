"""Positive random variables parameterised by their mean and coefficient of variation.

One parameterisation for every family keeps workload specs comparable: ``Dist(family,
mean, cv)`` always has the stated mean and CV (standard deviation / mean), whatever the
family. ServeGen fits inter-arrival times with Gamma and Weibull; session lifetimes and
idle periods are heavy-tailed, for which lognormal and Pareto fit.

Examples
--------
>>> import numpy as np
>>> d = Dist("gamma", mean=2.0, cv=0.5)
>>> x = d.sample(np.random.default_rng(0), 200_000)
>>> round(float(x.mean()), 1), round(float(x.std() / x.mean()), 2)
(2.0, 0.5)
"""

from __future__ import annotations

import enum
import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np


class Family(str, enum.Enum):
    """Distribution families of :class:`Dist`."""

    CONSTANT = "constant"
    EXPONENTIAL = "exponential"
    GAMMA = "gamma"
    WEIBULL = "weibull"
    LOGNORMAL = "lognormal"
    PARETO = "pareto"


def _weibull_cv(k: float) -> float:
    g1 = math.lgamma(1.0 + 1.0 / k)
    g2 = math.lgamma(1.0 + 2.0 / k)
    return math.sqrt(max(math.exp(g2 - 2.0 * g1) - 1.0, 0.0))


@functools.lru_cache(maxsize=4096)
def weibull_shape(cv: float) -> float:
    """The Weibull shape ``k`` whose coefficient of variation is ``cv`` (bisection).

    The CV of a Weibull falls monotonically in ``k``; ``cv = 1`` gives ``k = 1``.
    """
    if not cv > 0:
        raise ValueError(f"Weibull cv must be > 0, got {cv!r}")
    lo, hi = 0.05, 200.0  # cv(0.05) ~ 1e5, cv(200) ~ 0.006
    if cv >= _weibull_cv(lo):
        return lo
    if cv <= _weibull_cv(hi):
        return hi
    for _ in range(80):
        mid = math.sqrt(lo * hi)
        if _weibull_cv(mid) > cv:
            lo = mid
        else:
            hi = mid
    return math.sqrt(lo * hi)


@dataclass(frozen=True, slots=True)
class Dist:
    """A positive random variable with a given ``mean`` and coefficient of variation ``cv``.

    Parameters
    ----------
    family
        One of :class:`Family` (or its value): ``constant`` (cv is ignored, 0),
        ``exponential`` (cv is 1), ``gamma``, ``weibull``, ``lognormal``, ``pareto``
        (classic Pareto; needs ``cv > 0``; its tail index is ``1 + sqrt(1 + 1/cv**2)``).
    mean
        The mean, > 0.
    cv
        Standard deviation over mean, >= 0.
    max
        Optional upper cap; samples above it are clipped to it (the mean then drops
        slightly).

    Examples
    --------
    >>> Dist("lognormal", mean=600.0, cv=2.0).median
    268.32815729997475
    """

    family: Family | str
    mean: float
    cv: float = 1.0
    max: float | None = None

    def __post_init__(self) -> None:
        try:
            fam = Family(self.family)
        except ValueError:
            raise ValueError(
                f"unknown distribution family {self.family!r}; known: {[f.value for f in Family]}"
            ) from None
        object.__setattr__(self, "family", fam)
        if not (math.isfinite(self.mean) and self.mean > 0):
            raise ValueError(f"{fam.value} mean must be a finite number > 0, got {self.mean!r}")
        if not (math.isfinite(self.cv) and self.cv >= 0):
            raise ValueError(f"{fam.value} cv must be a finite number >= 0, got {self.cv!r}")
        if fam in (Family.WEIBULL, Family.LOGNORMAL, Family.PARETO) and self.cv == 0:
            raise ValueError(f"{fam.value} needs cv > 0 (use family 'constant' for cv = 0)")
        if self.max is not None and not self.max > 0:
            raise ValueError(f"max must be > 0 or None, got {self.max!r}")

    @property
    def effective_cv(self) -> float:
        """The CV the samples have (1 for exponential, 0 for constant, else ``cv``)."""
        if self.family is Family.EXPONENTIAL:
            return 1.0
        if self.family is Family.CONSTANT:
            return 0.0
        return float(self.cv)

    @property
    def median(self) -> float:
        """The median (before any cap)."""
        fam, m, cv = self.family, self.mean, self.effective_cv
        if fam is Family.CONSTANT:
            return m
        if fam is Family.EXPONENTIAL:
            return m * math.log(2.0)
        if fam is Family.LOGNORMAL:
            return m / math.sqrt(1.0 + cv * cv)
        if fam is Family.PARETO:
            alpha, xm = self._pareto()
            return xm * 2.0 ** (1.0 / alpha)
        if fam is Family.WEIBULL:
            k = weibull_shape(cv)
            return m / math.gamma(1.0 + 1.0 / k) * math.log(2.0) ** (1.0 / k)
        # Gamma has no closed-form median; a sample estimate is enough for a summary.
        return float(np.median(self.sample(np.random.default_rng(0), 400_001)))

    def _pareto(self) -> tuple[float, float]:
        alpha = 1.0 + math.sqrt(1.0 + 1.0 / (self.cv * self.cv))
        return alpha, self.mean * (alpha - 1.0) / alpha

    def sample(self, rng: np.random.Generator, size: int | tuple[int, ...]) -> np.ndarray:
        """Draw ``size`` samples with ``rng``."""
        fam, m, cv = self.family, self.mean, self.effective_cv
        if fam is Family.CONSTANT or (fam is Family.GAMMA and cv == 0):
            x = np.full(size, m, dtype=np.float64)
        elif fam is Family.EXPONENTIAL:
            x = rng.exponential(m, size)
        elif fam is Family.GAMMA:
            shape = 1.0 / (cv * cv)
            x = rng.gamma(shape, m / shape, size)
        elif fam is Family.WEIBULL:
            k = weibull_shape(cv)
            x = rng.weibull(k, size) * (m / math.gamma(1.0 + 1.0 / k))
        elif fam is Family.LOGNORMAL:
            s2 = math.log1p(cv * cv)
            x = rng.lognormal(math.log(m) - s2 / 2.0, math.sqrt(s2), size)
        else:
            alpha, xm = self._pareto()
            x = xm * (1.0 + rng.pareto(alpha, size))
        if self.max is not None:
            np.minimum(x, self.max, out=x)
        return x

    def scaled(self, factor: float) -> Dist:
        """The same shape with the mean (and cap) multiplied by ``factor``."""
        cap = None if self.max is None else self.max * factor
        return Dist(self.family, self.mean * factor, self.cv, cap)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (for YAML specs); inverse of :meth:`from_dict`."""
        out: dict[str, Any] = {"family": Family(self.family).value, "mean": self.mean, "cv": self.cv}
        if self.max is not None:
            out["max"] = self.max
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any] | Dist) -> Dist:
        """Build from ``{"family": ..., "mean": ..., "cv": ..., "max": ...}``."""
        if isinstance(data, Dist):
            return data
        unknown = set(data) - {"family", "mean", "cv", "max"}
        if unknown:
            raise ValueError(
                f"unknown distribution keys {sorted(unknown)}; known: family, mean, cv, max"
            )
        if "family" not in data or "mean" not in data:
            raise ValueError(f"a distribution needs 'family' and 'mean', got {dict(data)!r}")
        return cls(data["family"], float(data["mean"]), float(data.get("cv", 1.0)), data.get("max"))
