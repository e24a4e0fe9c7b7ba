"""Per-chunk cost of chunk futures against the long-poll path, side by side in one run.

Issue 12 made :meth:`framework.Session.submit` return a :class:`distributed.Future`: a
coroutine task on the session's worker takes the chunk from the actor and Dask holds
it until gathered. Before, ``submit()`` long-polled the actor directly. Both paths stay
in the code (``stream()`` long-polls), so this script measures them in one run on one
cluster, interleaved chunk by chunk, so the machine's load hits both alike:

* **one session, closed loop**: ask for a chunk, wait for it, repeat; per chunk the
  client's wall time of ``submit().result()`` against the long-poll path
  (``_request(1)`` then ``_chunk(i)``, the body of the old ``submit``), and the model's
  step on the worker (``t_done_s - t_start_s``) as the scale;
* **S sessions, back to back**: ``S`` submits, then all results (``client.gather``)
  against the old ``submit`` made ``S`` times (its request sent and answered before it
  returned a ``concurrent.futures.Future`` of the long-poll), then all results; wall time
  per round.

Printed: medians in ms, the difference (the overhead of a future per chunk) and that
difference as a share of the step (target of issue 12: at most 2 ms or 5 % of a tiny
step more). No periodic checkpoints.

Run: ``.venv/bin/python -m experiments.bench_futures [--chunks 20] [--sessions 4]``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

PROMPT = "a red fox running through snow"


async def _longpoll(session) -> object:
    """One chunk through the long-poll path (what ``submit`` did before issue 12)."""
    index = await session._request(1)
    return await session._chunk(index)


def _round_longpoll(server, sessions) -> list:
    async def both():
        return await asyncio.gather(*(_longpoll(s) for s in sessions))

    return server.client.sync(both)


def _old_submit(session):
    """The body of ``Session.submit`` before issue 12 (a ``concurrent.futures.Future``)."""
    index = session._sync(session._request, 1)
    return asyncio.run_coroutine_threadsafe(session._chunk(index), session._server.client.loop.asyncio_loop)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=20, help="chunks per measurement and path")
    parser.add_argument("--sessions", type=int, default=4, help="sessions of the back-to-back rounds")
    parser.add_argument("--model", default="tiny")
    args = parser.parse_args(argv)

    from framework import Server

    med = statistics.median
    with Server.local(n_workers=1, model=args.model, checkpoint_every=0, dashboard_address=":0",
                      adaptive=False) as server:
        one = server.open_session(PROMPT, seed=0)
        one.submit().result()  # warm-up, both paths
        _round_longpoll(server, [one])
        fut_s, poll_s, step_s = [], [], []
        for _ in range(args.chunks):
            t0 = time.perf_counter()
            chunk = one.submit().result()
            fut_s.append(time.perf_counter() - t0)
            step_s.append(chunk.t_done_s - chunk.t_start_s)
            t0 = time.perf_counter()
            chunk = _round_longpoll(server, [one])[0]
            poll_s.append(time.perf_counter() - t0)
            step_s.append(chunk.t_done_s - chunk.t_start_s)
        one.close()

        many = [server.open_session(PROMPT, seed=1 + i) for i in range(args.sessions)]
        server.client.gather([s.submit() for s in many])
        _round_longpoll(server, many)
        fut_r, poll_r = [], []
        for _ in range(max(1, args.chunks // 2)):
            t0 = time.perf_counter()
            server.client.gather([s.submit() for s in many])
            fut_r.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            [f.result() for f in [_old_submit(s) for s in many]]
            poll_r.append(time.perf_counter() - t0)
        for s in many:
            s.close()

    step = med(step_s)
    print(f"chunk futures against the long-poll path, model {args.model}, 1 worker, interleaved (median ms)")
    print(f"  model step on the worker                    {1e3 * step:8.2f}")
    d = med(fut_s) - med(poll_s)
    print(f"  one session   future {1e3 * med(fut_s):8.2f}   long-poll {1e3 * med(poll_s):8.2f}   "
          f"overhead {1e3 * d:+7.2f} ms = {100 * d / step:+5.1f}% of a step   ({args.chunks} chunks each)")
    d = (med(fut_r) - med(poll_r)) / args.sessions
    print(f"  {args.sessions} sessions    future {1e3 * med(fut_r):8.2f}   old submit {1e3 * med(poll_r):7.2f}   "
          f"overhead per chunk {1e3 * d:+7.2f} ms   (per round of {args.sessions}, {len(fut_r)} rounds each)")


if __name__ == "__main__":
    main()
