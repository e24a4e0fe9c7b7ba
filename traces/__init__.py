"""Workload traces for turboserve: the trace schema, generator, importers and statistics.

The package imports nothing of the rest of the project (it is on the lowest floor).

>>> from traces import scenario, trace_stats, validate
>>> df = scenario("steady", duration_s=300.0, scale=0.1)
>>> validate(df)
>>> trace_stats(df).sessions > 0
True
"""

from __future__ import annotations

from traces.lazy import lazy_exports

# Imported on first use (PEP 562): `turboserve --help` and the trace commands' parsers
# load without pandas and numpy.
_EXPORTS = {
    **dict.fromkeys(("Dist", "Family"), "traces.distributions"),
    "generate": "traces.generator",
    **dict.fromkeys(("ClientSpec", "RateWindows", "Variant", "WorkloadSpec"), "traces.spec"),
    **dict.fromkeys(("load_spec", "spec_from_dict", "spec_to_dict"), "traces.spec_io"),
    **dict.fromkeys(("iter_events", "read_trace", "session_table", "sessions", "validate", "write_trace"), "traces.io"),
    **dict.fromkeys(("Constant", "Diurnal", "FlashCrowd", "Product"), "traces.rates"),
    **dict.fromkeys(("SCENARIOS", "scenario"), "traces.scenarios"),
    **dict.fromkeys(("COLUMNS", "ChunkShape", "EventKind", "SessionSummary", "TraceError", "TraceEvent"), "traces.schema"),
    **dict.fromkeys(("TraceStats", "concurrency", "plot_trace", "trace_stats"), "traces.stats"),
}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


__all__ = [
    "COLUMNS", "SCENARIOS", "ChunkShape", "ClientSpec", "Constant", "Diurnal", "Dist",
    "EventKind", "Family", "FlashCrowd", "Product", "RateWindows", "SessionSummary",
    "TraceError", "TraceEvent", "TraceStats", "Variant", "WorkloadSpec", "concurrency",
    "generate", "iter_events", "load_spec", "plot_trace", "read_trace", "scenario",
    "session_table", "sessions", "spec_from_dict", "spec_to_dict", "trace_stats", "validate",
    "write_trace",
]
