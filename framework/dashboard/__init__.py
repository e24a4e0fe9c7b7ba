"""The turboserve page of the Dask dashboard: sessions, chunk latency, workers, state tiers.

``install_page(scheduler)`` (called by the scheduler plugin at start, through ``install.install_dashboard``) serves it at
``<dashboard>/individual-turboserve`` and lists it in the dashboard's "More..." menu.
The figures are fed by a plain :class:`DashboardFrame` per tick (see ``data``).
"""

from framework.dashboard.data import ChunkLog, ChunkPoint, DashboardFrame, build_frame
from framework.dashboard.install import install_page, page_installed
from framework.dashboard.page import PAGE_PATH, SessionsDashboard, turboserve_doc

__all__ = [
    "PAGE_PATH",
    "ChunkLog",
    "ChunkPoint",
    "DashboardFrame",
    "SessionsDashboard",
    "build_frame",
    "install_page",
    "page_installed",
    "turboserve_doc",
]
