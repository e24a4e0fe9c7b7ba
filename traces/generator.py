"""ServeGen-style workload composer: per-client session arrivals and session lifecycles.

A workload is a set of clients (tenants). Each client opens sessions as a
*non-homogeneous renewal process*: inter-arrival times in *operational time*
``Lambda(t) = integral of rate(t)`` are i.i.d. with mean 1 and the client's target CV
(Gamma or Weibull, as ServeGen fits them), and are mapped back to wall time by inverting
``Lambda`` (time rescaling). Every session then follows an explicit state machine::

    open (active) --active period--> idle --idle period--> active --> ... --> close

with a heavy-tailed lifetime (lognormal or Pareto) and active/idle period lengths drawn
from the client's distributions; the session closes when its lifetime ends, whatever
state it is in.

Where this improves on ServeGen's generator:

* counts per window are random (a renewal process over the whole trace), not a fixed
  ``rate * window`` number of requests spread over each window;
* state is carried across windows: the renewal process continues through a window
  boundary (the gap that crosses it is drawn with the CV of the window it starts in),
  and sessions span windows;
* sessions have an explicit lifecycle, not independent one-shot requests;
* ``warmup_s`` starts the trace in steady state: sessions opened before time 0 that are
  still alive appear as ``open`` at 0 (followed by ``idle`` at 0 if they were idle).

Sessions still alive at ``duration_s`` are closed at ``duration_s``. Everything is drawn
from ``numpy.random.Generator`` streams spawned from the spec's seed (one per client, so
adding a client does not change the others): the same spec gives the same frame.

Examples
--------
>>> from traces.spec import ClientSpec, WorkloadSpec
>>> spec = WorkloadSpec(clients=(ClientSpec("c0", rate=0.5, cv=2.0),), duration_s=600.0)
>>> df = generate(spec)
>>> list(df.columns[:4])
['time_s', 'session_id', 'event', 'client_id']
>>> generate(spec).equals(df)  # the same spec and seed give the same trace
True

The spec records live in :mod:`traces.spec` (YAML form in :mod:`traces.spec_io`), the
arrival process in :mod:`traces.arrivals`, the lifecycle in :mod:`traces.lifecycle`;
this module assembles the trace (import those names from their own modules).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from traces.arrivals import arrivals
from traces.lifecycle import OPEN, EventArrays, lifecycle
from traces.schema import COLUMNS, EVENT_NAMES, SHAPE_COLUMNS
from traces.spec import Variant, WorkloadSpec

__all__ = ["assemble", "generate"]


def assemble(parts: list[tuple[str, EventArrays, list[Variant]]]) -> pd.DataFrame:
    """Build a trace frame from per-client events.

    Each part is ``(client_id, events, variant of each session)``; session indices in
    ``events`` are local to the part. Sessions that have no event are dropped and the
    rest are renamed ``CLIENT-i`` in order of index (of arrival, for generated parts).
    """
    all_events: list[EventArrays] = []
    sid_parts: list[str] = []
    client_parts: list[str] = []
    variant_rows: list[Variant] = []
    offset = 0
    for client_id, ev, variants in parts:
        local = np.unique(ev.session).astype(np.int64)
        renumber = np.full(len(variants), -1, dtype=np.int64)
        renumber[local] = np.arange(len(local)) + offset
        all_events.append(EventArrays(ev.time, renumber[ev.session.astype(np.int64)], ev.code))
        sid_parts.extend(f"{client_id}-{i}" for i in range(len(local)))
        client_parts.extend([client_id] * len(local))
        variant_rows.extend(variants[int(i)] for i in local)
        offset += len(local)
    if not all_events:
        all_events.append(EventArrays(np.empty(0), np.empty(0, np.int64), np.empty(0, np.int64)))
    time = np.concatenate([p.time for p in all_events])
    session = np.concatenate([p.session for p in all_events]).astype(np.int64)
    code = np.concatenate([p.code for p in all_events]).astype(np.int64)
    order = np.argsort(time, kind="stable")
    return _frame(time[order], session[order], code[order], sid_parts, client_parts, variant_rows)


def generate(spec: WorkloadSpec) -> pd.DataFrame:
    """Generate a trace (see :mod:`traces.schema`) from a workload spec.

    The frame is sorted by time (equal times keep each session's event order) and valid
    per :func:`traces.io.validate`. The same ``spec`` (seed included) always gives
    the same frame.
    """
    factors = spec.client_factors()
    seeds = np.random.SeedSequence(spec.seed).spawn(len(spec.clients))
    parts = []
    for client, factor, seed in zip(spec.clients, factors, seeds):
        rng = np.random.default_rng(seed)
        opens = arrivals(client, spec, rng, float(factor))
        lifetimes = client.lifetime.sample(rng, len(opens))
        events, variant = lifecycle(client, opens, lifetimes, rng, spec.duration_s)
        parts.append((client.client_id, events, [client.mix[int(v)] for v in variant]))
    return assemble(parts)


def _frame(
    time: np.ndarray,
    session: np.ndarray,
    code: np.ndarray,
    session_ids: list[str],
    client_ids: list[str],
    variants: list[Variant],
) -> pd.DataFrame:
    """The trace frame from event arrays and per-session attributes (vectorised)."""
    import pyarrow as pa

    def strings(values: list[str], index: np.ndarray, mask: np.ndarray | None = None) -> pd.Series:
        # Dictionary-decode in Arrow: much faster than indexing Python string objects.
        dictionary = pa.array(values or [""], type=pa.string())
        arr = pa.DictionaryArray.from_arrays(pa.array(index, type=pa.int64(), mask=mask), dictionary)
        return pd.Series(pd.array(arr.cast(pa.string()), dtype="str"))

    is_open = code == OPEN
    out = pd.DataFrame({"time_s": time.astype(np.float64)})
    out["session_id"] = strings(session_ids, session)
    out["event"] = strings(list(EVENT_NAMES), code)
    out["client_id"] = strings(client_ids, session)
    out["model"] = strings([v.model for v in variants], session, mask=~is_open)
    for col in SHAPE_COLUMNS:
        values = np.array([getattr(v, col) for v in variants] or [0], dtype=np.int64)
        col_values = pd.array(values[np.where(is_open, session, 0)], dtype="Int64")
        col_values[~is_open] = pd.NA
        out[col] = col_values
    return out[list(COLUMNS)]
