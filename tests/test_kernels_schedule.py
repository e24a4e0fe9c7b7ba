"""The few-step flow schedule of a chunk."""

from __future__ import annotations

import pytest

from kernels.schedule import FlowSchedule


def test_four_steps_are_self_forcing_timesteps_with_shifted_sigmas():
    s = FlowSchedule.evenly(4, shift=5.0)
    assert s.timesteps == (1000.0, 750.0, 500.0, 250.0)
    assert s.sigmas[0] == 1.0  # the chunk starts as pure noise
    assert all(a > b > 0 for a, b in zip(s.sigmas, s.sigmas[1:]))
    # The shift keeps more noise than the plain t/1000 at every intermediate step.
    assert all(sig > t / 1000 for sig, t in zip(s.sigmas[1:], s.timesteps[1:]))
    assert FlowSchedule.evenly(4, shift=1.0).sigmas == (1.0, 0.75, 0.5, 0.25)


@pytest.mark.parametrize(
    ("timesteps", "shift", "message"),
    [((), 5.0, "in \\(0, 1000\\]"), ((1000.0, 0.0), 5.0, "in \\(0, 1000\\]"), ((500.0, 750.0), 5.0, "decrease"),
     ((1000.0,), 0.0, "shift must be positive")],
)
def test_invalid_schedules_are_refused(timesteps, shift, message):
    with pytest.raises(ValueError, match=message):
        FlowSchedule(timesteps, shift)
    with pytest.raises(ValueError, match="at least one"):
        FlowSchedule.evenly(0)
