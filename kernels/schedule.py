"""The few-step flow-matching schedule of a chunk (Self-Forcing / CausVid style).

A chunk starts as pure noise at ``t = 1000`` and is denoised in a few steps
(``1000, 750, 500, 250``). At each step the model predicts the flow
``v = noise - x0``; the clean estimate is ``x0 = x_t - sigma * v`` and the next step
re-noises it with fresh noise: ``x_next = (1 - sigma_next) * x0 + sigma_next * noise``.
Sigmas are the timesteps shifted as in Wan's flow-matching scheduler
(``sigma = shift * s / (1 + (shift - 1) * s)`` with ``s = t / 1000``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FlowSchedule:
    """Timesteps of the denoising steps of one chunk and their shifted sigmas.

    Examples
    --------
    >>> s = FlowSchedule.evenly(4, shift=5.0)
    >>> s.timesteps
    (1000.0, 750.0, 500.0, 250.0)
    >>> round(s.sigmas[1], 4)
    0.9375
    """

    timesteps: tuple[float, ...]
    shift: float = 5.0

    def __post_init__(self) -> None:
        if not self.timesteps or any(not 0 < t <= 1000 for t in self.timesteps):
            raise ValueError(f"timesteps must be in (0, 1000], got {self.timesteps!r}")
        if list(self.timesteps) != sorted(self.timesteps, reverse=True):
            raise ValueError(f"timesteps must decrease, got {self.timesteps!r}")
        if self.shift <= 0:
            raise ValueError(f"shift must be positive, got {self.shift!r}")

    @classmethod
    def evenly(cls, steps: int, *, shift: float = 5.0) -> "FlowSchedule":
        """``steps`` timesteps evenly spaced from 1000 down (4 -> 1000/750/500/250)."""
        if steps < 1:
            raise ValueError(f"need at least one denoising step, got {steps}")
        return cls(tuple(1000.0 * (steps - i) / steps for i in range(steps)), shift)

    @property
    def sigmas(self) -> tuple[float, ...]:
        """Noise level of each step, in ``(0, 1]``."""
        out = []
        for t in self.timesteps:
            s = t / 1000.0
            out.append(self.shift * s / (1.0 + (self.shift - 1.0) * s))
        return tuple(out)
