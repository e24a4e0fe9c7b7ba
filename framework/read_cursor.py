"""Which chunk indices one session handle has asked for, received, read and given to futures.

A session's chunk indices are its stream's identity: each is handed to exactly one
reader (a :meth:`~framework.Session.stream` or a chunk future of
:meth:`~framework.Session.submit`), in order, however the two are mixed and whatever
the workers resend after a recovery. :class:`ReadCursor` keeps that bookkeeping, apart
from the calls that move chunks (:mod:`framework.chunk_channel`):

- ``issued``: the request high-water mark (the next index to hand out);
- the *received* prefix: every index below it arrived (kept until the stream takes it)
  or was given to a future; a chunk a poll brings below the prefix, or one given to a
  future, is dropped (a resend after a recovery);
- the *read* prefix (:meth:`read_prefix`): what a poll or a request acknowledges (the
  actor drops the chunks before it), never a chunk a future's task has not taken yet.

A sync :meth:`~framework.Session.submit` gives an index to a future on the caller's
thread while polls run on the client's event loop: the indices given to futures are
kept under a lock.

Examples
--------
>>> from types import SimpleNamespace as C
>>> cursor = ReadCursor(0)
>>> cursor.issue(2), cursor.issue(1)          # a stream of two, then one for a future
(0, 2)
>>> cursor.own(2)
>>> cursor.receive([C(index=0), C(index=1), C(index=2)])  # a poll: index 2 went to the future
2
>>> cursor.take(0).index, cursor.take(1).index, cursor.read_prefix()
(0, 1, 2)
>>> cursor.attach(2, lambda: True)            # the future's task has taken its chunk
>>> cursor.read_prefix()
3
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any


class ReadCursor:
    """The index bookkeeping of one :class:`~framework.Session` handle (see the module's doc).

    Parameters
    ----------
    start : int
        The first index this handle reads (0 for a new session; an attached session's
        count of chunks made so far).
    """

    def __init__(self, start: int = 0) -> None:
        self.issued = start  # chunks asked for so far (request high-water mark)
        self.received = start  # every index below this arrived or was given to a future
        self.arrivals = 0  # chunks received by polls so far (a wait's sign of progress)
        self._buffer: dict[int, Any] = {}
        self._owned: set[int] = set()  # indices given to chunk futures (the stream skips them)
        self._pending: dict[int, Callable[[], bool]] = {}  # ...their done(), until their task finished
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<ReadCursor issued={self.issued} received={self.received} buffered={len(self._buffer)}>"

    def issue(self, n: int) -> int:
        """Hand out the next ``n`` indices; returns the first."""
        first = self.issued
        self.issued += n
        return first

    def own(self, index: int) -> None:
        """Give ``index`` to a chunk future: the stream skips it, and it is not acknowledged
        until :meth:`attach`'s probe says the future's task has taken it."""
        with self._lock:
            self._owned.add(index)
            self._pending[index] = _never

    def attach(self, index: int, done: Callable[[], bool]) -> None:
        """The future of ``index`` exists: ``done()`` says when its task has taken the chunk."""
        with self._lock:
            self._pending[index] = done

    def read_prefix(self) -> int:
        """The index before which every chunk is read: the stream's, or taken by a future's task."""
        self._advance()  # a reader that only submits polls no more: pass the futures' indices
        with self._lock:
            for index in [i for i, done in self._pending.items() if done()]:
                del self._pending[index]  # the task has taken its chunk (or the future is gone)
            return min(self.received, min(self._pending, default=self.received))

    def receive(self, chunks: Iterable[Any]) -> int:
        """Keep the chunks of a poll the stream has not had (by ``.index``); returns how many."""
        kept = 0
        for chunk in chunks:
            if chunk.index >= self.received and chunk.index not in self._owned:
                self._buffer[chunk.index] = chunk
                kept += 1
        self.arrivals += kept
        self._advance()
        return kept

    def has(self, index: int) -> bool:
        """Whether chunk ``index`` arrived and waits to be taken."""
        return index in self._buffer

    def take(self, index: int) -> Any:
        """Take chunk ``index`` out of the buffer (``KeyError`` if it has not arrived)."""
        return self._buffer.pop(index)

    def clear(self) -> None:
        """Drop the chunks not taken (the handle is closed)."""
        self._buffer.clear()

    def _advance(self) -> None:
        with self._lock:
            while self.received in self._buffer or self.received in self._owned:
                self._owned.discard(self.received)
                self.received += 1


def _never() -> bool:
    return False  # a future not made yet has not taken its chunk
