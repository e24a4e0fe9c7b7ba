"""Where a session's state comes from, for its actor (:class:`workers.session_actor.SessionActor`).

Every state of a session is made from its identity (``model``, ``prompt``, ``seed``) and
its frame size: **fresh** (a new session), **loaded** from the session's checkpoint and
verified to be this session's (a resume from disk, a recovery; prompt switches recorded
after that checkpoint are made again on it), or **pulled** from the
actor of a peer worker (a move: host-staged over Dask comms, or over a private
point-to-point group). And since generation is deterministic, any chunk can be
**replayed** from a fresh state with the session's prompt switches: a chunk whose future's
data died with its worker, the unread chunks a restored checkpoint was past.

:class:`StateSource` only makes states; it keeps nothing but the identity and the worker it
makes them on. The actor decides which source to use and when, records the events, and
keeps the chunks and the state it is given. :meth:`~StateSource.fresh`,
:meth:`~StateSource.load`, :meth:`~StateSource.to_device` and the ``replay`` methods do
device work and run on the engine thread (the actor hands them to ``engine.call``);
:meth:`~StateSource.pull` runs on the worker's event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from kernels.state import SessionState
from workers.access import TokenRPC
from workers.actor_rpc import BoundedRPC, call_actor
from workers.encryption import P2P_UNDER_TLS, encrypted
from workers.errors import TransferError

logger = logging.getLogger(__name__)


class StateSource:
    """The states of one session on one worker (see the module docstring).

    Parameters
    ----------
    session_id, model, prompt, seed, height, width
        The session's identity (``prompt``: the one it was opened with; later switches
        travel in the state, ``scalars["prompt.schedule"]``) and frame size.
    host
        The worker's :class:`workers.plugin.ModelHost`: its ``device``, the engine of
        ``model`` (``host.engine(model).model`` makes the states) and its checkpoint
        store (``host.checkpoints()``, None without one).
    worker
        The Dask worker (its ``address`` and ``rpc`` pool, for :meth:`pull`).

    Examples
    --------
    On a worker, as the actor does (the engine-thread methods through ``engine.call``):

    >>> source = StateSource("s1", "tiny", "a red fox", 0, None, None, host=host, worker=worker)  # doctest: +SKIP
    >>> state, event = source.load()  # the checkpoint if it is this session's, else fresh  # doctest: +SKIP
    >>> event["kind"] in ("started", "restored", "regenerated")  # doctest: +SKIP
    True
    """

    def __init__(self, session_id: str, model: str, prompt: str, seed: int, height: int | None,
                 width: int | None, *, host: Any, worker: Any = None) -> None:
        self.session_id = session_id
        self.model = model
        self.prompt = prompt
        self.seed = seed
        self.height = height
        self.width = width
        self._host = host
        self._worker = worker

    # ------------------------------------------------------------ engine thread

    def fresh(self, schedule: str | None = None) -> SessionState:
        """A new state at chunk 0; ``schedule`` (a state's ``scalars["prompt.schedule"]``): with those switches."""
        state = self._host.engine(self.model).model.new_session(self.prompt, self.seed, height=self.height,
                                                                 width=self.width)
        if schedule is not None:
            state.scalars["prompt.schedule"] = schedule
        return state

    def load(self) -> tuple[SessionState, dict[str, Any]]:
        """The session's checkpoint, verified to be this session's; else a new state, and why.

        Returns the state and the event that says where it came from (``kind``,
        ``from_chunk``, ``why``). A refused checkpoint (damaged, foreign, of another
        version) is never used, and is removed so that the next saves start on a clean
        folder: generation is deterministic, so starting over from chunk 0 regenerates
        the same chunks, and the event (``regenerated``, with the refusal's ``error``)
        says so and why.
        """
        from storage import CheckpointError, CheckpointIdentity, CheckpointNotFound

        store = self._host.checkpoints()
        if store is None:
            return self.fresh(), {"kind": "started", "from_chunk": 0,
                                  "why": "no checkpoint store (turboserve.state.store is null)"}
        expect = CheckpointIdentity.of(self.session_id, self.model, self.prompt, self.seed)
        try:
            state = store.load(self.session_id, model=self.model, device=self._host.device, expect=expect)
            event = {"kind": "restored", "from_chunk": state.chunk_index, "why": f"checkpoint in {store.url}"}
        except CheckpointNotFound:
            state = self.fresh()
            event = {"kind": "started", "from_chunk": 0, "why": f"no checkpoint of the session in {store.url}"}
        except CheckpointError as exc:
            logger.warning("session %s: %s; regenerating it from chunk 0", self.session_id, exc)
            try:
                store.discard(self.session_id)
            except Exception:
                logger.warning("session %s: could not remove the refused checkpoint", self.session_id, exc_info=True)
            state = self.fresh()
            event = {"kind": "regenerated", "from_chunk": 0, "why": str(exc), "error": type(exc).__name__}
        return self._catch_up(state, event, store.recorded_prompts(self.session_id))

    def _catch_up(self, state: SessionState, event: dict[str, Any],
                  recorded: str | None) -> tuple[SessionState, dict[str, Any]]:
        """Make the prompt switches recorded after ``state`` was saved (``CheckpointStore.record_prompts``).

        A switch is recorded when it is made; the state that holds it is saved only once
        the client has every chunk before it. When ``state`` (the last checkpoint, or a
        fresh one) lacks recorded switches, it is stepped to each of them and switched
        there, so the session goes on from the last switch as it would have; the chunks
        stepped over that the client has not read are made again by the actor from a
        fresh state with the whole schedule (its gap regeneration). The event's
        ``from_chunk`` says where generation goes on, ``switches`` which switches were
        made again and ``checkpoint_chunk`` where the loaded state was.
        """
        from kernels.model import prompt_schedule

        if recorded is None:
            return state, event
        have = [[int(k), str(p)] for k, p in prompt_schedule(state)]
        try:
            record = [[int(k), str(p)] for k, p in json.loads(recorded)]
        except (ValueError, TypeError):
            logger.warning("session %s: unreadable recorded prompt switches %r; ignored", self.session_id, recorded)
            return state, event
        if any(e not in record for e in have):
            logger.warning("session %s: the recorded prompt switches %s do not extend the state's %s; ignored",
                           self.session_id, record, have)
            return state, event
        pending = sorted((e for e in record if e not in have and e[0] >= state.chunk_index), key=lambda e: e[0])
        if not pending:
            return state, event
        loaded_at = state.chunk_index
        ks = [k for k, _ in pending]
        state, _ = self.advance(state, ks[-1], dict(pending))
        why = f"{event['why']}; the prompt switches at chunks {ks} recorded after it made again from chunk {loaded_at}"
        return state, {**event, "from_chunk": state.chunk_index, "checkpoint_chunk": loaded_at, "switches": ks,
                       "why": why}

    def to_device(self, state: SessionState) -> SessionState:
        """``state`` on this worker's device (a host copy: parked, or received over Dask comms)."""
        from storage import restore_to_device

        return restore_to_device(state, self._host.device)

    def replay(self, index: int, schedule: str | None) -> Any:
        """Frames of chunk ``index`` from a fresh state with the prompt switches ``schedule``."""
        return self._host.engine(self.model).model.replay(self.fresh(schedule), index)

    def replay_range(self, first: int, stop: int, schedule: str | None) -> list[Any]:
        """Frames of chunks ``first .. stop - 1`` from a fresh state with the prompt switches ``schedule``.

        :meth:`kernels.model.StreamingVideoModel.replay` for a range, in one pass.
        """
        from kernels.model import prompt_schedule

        # none at ``stop``: the state is dropped there, a switch would only re-cache its KV
        switches = {k: p for k, p in prompt_schedule(self.fresh(schedule)) if 0 < k < stop}
        return self.advance(self.fresh(), stop, switches, keep_from=first)[1]

    def advance(self, state: SessionState, stop: int, switches: dict[int, str],
                keep_from: int | None = None) -> tuple[SessionState, list[Any]]:
        """Step ``state`` to chunk ``stop``, switching to ``switches[k]`` before it makes chunk ``k``.

        A switch at ``stop`` itself is made too (the state goes on under it). Returns the
        state and the frames of the chunks from ``keep_from`` on (none when None).
        """
        model = self._host.engine(self.model).model
        frames = []
        while True:
            k = state.chunk_index
            if k in switches:
                state = model.set_prompt(state, switches[k])
            if k >= stop:
                return state, frames
            out = model.step([state])[0]
            if keep_from is not None and k >= keep_from:
                frames.append(out)

    # ------------------------------------------------------------ event loop

    async def pull(self, source: dict[str, Any]) -> tuple[SessionState, dict[str, Any], str]:
        """A copy of the state of the actor ``source["key"]`` on ``source["address"]``, on this device.

        Returns the state, the peer's export payload (its unread chunks and the rest,
        :meth:`workers.session_actor.SessionActor.export`) and the transport used
        (:meth:`_choose_transport`). The control plane's token rides in the source
        (``source["access_token"]``); the peer checks it. Any failure is a
        :class:`~workers.errors.TransferError` (the peer keeps its state).
        """
        peer = TokenRPC(BoundedRPC(self._worker.rpc, source["address"]), source.get("access_token"))
        try:
            transport = await self._choose_transport(peer, source)
            if transport == "p2p":
                payload = await call_actor(peer, source["key"], "export_p2p", self._host.device)
                state = await asyncio.to_thread(self._recv_p2p, payload["rendezvous"])
            else:
                payload = await call_actor(peer, source["key"], "export")
                engine = self._host.engine(self.model)
                state = await asyncio.wrap_future(engine.call(self.to_device, payload["state"].to_state()))
        except Exception as exc:
            raise TransferError(
                f"could not pull session {self.session_id!r} from {source['address']}: {exc!r}"
            ) from exc
        return state, payload, transport

    async def _choose_transport(self, peer: Any, source: dict[str, Any]) -> str:
        """``p2p`` (NCCL/gloo group of two) when asked, or when both ends are CUDA devices.

        On a TLS cluster always ``host`` (over Dask's encrypted comms): ``p2p`` is refused
        (:mod:`workers.encryption`).
        """
        transport = source.get("transport", "auto")
        if encrypted(self._worker.address):
            if transport == "p2p":
                raise TransferError(P2P_UNDER_TLS)
            return "host"
        if transport != "auto":
            return transport
        if not self._host.device.startswith("cuda"):
            return "host"
        info = await call_actor(peer, source["key"], "info")
        return "p2p" if str(info["device"]).startswith("cuda") else "host"

    def _recv_p2p(self, rendezvous: Any) -> SessionState:
        from workers.p2p import recv_state

        return recv_state(rendezvous=rendezvous, device=self._host.device, timeout=60)
