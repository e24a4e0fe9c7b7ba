"""The environment turboserve's own worker processes start with.

Dask's nanny sets ``distributed.nanny.pre-spawn-environ`` before it spawns a worker,
including ``MALLOC_TRIM_THRESHOLD_=65536``. Any ``MALLOC_*_`` setting switches off
glibc's dynamic mmap threshold, so every large tensor of a model step becomes a fresh
``mmap`` whose pages fault in again: a ``tiny`` step took 1.6-1.9x longer inside such a
worker (issue 14; ``experiments/bench_serving.py`` prints the effect). The nanny also
writes the variable into its own process's environment, which for a ``LocalCluster`` is
the client's, so processes spawned from it later inherit it.

:class:`ServingNanny` is Dask's nanny without those variables; the clusters that
:meth:`framework.Server.local` starts use it. The other pre-spawn variables
(``OMP_NUM_THREADS=1`` and friends, ``PYTHONHASHSEED``) stay as Dask sets them. A
variable the user exported in the client's environment still reaches the workers (they
inherit it), so ``MALLOC_TRIM_THRESHOLD_=65536 python ...`` restores Dask's behaviour.
Dask's config (``distributed.nanny.pre-spawn-environ``) is left untouched, so other
clusters in the same process behave as Dask documents.

Its workers are :class:`ServingWorker`: once one has closed, its process leaves without
tearing down the interpreter. That teardown (the module graph of torch, diffusers,
xarray and Dask collected object by object) is what a ``Server.close`` waited for: on a
2-core machine, 0.3 s for two workers at load 2.5, and at load 6 longer than the nanny
waits (``Worker process still alive after 4.0 seconds, killing``); 0.1 s without it.
"""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import os
import sys
from typing import Any

from distributed import Nanny, Worker

#: Pre-spawn variables that turboserve's workers start without (glibc allocator tuning).
DROPPED_ENVIRON = ("MALLOC_TRIM_THRESHOLD_",)


def _exit_now() -> None:
    """Leave the process at once: flush what was written, skip the interpreter's teardown."""
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or gone: nothing left to flush
            pass
    os._exit(0)


class ServingWorker(Worker):
    """A :class:`distributed.Worker` whose process, once the worker closed, exits without the interpreter's teardown.

    Only in a process of its own (a nanny's child): the exit is an ``atexit`` handler
    registered after the close, so it runs first, after Python has joined the
    non-daemon threads (a checkpoint being written finishes); the handlers registered
    before it, and the teardown of modules and objects, are skipped.
    """

    _exit_armed = False  # per process: the handler is registered once

    async def close(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().close(*args, **kwargs)
        finally:
            if multiprocessing.parent_process() is not None and not ServingWorker._exit_armed:
                ServingWorker._exit_armed = True
                atexit.register(_exit_now)


class ServingNanny(Nanny):
    """A :class:`distributed.Nanny` whose worker starts without :data:`DROPPED_ENVIRON`, a :class:`ServingWorker`.

    Examples
    --------
    >>> from distributed import LocalCluster
    >>> cluster = LocalCluster(n_workers=1, worker_class=ServingNanny)   # doctest: +SKIP
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("worker_class", ServingWorker)
        super().__init__(*args, **kwargs)
        for name in DROPPED_ENVIRON:
            given = kwargs.get("env") or {}
            if name not in given:  # an explicit env= for this worker still wins
                self.pre_spawn_env.pop(name, None)
                self.env.pop(name, None)
