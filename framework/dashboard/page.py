"""The "turboserve" dashboard page: bokeh figures fed by a :class:`DashboardFrame` source.

:class:`SessionsDashboard` owns the figures and their data sources; ``update()`` asks
its source for the frame of this tick and pushes only what changed (new chunk points
are streamed, bar data replaced; a few dozen numbers per tick). :func:`turboserve_doc`
is the bokeh ``FunctionHandler`` entry point the scheduler's dashboard serves.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from bokeh.layouts import column, row
from bokeh.models import (
    ColumnDataSource,
    DatetimeTickFormatter,
    Div,
    HoverTool,
    NumeralTickFormatter,
    Range1d,
    Span,
)
from bokeh.palettes import Category10
from bokeh.plotting import figure

from framework.dashboard.data import STATUSES, TIERS, DashboardFrame

logger = logging.getLogger(__name__)

#: Where the page is served on the scheduler's dashboard ("individual-*" pages are
#: listed in Dask's "More..." menu).
PAGE_PATH = "/individual-turboserve"
#: Name of the page in the menu and its title.
PAGE_TITLE = "turboserve"

#: Chunk points kept in the browser (older ones roll off).
CHUNK_ROLLOVER = 2000
#: Ticks of the "workers over time" series kept in the browser (10 min at 500 ms).
TICK_ROLLOVER = 1200

_STATUS_COLOURS = {
    "active": "#2ca02c",
    "idle": "#ff7f0e",
    "migrating": "#9467bd",
    "suspended": "#1f77b4",
    "pending": "#7f7f7f",
}
_TIER_COLOURS = {"device": "#d62728", "host": "#1f77b4", "disk": "#8c564b"}
_PALETTE = Category10[10]


def _time_format() -> DatetimeTickFormatter:
    # A new model per figure: a bokeh model belongs to one document (one browser tab).
    return DatetimeTickFormatter(
        milliseconds="%H:%M:%S.%3N", seconds="%H:%M:%S", minsec="%H:%M:%S", minutes="%H:%M", hourmin="%H:%M",
        context=None,
    )

FrameSource = Callable[[int], DashboardFrame]
"""Called with the last chunk sequence number drawn; returns this tick's frame."""


def _short(address: str) -> str:
    """``tcp://127.0.0.1:40123`` -> ``127.0.0.1:40123`` (bar labels stay readable)."""
    return address.split("://", 1)[-1]


class SessionsDashboard:
    """The figures of the turboserve page.

    Parameters
    ----------
    source : callable
        ``source(last_seq) -> DashboardFrame``; called once per :meth:`update`.
    sizing_mode : str
        Bokeh sizing mode of the layout.

    Attributes
    ----------
    root : bokeh layout
        What to add to the document.
    summary : bokeh.models.Div
        One line of counters (its text also lets a browser test read the state).

    Examples
    --------
    >>> from framework.dashboard.data import DashboardFrame
    >>> dash = SessionsDashboard(lambda seq: DashboardFrame(now_s=0.0, workers=("tcp://w:1",)))
    >>> dash.update(); dash.summary.text.count("<b>0</b> sessions")
    1
    """

    def __init__(self, source: FrameSource, sizing_mode: str = "stretch_width") -> None:
        self.source = source
        self.last_seq = -1
        self._colours: dict[str, str] = {}
        self.summary = Div(text="", sizing_mode="stretch_width", name="turboserve-summary")

        self.bars = ColumnDataSource({"worker": [], **{s: [] for s in STATUSES}}, name="sessions_by_worker")
        self.per_worker = figure(
            title="Sessions per worker",
            x_range=[],
            height=280,
            sizing_mode=sizing_mode,
            tools="",
            toolbar_location=None,
            name="sessions_per_worker",
        )
        self.per_worker.vbar_stack(
            list(STATUSES),
            x="worker",
            width=0.8,
            source=self.bars,
            color=[_STATUS_COLOURS[s] for s in STATUSES],
            legend_label=list(STATUSES),
        )
        self.per_worker.y_range.start = 0
        legend = self.per_worker.legend[0]
        self.per_worker.add_layout(legend, "right")  # beside the bars, never over them
        self.per_worker.xgrid.grid_line_color = None

        self.chunks = ColumnDataSource(
            {"t": [], "latency_s": [], "batch_size": [], "session": [], "index": [], "colour": []}, name="chunks"
        )
        self.latency = figure(
            title="Per-chunk latency (dashed: target)",
            x_axis_type="datetime",
            height=280,
            sizing_mode=sizing_mode,
            tools="pan,wheel_zoom,reset",
            y_axis_label="seconds",
            name="chunk_latency",
        )
        self.latency.scatter("t", "latency_s", source=self.chunks, size=6, alpha=0.7, color="colour")
        self.latency.add_tools(
            HoverTool(tooltips=[("session", "@session"), ("chunk", "@index"), ("latency", "@latency_s{0.000} s")])
        )
        self.slo_line = Span(
            location=0, dimension="width", line_color="#d62728", line_dash="dashed", line_width=2, visible=False
        )
        self.latency.add_layout(self.slo_line)
        self.latency.y_range.start = 0

        self.batch = figure(
            title="Batch size of each chunk's step",
            x_axis_type="datetime",
            x_range=self.latency.x_range,
            height=220,
            sizing_mode=sizing_mode,
            tools="",
            toolbar_location=None,
            name="batch_sizes",
        )
        self.batch.scatter("t", "batch_size", source=self.chunks, size=6, alpha=0.7, color="colour")
        self.batch.y_range.start = 0

        self.ticks = ColumnDataSource({"t": [], "workers": [], "active": [], "sessions": []}, name="ticks")
        self.over_time = figure(
            title="Workers and sessions over time",
            x_axis_type="datetime",
            height=220,
            sizing_mode=sizing_mode,
            tools="",
            toolbar_location=None,
            name="workers_over_time",
        )
        self.over_time.step("t", "workers", source=self.ticks, mode="after", line_width=2,
                            color="#000000", legend_label="workers")
        self.over_time.step("t", "sessions", source=self.ticks, mode="after", color=_STATUS_COLOURS["suspended"],
                            legend_label="open sessions")
        self.over_time.step("t", "active", source=self.ticks, mode="after", color=_STATUS_COLOURS["active"],
                            legend_label="active sessions")
        self.over_time.y_range.start = 0
        self.over_time.legend.location = "top_left"

        self.tiers = ColumnDataSource(
            {"tier": list(TIERS), "bytes": [0] * len(TIERS), "colour": [_TIER_COLOURS[t] for t in TIERS]},
            name="state_bytes",
        )
        self.state = figure(
            title="Session state per tier (bytes)",
            y_range=list(TIERS),
            x_range=Range1d(0, 1),
            height=220,
            sizing_mode=sizing_mode,
            tools="",
            toolbar_location=None,
            name="state_bytes_per_tier",
        )
        self.state.hbar(y="tier", right="bytes", height=0.7, color="colour", source=self.tiers)
        self.state.xaxis.formatter = NumeralTickFormatter(format="0.0 b")
        for fig in (self.latency, self.batch, self.over_time):
            fig.xaxis.formatter = _time_format()

        self.root = column(
            self.summary,
            row(self.per_worker, self.state, sizing_mode=sizing_mode),
            self.latency,
            row(self.batch, self.over_time, sizing_mode=sizing_mode),
            sizing_mode=sizing_mode,
        )

    def update(self) -> None:
        """Pull this tick's frame and push the changes to the figures."""
        frame = self.source(self.last_seq)
        self._update_bars(frame)
        self._update_chunks(frame)
        t_ms = frame.now_s * 1000
        self.ticks.stream(
            {
                "t": [t_ms],
                "workers": [len(frame.workers)],
                "active": [frame.n_status("active")],
                "sessions": [frame.n_sessions],
            },
            rollover=TICK_ROLLOVER,
        )
        total = sum(frame.state_bytes.get(t, 0) for t in TIERS)
        self.tiers.data.update(bytes=[frame.state_bytes.get(t, 0) for t in TIERS])
        self.state.x_range.end = max(1, total) * 1.05
        if frame.slo_s is not None:
            self.slo_line.location = frame.slo_s
            self.slo_line.visible = True
        self.summary.text = _summary_html(frame)

    def _update_bars(self, frame: DashboardFrame) -> None:
        keys = list(frame.workers) + [k for k in frame.sessions_by_worker if k not in frame.workers]
        labels = [_short(k) for k in keys]
        data: dict[str, list[Any]] = {"worker": labels}
        for s in STATUSES:
            data[s] = [frame.sessions_by_worker.get(k, {}).get(s, 0) for k in keys]
        if list(self.per_worker.x_range.factors) != labels:
            self.per_worker.x_range.factors = labels
        if data != dict(self.bars.data):
            self.bars.data = data

    def _colour(self, session_id: str) -> str:
        # One colour per session, in order of appearance (stable while the page is open).
        colour = self._colours.get(session_id)
        if colour is None:
            colour = self._colours[session_id] = _PALETTE[len(self._colours) % len(_PALETTE)]
        return colour

    def _update_chunks(self, frame: DashboardFrame) -> None:
        if not frame.chunks:
            return
        self.chunks.stream(
            {
                "t": [p.t_s * 1000 for p in frame.chunks],
                "latency_s": [p.latency_s for p in frame.chunks],
                "batch_size": [p.batch_size for p in frame.chunks],
                "session": [p.session_id for p in frame.chunks],
                "index": [p.index for p in frame.chunks],
                "colour": [self._colour(p.session_id) for p in frame.chunks],
            },
            rollover=CHUNK_ROLLOVER,
        )
        self.last_seq = frame.chunks[-1].seq


def _fmt_s(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f} s"


def _summary_html(frame: DashboardFrame) -> str:
    items = [
        f"<b>{len(frame.workers)}</b> workers",
        f"<b>{frame.n_sessions}</b> sessions",
        f"<b>{frame.n_status('active')}</b> active",
        f"<b>{frame.n_status('idle')}</b> idle",
        f"<b>{frame.n_status('suspended')}</b> suspended",
        f"<b>{frame.chunks_total}</b> chunks",
        f"<b>{frame.migrations}</b> migrations",
        f"<b>{frame.offloads}</b> offloads",
        f"p99 latency <b>{_fmt_s(frame.latency_p99_s)}</b>",
        f"max <b>{_fmt_s(frame.latency_max_s)}</b>",
        f"target <b>{_fmt_s(frame.slo_s)}</b>",
    ]
    return '<div class="turboserve-summary" style="font-size:14px">' + " &middot; ".join(items) + "</div>"


def turboserve_doc(scheduler: Any, extra: dict, doc: Any, source: FrameSource | None = None,
                   interval_ms: int | None = None) -> None:
    """Bokeh ``FunctionHandler`` body of the page (the signature Dask's dashboard uses).

    ``source`` defaults to the frame of the turboserve scheduler plugin running on
    ``scheduler``; without that plugin the page shows the workers only.
    """
    from distributed.dashboard.components.scheduler import BOKEH_THEME, env

    from framework.dashboard.source import plugin_frame_source, update_interval_ms

    source = source or plugin_frame_source(scheduler)
    dash = SessionsDashboard(source)
    tick = _safe_update(dash)
    tick()  # a failing first frame leaves empty figures, not a blank page
    doc.add_root(dash.root)
    doc.add_periodic_callback(tick, interval_ms or update_interval_ms())
    doc.title = f"Dask: {PAGE_TITLE}"
    doc.theme = BOKEH_THEME
    doc.template = env.get_template("simple.html")
    doc.template_variables.update(extra)


def _safe_update(dash: SessionsDashboard) -> Callable[[], None]:
    failures = 0

    def tick() -> None:
        nonlocal failures
        t0 = time.perf_counter()
        try:
            dash.update()
            failures = 0
        except Exception:
            # The first failure in a row with its traceback; repeats every tick would flood the log.
            failures += 1
            if failures == 1:
                logger.warning("turboserve dashboard: update failed", exc_info=True)
        elapsed = time.perf_counter() - t0
        if elapsed > 0.05:
            logger.debug("turboserve dashboard tick took %.3f s", elapsed)

    return tick
