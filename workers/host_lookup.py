"""Where a worker keeps its turboserve host, and how code on the worker finds it.

:class:`workers.plugin.ModelHost` puts itself in ``worker.extensions[EXTENSION]`` when
it is set up; session actors, parallel-group ranks, chunk-future tasks and benchmarks
find it with :func:`get_host`. Kept apart from the plugin so that the modules the plugin
dispatches to (``session_actor``, ``parallel_group``, ``chunk_futures``) need not import
the plugin back: no import cycle.
"""

from __future__ import annotations

from typing import Any

#: Name under which the host sits in ``worker.extensions``.
EXTENSION = "turboserve"


def get_host(worker: Any = None) -> Any:
    """The :class:`workers.plugin.ModelHost` of ``worker`` (default: the current worker)."""
    if worker is None:
        from distributed import get_worker

        worker = get_worker()
    try:
        return worker.extensions[EXTENSION]
    except KeyError:
        raise RuntimeError(
            f"worker {worker.address} has no turboserve ModelHost plugin; "
            "attach with framework.Server(...) which registers it"
        ) from None
