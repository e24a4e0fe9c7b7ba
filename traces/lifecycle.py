"""Session lifecycles: open, alternating active/idle periods, close, as event arrays.

Event codes: ``OPEN, ACTIVE, IDLE, CLOSE = 0, 1, 2, 3`` (positions in
:data:`traces.schema.EVENT_NAMES`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from traces.distributions import Dist
from traces.spec import ClientSpec

OPEN, ACTIVE, IDLE, CLOSE = range(4)


def _toggles(
    rng: np.random.Generator, lifetimes: np.ndarray, active: Dist, idle: Dist
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Active/idle switch times of every session, as offsets from its open.

    Returns ``(session index, offset, k)``: toggle ``k`` (0-based) of a session goes idle
    for even ``k`` and active for odd ``k``; only toggles before the lifetime are kept.
    """
    n = len(lifetimes)
    sess_out, off_out, k_out = [], [], []
    idx = np.arange(n)
    carry = np.zeros(n)
    done_k = np.zeros(n, dtype=np.int64)
    pairs = 4
    while len(idx):
        steps = np.empty((len(idx), 2 * pairs))
        steps[:, 0::2] = active.sample(rng, (len(idx), pairs))
        steps[:, 1::2] = idle.sample(rng, (len(idx), pairs))
        cs = carry[idx, None] + np.cumsum(steps, axis=1)
        keep = cs < lifetimes[idx, None]
        r, c = np.nonzero(keep)
        sess_out.append(idx[r])
        off_out.append(cs[r, c])
        k_out.append(done_k[idx][r] + c)
        carry[idx] = cs[:, -1]
        done_k[idx] += 2 * pairs
        idx = idx[keep[:, -1]]
        pairs = min(pairs * 2, 64)
    return np.concatenate(sess_out), np.concatenate(off_out), np.concatenate(k_out)


@dataclass(slots=True)
class EventArrays:
    """Event columns of one client before the final sort: time, session index, event code
    (0 open, 1 active, 2 idle, 3 close). Each session's events must appear in its own
    order (the final sort by time is stable, so equal times keep that order)."""

    time: np.ndarray
    session: np.ndarray
    code: np.ndarray


def lifecycle(
    client: ClientSpec,
    opens: np.ndarray,
    lifetimes: np.ndarray,
    rng: np.random.Generator,
    duration_s: float,
) -> tuple[EventArrays, np.ndarray]:
    """Events of sessions opening at ``opens`` (sorted) and living ``lifetimes``.

    Active/idle periods come from ``client.active``/``client.idle`` and the model variant
    from ``client.mix``. Sessions opened before 0 enter at 0 in the state they are in
    then; sessions alive at ``duration_s`` close there. Session indices are positions in
    ``opens``; returns the events and each session's variant index.
    """
    n = len(opens)
    weights = np.array([v.weight for v in client.mix], dtype=np.float64)
    variant = rng.choice(len(client.mix), size=n, p=weights / weights.sum())
    if client.active is not None and client.idle is not None and n:
        t_sess, t_off, t_k = _toggles(rng, lifetimes, client.active, client.idle)
    else:
        t_sess = t_k = np.empty(0, dtype=np.int64)
        t_off = np.empty(0)
    closes = opens + lifetimes
    alive = (closes > 0) & (opens < duration_s)  # warm-up sessions that ended before 0 drop
    closes = np.minimum(closes, duration_s)
    t_time = opens[t_sess] + t_off
    before = t_time < 0
    # A session alive at 0 that was idle then (an odd number of toggles before 0) re-enters
    # the trace as open at 0 followed by idle at 0.
    n_before = np.bincount(t_sess[before], minlength=n)
    idle_at_zero = alive & (opens < 0) & (n_before % 2 == 1)
    keep_t = ~before & (t_time < closes[t_sess]) & alive[t_sess]
    open_times = np.maximum(opens, 0.0)
    sessions = np.flatnonzero(alive)
    z = np.flatnonzero(idle_at_zero)
    events = EventArrays(
        time=np.concatenate([open_times[sessions], np.zeros(len(z)), t_time[keep_t], closes[sessions]]),
        session=np.concatenate([sessions, z, t_sess[keep_t], sessions]),
        code=np.concatenate([
            np.full(len(sessions), OPEN), np.full(len(z), IDLE),
            np.where(t_k[keep_t] % 2 == 0, IDLE, ACTIVE), np.full(len(sessions), CLOSE),
        ]),
    )
    return events, variant
