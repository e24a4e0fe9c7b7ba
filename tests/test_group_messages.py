"""A parallel group's messages to a worker that went away are typed refusals, never a bare comm error.

``ParallelGroups`` (the scheduler's end of ``set_parallelism``) sends every group message
through one call; a worker gone before or during it (SIGKILLed in the chaos suite's
``kill-transform``) must come back as ``TransferError`` naming the worker and the step:
a ``CommClosedError`` escaping a scheduler handler makes Dask drop the *caller's*
connection. Here: a real Dask scheduler's RPC to an address where nothing listens.
"""

from __future__ import annotations

import asyncio
import socket

import dask
import pytest
from distributed import Scheduler

from framework.errors import TransferError
from framework.parallelism import ParallelGroups


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_group_message_to_a_worker_that_went_away_is_a_transfer_error():
    nowhere = f"tcp://127.0.0.1:{_closed_port()}"

    async def main() -> None:
        with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
            async with Scheduler(dashboard_address=":0", port=0) as scheduler:
                groups = ParallelGroups(scheduler, lambda w: [], lambda s: "tiny", lambda: None, timeout_s=1.0)
                with pytest.raises(TransferError, match=rf"worker {nowhere} went away during 'port' of group 'g1'"):
                    await groups._call(nowhere, "port", "g1")

    asyncio.run(main())


def test_a_rank_lost_inside_the_step_is_a_transfer_error_too():
    """A worker that answers with its own comm failure (the leader's dissolve asked a follower
    that had died for its shards; seen in the chaos suite) is a TransferError, not that error."""
    from distributed import Worker
    from distributed.comm.core import CommClosedError
    from distributed.protocol import to_serialize

    from framework.parallelism import GROUP_OP

    async def answer(**kw):
        return {"status": "error", "exception": to_serialize(CommClosedError("in <TCP (closed)>: Stream is closed"))}

    async def main() -> None:
        async with Scheduler(dashboard_address=":0", port=0) as scheduler, Worker(
            scheduler.address, nthreads=1, dashboard_address=":0"
        ) as worker:
            worker.handlers[GROUP_OP] = answer
            groups = ParallelGroups(scheduler, lambda w: [], lambda s: "tiny", lambda: None, timeout_s=1.0)
            with pytest.raises(TransferError, match=r"could not complete 'dissolve' of group 'g2': another rank went away"):
                await groups._call(worker.address, "dissolve", "g2")

    asyncio.run(main())
