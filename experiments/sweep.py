"""Experiment sweeps: policy x trace x cluster size x seed, as Dask batch jobs.

Each job is plain data (:class:`SweepJob`); a worker generates or reads its trace,
simulates it (:func:`experiments.paper_table.run_trace`) and returns summary rows. The
client maps the jobs over a ``LocalCluster`` (or any Dask client given), shows a tqdm
progress bar while gathering, and writes one ``summary.csv`` (plus ``results.zarr``
and plots, through :func:`experiments.results.write_outputs`).

Examples
--------
>>> jobs = sweep_jobs(["steady"], ["static-peak", "turboserve"], gpus=[64], seeds=[0, 1],
...                   duration_s=600)
>>> len(jobs)
4
>>> table = sweep(jobs, n_workers=2)  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import pathlib
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import pandas as pd

from experiments.results import write_outputs


@dataclass(frozen=True, slots=True)
class SweepJob:
    """One simulation: a trace (scenario name or file), a policy label, a size, a seed.

    ``policy`` is a paper label (``static-peak``, ``hpa+least-loaded``,
    ``hpa+migration-aware``, ``turboserve``), ``oracle``, or a
    ``placement+autoscaling+offload`` triple of registry names.
    """

    trace: str
    policy: str
    gpus: int
    seed: int = 0
    duration_s: float | None = 3600.0
    scale: float | str = 1.0
    model: str | None = None
    max_batch: int | str = "slo"
    config: Any = None  # a SimConfig (latency model, start-up, ...); None: from the dask config


def sweep_jobs(
    traces: Sequence[str],
    policies: Sequence[str],
    gpus: Sequence[int],
    seeds: Sequence[int] = (0,),
    **common: Any,
) -> list[SweepJob]:
    """The cross product of ``traces x policies x gpus x seeds`` (``common``: other fields)."""
    return [SweepJob(t, p, g, s, **common) for t, p, g, s in itertools.product(traces, policies, gpus, seeds)]


def run_job(job: SweepJob) -> list[dict[str, Any]]:
    """Run one job (on a Dask worker or locally); its summary rows with the job's fields.

    The ``oracle`` policy returns the oracle row; any other returns the simulated row.
    """
    import framework.config  # noqa: F401  (registers the turboserve config defaults on the worker)
    from experiments.paper_table import load_traces, run_trace

    (trace,) = load_traces([job.trace], duration_s=job.duration_s, scale=job.scale, seed=job.seed,
                           model=job.model, gpus=job.gpus, config=job.config, max_batch=job.max_batch)
    oracle = job.policy == "oracle"
    rows, _, _ = run_trace(trace, job.gpus, policies=[] if oracle else [job.policy], max_batch=job.max_batch,
                           record_chunks=False, with_oracle=oracle, config=job.config)
    return [{**row, "seed": job.seed, "job_trace": job.trace} for row in rows]


def sweep(
    jobs: Sequence[SweepJob],
    *,
    client: Any = None,
    n_workers: int | None = None,
    out_dir: str | pathlib.Path | None = None,
    progress: bool = True,
    plots: bool = True,
) -> pd.DataFrame:
    """Run ``jobs`` as Dask tasks and return their summary table (one row per job).

    Parameters
    ----------
    client
        A ``distributed.Client``; default: a new ``LocalCluster`` with ``n_workers``
        single-threaded worker processes (closed afterwards).
    out_dir
        Where to write ``summary.csv``, ``config.yaml``, ``results.zarr`` and plots.
    progress
        Show a tqdm bar while gathering.
    """
    from distributed import Client, LocalCluster, as_completed
    from tqdm.auto import tqdm

    if not jobs:
        raise ValueError("no sweep jobs: give at least one trace, policy, size and seed")
    own = client is None
    cluster = None
    if own:
        cluster = LocalCluster(n_workers=n_workers or 2, threads_per_worker=1, processes=True,
                               dashboard_address=":0")
        client = Client(cluster)
    try:
        futures = client.map(run_job, list(jobs), pure=False)
        rows: list[dict[str, Any]] = []
        order = {f.key: k for k, f in enumerate(futures)}
        done: dict[int, list[dict[str, Any]]] = {}
        for fut in tqdm(as_completed(futures), total=len(futures), disable=not progress, desc="sweep"):
            done[order[fut.key]] = fut.result()
        for k in range(len(futures)):
            rows += done[k]
    finally:
        if own:
            client.close()
            cluster.close()
    table = pd.DataFrame(rows)
    if out_dir is not None:
        import framework.config as tconfig

        config = {**tconfig.resolved(), "experiment": {"kind": "sweep", "jobs": [asdict(j) for j in jobs]}}
        table_out = table.copy()
        # One run per row: make the run labels unique across sizes and seeds.
        table_out["trace"] = [f"{t}@{g}gpu-s{s}" for t, g, s in zip(table["trace"], table["gpus"], table["seed"])]
        write_outputs(out_dir, {}, {}, table_out, config, plots=plots)
    return table
