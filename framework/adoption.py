"""Sessions that outlive their scheduler: recorded in the checkpoint store, adopted by the next one.

The scheduler plugin writes one document per open session into the store's
:class:`~storage.session_index.SessionIndex` (:func:`document`, at ``open``) and removes
it at ``close``. A scheduler that starts on a store holding documents (the previous one
died, or its cluster was shut down with sessions open) registers those sessions with
:func:`adopt`: suspended to disk, at the chunk of their last checkpoint, at the ownership
epoch the store records, owned by the same access token. The first call that wants
chunks (a stream of a handle the owner gets back with ``server.session(id,
access_token=...)``) resumes it from that checkpoint on a worker; generation is
deterministic, so the chunks after it are the frames an undisturbed run makes. What is
lost is listed in ``docs/RELIABILITY.md`` ("A new scheduler adopts the sessions ...").

:func:`document` and :func:`adopt` are plain functions over plain records whose store calls
block; :class:`OpenSessions` is what the scheduler plugin holds: the index of its store,
written at open and close and read at start, in a thread, a failure logged (the session
serves on; only its adoption after a scheduler loss is at stake).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from framework.registry import SessionRecord
from kernels.presets import get_preset
from policies.types import SessionStatus
from storage.errors import CheckpointError

logger = logging.getLogger(__name__)


def document(rec: SessionRecord) -> dict[str, Any]:
    """What a new scheduler needs to adopt ``rec`` (plain JSON values; no token, only its digest)."""
    return {
        "session_id": rec.session_id, "model": rec.model, "prompt": rec.prompt, "seed": int(rec.seed),
        "height": int(rec.height), "width": int(rec.width), "access_digest": rec.access_digest,
        "created_s": float(rec.created_s),
    }


def adopt(index: Any, store: Any, fps: float, known: Any = ()) -> list[SessionRecord]:
    """Records of the sessions ``index`` holds that are not in ``known``, suspended to disk in ``store``.

    Parameters
    ----------
    index : storage.session_index.SessionIndex
    store : storage.CheckpointStore
        Where their checkpoints are: the chunk a record resumes at is the checkpoint's
        (0 when none is readable: the actor then regenerates from chunk 0, and says so).
    fps : float
        Playback rate (the records' chunk period).
    known
        Session ids already registered (skipped).
    """
    now = time.time()
    records = []
    for doc in index.documents():
        sid = str(doc["session_id"])
        if sid in known:
            continue
        try:
            preset = get_preset(str(doc["model"]))
        except ValueError as exc:  # a document from another version of the presets: not adoptable here
            logger.warning("session %s in %s names model %r: not adopted (%r)", sid, store.url, doc["model"], exc)
            continue
        try:
            chunk = int(store.latest_chunk(sid))
        except (CheckpointError, ValueError):  # no complete checkpoint yet, or a damaged pointer: the load decides
            chunk = 0
        epoch = int(store.owner_epoch(sid) or 0)  # None when none is recorded or readable
        rec = SessionRecord(
            session_id=sid, model=preset.name, prompt=str(doc["prompt"]), seed=int(doc["seed"]),
            height=int(doc.get("height") or preset.default_height), width=int(doc.get("width") or preset.default_width),
            status=SessionStatus.SUSPENDED, tier="disk", chunks=chunk, generation=epoch,
            since_s=now, created_s=float(doc.get("created_s") or now),
            chunk_period_s=preset.frames_per_chunk / fps, access_digest=str(doc.get("access_digest") or ""),
        )
        rec.note("adopted", from_chunk=chunk, why=f"a new scheduler found it open in {store.url}")
        records.append(rec)
    return records


class OpenSessions:
    """The scheduler plugin's record of its open sessions in the store at ``url``.

    :meth:`adopt` (at the plugin's start) opens the store's
    :class:`~storage.session_index.SessionIndex` and returns the sessions a previous
    scheduler left open; :meth:`put` (at open) and :meth:`remove` (at close) keep it.
    Every call runs in a thread; a failure is logged and changes nothing else (a
    put or remove before a successful :meth:`adopt` is skipped: no index is open).
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.index: Any = None  # the SessionIndex, once adopt() opened it

    async def adopt(self, fps: float, known: Any = ()) -> list[SessionRecord]:
        """The records of the sessions a previous scheduler left open (see :func:`adopt`); none on a failure."""
        from storage import CheckpointStore
        from storage.session_index import SessionIndex

        def read() -> list[SessionRecord]:
            self.index = SessionIndex(self.url)
            return adopt(self.index, CheckpointStore(self.url), fps, known)

        try:
            return await asyncio.to_thread(read)
        except Exception:
            logger.warning("could not read the open sessions recorded in %s; none adopted", self.url, exc_info=True)
            return []

    async def put(self, rec: SessionRecord) -> None:
        """Record an opened session, for a scheduler that comes after this one."""
        if self.index is None:
            return
        try:
            await asyncio.to_thread(self.index.put, document(rec))
        except Exception:
            logger.warning("could not record session %s in %s: a new scheduler would not adopt it",
                           rec.session_id, self.index, exc_info=True)

    async def remove(self, session_id: str) -> None:
        """Forget a closed session: a new scheduler must not bring it back."""
        if self.index is None:
            return
        try:
            await asyncio.to_thread(self.index.remove, session_id)
        except Exception:
            logger.warning("could not remove session %s from %s", session_id, self.index, exc_info=True)
