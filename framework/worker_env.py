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
"""

from __future__ import annotations

from typing import Any

from distributed import Nanny

#: Pre-spawn variables that turboserve's workers start without (glibc allocator tuning).
DROPPED_ENVIRON = ("MALLOC_TRIM_THRESHOLD_",)


class ServingNanny(Nanny):
    """A :class:`distributed.Nanny` whose worker starts without :data:`DROPPED_ENVIRON`.

    Examples
    --------
    >>> from distributed import LocalCluster
    >>> cluster = LocalCluster(n_workers=1, worker_class=ServingNanny)   # doctest: +SKIP
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name in DROPPED_ENVIRON:
            given = kwargs.get("env") or {}
            if name not in given:  # an explicit env= for this worker still wins
                self.pre_spawn_env.pop(name, None)
                self.env.pop(name, None)
