"""The client's half of a chunk future: a :class:`distributed.Future` whose result comes straight from its worker.

:meth:`framework.Session.submit` returns a :class:`ChunkFuture`: the future of the task
:func:`workers.chunk_futures.chunk_task` (key ``("turboserve-chunk-<handle>-<session>",
index)``), a :class:`distributed.Future` in every way Dask looks at one: the scheduler
tracks its key, ``wait``, ``as_completed``, ``client.gather``, ``client.submit``,
``cancel`` and ``release`` work as for any future, and the chunk shows in the task stream.

Only ``result()`` (and ``await``) takes a shorter way. Dask's own ``result()`` waits
until the worker has told the scheduler that the task finished and the scheduler has
told the client, then asks the scheduler where the key is (``who_has``) and only then
the worker for its data: three process hops after the chunk is made, plus the data's
own round trip. Here the client asks the worker the future was sent to as soon as
``result()`` is called (:func:`workers.chunk_futures.serve_result`), and the worker
answers as soon as the task returns (a finished future's chunk at once, from its
memory): one hop, as :meth:`Session.stream` has. The bytes
go worker -> client either way, never through the scheduler. When that worker does not
answer with the chunk (the task ran elsewhere or failed, the worker died) or the
scheduler reports the key first, Dask's own path takes over, so errors, cancellation,
and a recomputation after a worker's death behave exactly as for any future.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from distributed import Future

from workers.access import TokenRPC
from workers.actor_rpc import BoundedRPC
from workers.chunk_futures import RESULT_OP

#: Seconds one wait on the worker lasts before the client asks again (the worker holds a waiter that long).
RESULT_POLL_S = 5.0
#: Seconds to wait for a connection to the future's worker (then Dask's path alone).
CONNECT_TIMEOUT_S = 1.0
#: Seconds a finished future whose worker is unreachable waits for the scheduler to report it lost.
DEATH_NOTICE_S = 10.0


class ChunkFuture(Future):
    """The future of one chunk, made by :meth:`framework.Session.submit` (see the module's doc).

    Parameters
    ----------
    key : tuple
        The key of the chunk's task (the client holds it already).
    client : distributed.Client
    home : str or None
        Address of the worker the task was sent to, asked first by ``result()``.
    access_token : str, optional
        The session's (:mod:`workers.access`): the worker hands the chunk only to its holder.
    """

    def __init__(self, key: Any, client: Any, home: str | None, access_token: str | None = None) -> None:
        super().__init__(key, client)
        self._home = home
        self._access = access_token

    def done_probe(self) -> Callable[[], bool]:
        """This future's ``done()`` as a callable that does not keep the future (and its key) alive."""
        return self._state.done

    async def _result(self, raiseit: bool = True) -> Any:
        # Future.result() and __await__ both come here (distributed's one internal seam).
        if self._home is not None and self.status in ("pending", "finished"):
            found, chunk = await self._from_home()
            if found:
                return chunk
        return await super()._result(raiseit)

    async def _from_home(self) -> tuple[bool, Any]:
        """``(True, chunk)`` from the future's worker, or ``(False, None)``: take Dask's path.

        A finished future's chunk is asked for once (the worker answers from its memory);
        a pending one's until the worker has it or the scheduler reports the key. When
        the worker is gone while the scheduler still places a finished key there (it has
        not noticed the death yet; a key recomputed elsewhere since goes Dask's way at
        once), Dask's path would ask the scheduler to gather from
        the dead worker, which retries the connection for Dask's connect timeout (30 s
        by default): instead this waits, up to :data:`DEATH_NOTICE_S`, for the scheduler
        to report the key lost, and Dask's path then waits for its recomputation.
        """
        rpc = TokenRPC(BoundedRPC(self.client.rpc, self._home, CONNECT_TIMEOUT_S), self._access)
        finished = self.status == "finished"
        known = asyncio.ensure_future(self._state.wait())
        ask: asyncio.Future | None = None
        try:
            while finished or not known.done():
                # A finished key is in the worker's memory or not there at all: no wait for it.
                wait_s = 0.0 if finished else RESULT_POLL_S
                ask = asyncio.ensure_future(getattr(rpc, RESULT_OP)(key=self.key, timeout=wait_s))
                await asyncio.wait({ask} if finished else {ask, known}, return_when=asyncio.FIRST_COMPLETED)
                if not ask.done():  # the scheduler reported the key first: Dask's path
                    break
                try:
                    answer = ask.result()
                except (OSError, KeyError):  # the worker is gone (Dask recomputes the key elsewhere) or lacks the op
                    if finished and await self._placed_on_home():
                        await self._until_no_longer_finished(DEATH_NOTICE_S)
                    break
                if answer["status"] == "OK":
                    return True, answer["result"]
                if finished or answer["status"] != "pending":
                    break
        finally:
            known.cancel()
            if ask is not None and not ask.done():  # also when result(timeout) gave up on us
                ask.cancel()
        return False, None

    async def _placed_on_home(self) -> bool:
        """Whether the scheduler places this key on the future's first worker (not on one that recomputed it)."""
        try:
            who = await self.client.scheduler.who_has(keys=[self.key])
        except Exception:  # the scheduler unreachable: Dask's path decides
            return False
        return self._home in (who.get(self.key) or ())

    async def _until_no_longer_finished(self, bound_s: float) -> None:
        """Wait up to ``bound_s`` for the scheduler to report this finished key lost (its worker died)."""
        deadline = asyncio.get_running_loop().time() + bound_s
        while self.status == "finished" and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
