"""What a client sees when its session cannot be served: typed errors and bounded waits.

Two faults on a ``Server.local`` with the ``tiny`` model, each printed with the error
type the client got and how long it took:

1. a worker SIGKILLed just as ``suspend(to="disk")`` starts (``--kill-delays``): the
   suspend raises a typed error (or succeeds), then the stream goes on from a survivor;
2. the scheduler closed under a streaming session: ``stream()`` raises ``SessionLost``
   within ``RELOCATE_TIMEOUT_S`` (set by ``--relocate-s``) plus the 5 s grace of the
   last RPC, and ``close()`` returns within ``CLOSE_TIMEOUT_S``.

Run: ``python -m experiments.lost_sessions --relocate-s 15``
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time

PROMPT = "a red fox running through snow"


def _suspend_under_a_kill(delays: list[float]) -> None:
    from distributed.core import Status

    from framework import Server

    with Server.local(n_workers=len(delays) + 1, model="tiny", dashboard_address=None, checkpoint_every=2,
                      adaptive=False) as server:
        for trial, delay in enumerate(delays):
            s = server.open_session(PROMPT, seed=trial)
            list(s.stream(3))
            victim = s.worker
            name = server.client.scheduler_info(n_workers=-1)["workers"][victim]["name"]
            pid = server.client.run(os.getpid, workers=[victim])[victim]
            server.cluster.workers[name].status = Status.closing_gracefully  # stays dead: a crash
            threading.Timer(delay, os.kill, (pid, signal.SIGKILL)).start()
            t0 = time.monotonic()
            try:
                s.suspend(to="disk")
                outcome = "returned"
            except Exception as exc:  # noqa: BLE001 - the type is what is measured
                outcome = f"{type(exc).__module__}.{type(exc).__name__}"
            took = time.monotonic() - t0
            got = [c.index for c in s.stream(2)]
            print(f"kill {delay * 1e3:.0f} ms into suspend: {outcome} after {took:.1f} s; "
                  f"then chunks {got}; events {[e['kind'] for e in s.events()]}")
            s.close()


def _scheduler_closed(relocate_s: float) -> None:
    import framework.chunk_channel as channel_module
    from framework import Server

    channel_module.RELOCATE_TIMEOUT_S = relocate_s
    server = Server.local(n_workers=1, model="tiny", dashboard_address=None, adaptive=False)
    try:
        s = server.open_session(PROMPT, seed=0)
        list(s.stream(2))
        server.client.sync(server.cluster.scheduler.close)
        t0 = time.monotonic()
        try:
            list(s.stream(3))
            outcome = "streamed on"
        except Exception as exc:  # noqa: BLE001 - the type is what is measured
            outcome = f"{type(exc).__module__}.{type(exc).__name__}"
        print(f"scheduler closed: stream() -> {outcome} after {time.monotonic() - t0:.1f} s "
              f"(RELOCATE_TIMEOUT_S={relocate_s:g})")
        t0 = time.monotonic()
        s.close()
        print(f"close() returned after {time.monotonic() - t0:.1f} s; events {[e['kind'] for e in s.events()]}")
    finally:
        try:
            server.close()
        except Exception as exc:  # noqa: BLE001 - the scheduler is gone already
            print(f"server.close(): {type(exc).__name__} (the scheduler is gone)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--relocate-s", type=float, default=15.0, help="RELOCATE_TIMEOUT_S for the scheduler fault")
    parser.add_argument("--kill-delays", default="0,0.05", help="seconds after the suspend starts, comma-separated")
    args = parser.parse_args(argv)
    try:
        delays = [float(x) for x in args.kill_delays.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--kill-delays must be seconds separated by commas, got {args.kill_delays!r}")
    if args.relocate_s <= 0 or any(d < 0 for d in delays):
        parser.error("--relocate-s must be > 0 and --kill-delays >= 0")
    _suspend_under_a_kill(delays)
    _scheduler_closed(args.relocate_s)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
