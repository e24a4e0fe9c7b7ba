"""Pure decision code: placement, migration, autoscaling, offload, admission.

A policy is built with keyword parameters (``policies.registry.make(kind, name,
**params)``), starts from ``policy.initial_state()``, and each control tick answers
``actions, state = policy.decide(snapshot, state)``. It reads nothing but its
arguments: time is ``snap.now_s``, and no policy here draws random numbers. Policies
import the standard library and ``policies.*`` only.

========== ===================== ==============================================
kind       names                 module
========== ===================== ==============================================
placement  round-robin,          :mod:`policies.placement`
           least-loaded,
           migration-aware
autoscaling fixed, hpa            :mod:`policies.autoscaling` (and the shared rules)
autoscaling load-driven           :mod:`policies.load_driven` (TurboServe's)
autoscaling ray-serve,           :mod:`policies.reference_autoscalers`
           predictive,           (other systems' documented rules, as baselines)
           turboserve-ref
offload    never, idle-timeout   :mod:`policies.offload`
parallelism fixed, adaptive      :mod:`policies.parallelism`
           (groups of k workers)
========== ===================== ==============================================

:class:`policies.combined.Combined` runs one of each on a shared ledger so that their
actions never hand out the same device memory twice; :mod:`policies.admission` holds
that ledger (the capacity rules).

Semantics the simulator and the live controller rely on
-------------------------------------------------------
Snapshot
    A session that needs a device is ``PENDING``: a new one (``state_bytes == 0``) or
    a suspended one that became active again (``state_bytes > 0``). A ``MIGRATING``
    session's ``worker`` is its migration *target*. Sessions naming a worker absent
    from the snapshot are ignored.
Latency
    A worker's predicted per-chunk latency is ``snap.latency.predict(n, mean_context)``
    with ``n`` its ACTIVE sessions plus those MIGRATING into it: one coalesced step
    serves them all. IDLE sessions hold memory but no compute.
Capacity (every action of a decision, across policies when combined)
    The ``state_bytes`` of on-device sessions (ACTIVE, IDLE, MIGRATING, plus those
    placed, migrated in or resumed by this decision) never exceed
    ``worker.memory_bytes``; no worker gets more than ``worker.max_batch`` active
    sessions; only RUNNING workers receive sessions (STARTING ones cannot yet,
    DRAINING ones must not). Memory of a session leaving a worker (migrated away,
    offloaded) stays booked on it for the rest of the decision: the copy is in flight.
    A new session reserves ``new_session_bytes`` (default: the largest state of its
    model in the snapshot).
Actions
    ``Place(session, worker)`` answers a pending session; for a previously suspended
    one the mechanism resumes its state there. ``Resume(session, worker)`` is only a
    prefetch of a SUSPENDED session ahead of its expected return
    (``next_active_s``); the session is IDLE on that worker afterwards.
    ``Migrate(session, source, target)`` moves an ACTIVE session at a chunk boundary.
    ``Offload(session, tier)`` suspends an IDLE one. ``Reject(session)`` refuses a
    new session (only with ``on_full="refuse"``; otherwise it stays pending).
    ``ScaleTo(n)`` asks for ``n`` RUNNING + STARTING workers (DRAINING ones do not
    count); on scale-in it comes with ``Retire(worker)`` for each worker to drain.
    A session appears in at most one action per decision; CLOSED sessions never.
    Every action carries a ``cause`` (why), for logs and refusals.
Draining
    The placement policy empties DRAINING workers: active sessions migrate (at most
    ``max_drain_migrations`` per decision) to where the policy would place them, idle
    ones are offloaded to the host.
Cost
    One decision is O(sessions + workers + moves x log workers), where the moves
    include the migration plan's look-ahead (at most ``plan_limit``). At 10k
    sessions x 1024 workers one pass over the snapshot takes ~2.3 ms in CPython and
    placement + autoscaling on one shared ledger ~6-8 ms
    (``python -m experiments.bench_policies``); calling them apart builds the ledger
    twice, so the controller and the simulator use :class:`~policies.combined.Combined`.
"""

from policies.admission import CapacityLedger, WorkerLoad
from policies.autoscaling import Fixed, Hpa, HpaState
from policies.combined import Combined
from policies.load_driven import LoadDriven, LoadDrivenState
from policies.offload import IdleTimeout, Never
from policies.placement import LeastLoaded, MigrationAware, RoundRobin
from policies.reference_autoscalers import Predictive, RayServe, TurboServeRef

__all__ = [
    "CapacityLedger",
    "Combined",
    "Fixed",
    "Hpa",
    "HpaState",
    "IdleTimeout",
    "LeastLoaded",
    "LoadDriven",
    "LoadDrivenState",
    "MigrationAware",
    "Never",
    "Predictive",
    "RayServe",
    "RoundRobin",
    "TurboServeRef",
    "WorkerLoad",
]
