"""Serve the turboserve page on a running scheduler's dashboard, listed in its menu.

Dask builds its dashboard once, when the scheduler starts, from
``distributed.dashboard.scheduler.applications``. The scheduler plugin starts later
(and, with ``Server(address)``, on a scheduler someone else started), so the page is
added at plugin start instead: a second bokeh application on the scheduler's HTTP
router, with the same prefix and template variables as Dask's own pages, and an entry
appended to the "More..." menu those pages share (the menu list is one object, shared
by every page's template variables, so the entry shows on pages rendered afterwards).

JupyterLab's Dask extension lists the panes it can open from ``/individual-plots.json``,
which Dask builds from the ``individual-*`` paths of its *first* bokeh application only
(``distributed.http.scheduler.info.IndividualPlots``). The page is a second
application, so the listing is served by a subclass of Dask's handler that adds the
``individual-*`` pages of every bokeh application; it takes precedence because tornado
matches handlers added later (``add_handlers``) before those the application began with.
"""

from __future__ import annotations

import logging
from typing import Any

from framework.dashboard.page import PAGE_PATH, PAGE_TITLE, turboserve_doc

logger = logging.getLogger(__name__)


def _bokeh_apps(scheduler: Any) -> list[Any]:
    http = getattr(scheduler, "http_application", None)
    return [a for a in getattr(http, "applications", ()) if hasattr(a, "app_paths")]


def _list_in_individual_plots(scheduler: Any, prefix: str) -> None:
    from distributed.http.scheduler.info import IndividualPlots

    class _AllIndividualPlots(IndividualPlots):
        """Dask's listing plus the ``individual-*`` pages of every bokeh application."""

        def write(self, chunk: Any) -> None:
            if isinstance(chunk, dict):
                for app in _bokeh_apps(self.server):
                    for uri in app.app_paths:
                        name = uri.strip("/").split("/")[-1]
                        if name.startswith("individual-") and not uri.endswith(".json"):
                            chunk.setdefault(name.replace("-", " ").title(), uri)
            super().write(chunk)

    route = prefix.rstrip("/") + "/individual-plots.json"
    scheduler.http_application.add_handlers(r".*$", [(route, _AllIndividualPlots, {"dask_server": scheduler})])


def page_installed(scheduler: Any) -> bool:
    """True when some bokeh application of ``scheduler`` already serves the page."""
    return any(p.rstrip("/").endswith(PAGE_PATH) for a in _bokeh_apps(scheduler) for p in a.app_paths)


def install_page(scheduler: Any) -> bool:
    """Add the turboserve page to ``scheduler``'s dashboard; idempotent.

    Must run on the scheduler's event loop (e.g. in ``SchedulerPlugin.start``).

    Returns
    -------
    bool
        True when the page is served (now or already), False when the scheduler has no
        bokeh dashboard (``dashboard_address=None``, or bokeh missing).
    """
    if page_installed(scheduler):
        return True
    apps = _bokeh_apps(scheduler)
    dask_app = next((a for a in apps if any(p.endswith("/status") for p in a.app_paths)), None)
    if dask_app is None:
        logger.info("turboserve dashboard page not installed: the scheduler serves no dashboard")
        return False
    from tornado.ioloop import IOLoop

    from distributed.dashboard.core import BokehApplication
    from distributed.dashboard.scheduler import template_variables

    variables = template_variables(scheduler)  # memoized: the same dict Dask's pages use
    prefix = getattr(dask_app, "_prefix", "") or ""
    app = BokehApplication({PAGE_PATH: turboserve_doc}, scheduler, prefix=prefix, template_variables=variables)
    scheduler.http_application.add_application(app)
    app.initialize(IOLoop.current())
    app.start()
    _list_in_individual_plots(scheduler, prefix)
    entry = {"url": PAGE_PATH.strip("/"), "name": PAGE_TITLE}
    plots = variables.get("plots")
    if isinstance(plots, list) and entry not in plots:
        plots.append(entry)
        plots.sort(key=lambda d: d["name"].lower())
    logger.info("turboserve dashboard page at %s%s", prefix.rstrip("/"), PAGE_PATH)
    return True


def install_dashboard(scheduler: Any) -> bool:
    """Serve the page on ``scheduler``'s dashboard and the metrics on its ``/metrics``.

    Returns whether the page is served; logs and returns False on failure: a dashboard
    problem must never stop the serving plugin from starting.
    """
    try:
        from framework.dashboard.metrics import install_metrics

        install_metrics(scheduler)
    except Exception:
        logger.warning("could not export the turboserve metrics on /metrics", exc_info=True)
    try:
        return install_page(scheduler)
    except Exception:
        logger.warning("could not install the turboserve dashboard page", exc_info=True)
        return False
