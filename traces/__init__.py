"""Workload traces for turboserve: the trace schema, generator, importers and statistics.

The package imports nothing of the rest of the project (it is on the lowest floor).

>>> from traces import scenario, trace_stats, validate
>>> df = scenario("steady", duration_s=300.0, scale=0.1)
>>> validate(df)
>>> trace_stats(df).sessions > 0
True
"""

from traces.distributions import Dist, Family
from traces.generator import generate
from traces.spec import ClientSpec, RateWindows, Variant, WorkloadSpec
from traces.spec_io import load_spec, spec_from_dict, spec_to_dict
from traces.io import iter_events, read_trace, session_table, sessions, validate, write_trace
from traces.rates import Constant, Diurnal, FlashCrowd, Product
from traces.scenarios import SCENARIOS, scenario
from traces.schema import COLUMNS, ChunkShape, EventKind, SessionSummary, TraceError, TraceEvent
from traces.stats import TraceStats, concurrency, plot_trace, trace_stats

__all__ = [
    "COLUMNS", "SCENARIOS", "ChunkShape", "ClientSpec", "Constant", "Diurnal", "Dist",
    "EventKind", "Family", "FlashCrowd", "Product", "RateWindows", "SessionSummary",
    "TraceError", "TraceEvent", "TraceStats", "Variant", "WorkloadSpec", "concurrency",
    "generate", "iter_events", "load_spec", "plot_trace", "read_trace", "scenario",
    "session_table", "sessions", "spec_from_dict", "spec_to_dict", "trace_stats", "validate",
    "write_trace",
]
