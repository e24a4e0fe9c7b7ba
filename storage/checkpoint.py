"""Session checkpoints on zarr (any fsspec URL): exact, verified, switched atomically.

Layout under the store root, one group per session::

    <session_id>/                 attrs: layout version, "current" -> generation name,
                                  model, chunk_index, nbytes (written last: the switch)
      c000008-1a2b3c4d/           one generation = one saved state
        kv.0.k, kv.0.v, ...       one uncompressed zarr array per tensor
                                  attrs (written after all arrays): the session's
                                  identity (id, model, prompt digest, seed), the state's
                                  meta (chunk index, scalars, shapes), a CRC-32C per
                                  tensor, and "digest": a SHA-256 seal over all of them
                                  and the generation's name; complete=true

A save writes a *new* generation, then its attributes (meta and checksums), then moves
the session's ``current`` pointer, then deletes older generations. A crash at any point
leaves either the previous checkpoint (still complete and pointed to) or a pointer to a
complete new one.

A load trusts nothing it has not verified: the metadata against its seal (a flipped
bit of the stored chunk index is caught), the pointer against the sealed metadata, the
identity against the session that asks (another session's checkpoint copied into this
session's folder is a :class:`CheckpointMismatch`), and shape, dtype and checksum of
every tensor, so damage after the fact is reported, never loaded.

Example
-------
>>> store = CheckpointStore("/tmp/turboserve-state")            # doctest: +SKIP
>>> info = store.save("s1", state)                              # doctest: +SKIP
>>> state2 = store.load("s1", model="tiny", device="cuda:0")    # doctest: +SKIP
>>> ident = CheckpointIdentity.of("s1", "tiny", "a red fox", 0)  # doctest: +SKIP
>>> state3 = store.load("s1", expect=ident)                     # doctest: +SKIP
"""

from __future__ import annotations

import functools
import logging
import os
import uuid
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import zarr
import zarr.codecs
from zarr.abc.store import Store

from kernels.state import STATE_FORMAT_VERSION, SessionState
from storage.errors import (
    CheckpointCorrupt,
    CheckpointFenced,
    CheckpointMismatch,
    CheckpointNotFound,
    CheckpointVersionError,
)
from storage.identity import CheckpointIdentity, prompt_digest, seal
from storage.tensors import (
    CHECKSUM,
    available_checksums,
    checksum,
    from_numpy,
    storage_dtype,
    to_numpy,
    torch_dtype,
)
from storage.zarr_store import (
    DEFAULT_CHUNK_BYTES,
    chunk_shape,
    open_root,
    open_store,
    read_array,
    require_group,
    write_arrays,
)

logger = logging.getLogger(__name__)

#: Version of the on-disk layout described in the module docstring (2: sealed metadata
#: and the session's identity; version 1 checkpoints are refused, then regenerated).
CHECKPOINT_LAYOUT_VERSION = 2
_LAYOUT_KEY = "turboserve_checkpoint"
#: Key of the session's pointer document that holds its owner's epoch (see ``claim``).
_EPOCH_KEY = "owner_epoch"
#: The session's prompt switches (JSON ``[[chunk, prompt], ...]``), recorded when they are
#: made, ahead of the checkpoint that holds the switched state (:meth:`CheckpointStore.record_prompts`).
_PROMPTS_KEY = "prompt_schedule"

Compression = Literal["zstd", "blosc"] | None


@dataclass(frozen=True, slots=True)
class CheckpointInfo:
    """What a saved checkpoint holds, read without loading its tensors.

    Attributes
    ----------
    session_id, model
        The session and the model preset that made the state.
    chunk_index
        Index of the next chunk the saved state will produce.
    nbytes
        Bytes of tensor data (uncompressed).
    generation
        Name of the stored generation (changes on every save).
    url
        The store the checkpoint lives in.
    """

    session_id: str
    model: str
    chunk_index: int
    nbytes: int
    generation: str
    url: str


def _model_name(model: object) -> str | None:
    """The model name of ``model``: a string as is, else its ``name`` attribute."""
    if model is None or isinstance(model, str):
        return model
    name = getattr(model, "name", None)
    if not isinstance(name, str):
        raise TypeError(f"model must be a preset name or an object with a str 'name' attribute, got {model!r}")
    return name


def _check_name(kind: str, name: str) -> None:
    if not isinstance(name, str) or not name or "/" in name or name.startswith("__") or name in (".", ".."):
        raise ValueError(
            f"{kind} {name!r} cannot name a zarr node: use a non-empty string without '/' or a leading '__'"
        )


class CheckpointStore:
    """Save and load :class:`SessionState` checkpoints in a zarr store.

    Parameters
    ----------
    url
        Root directory or fsspec URL of the store (created when absent).
    compression
        ``None`` (default: fastest, states are mostly incompressible floats),
        ``"zstd"`` or ``"blosc"``.
    chunk_bytes
        Target size of one stored chunk of a tensor.
    storage_options
        fsspec options for remote URLs.

    Notes
    -----
    One writer per session at a time: the session's owner, fenced by its ownership epoch
    (:meth:`claim`); readers may run anywhere.
    Calls block (zarr's synchronous API): from async code, run them in a thread
    (``await asyncio.to_thread(store.save, sid, state)``). A store pickles as its
    arguments, so it can be shipped to Dask workers.

    Examples
    --------
    >>> store = CheckpointStore(tmp_path / "ckpt")        # doctest: +SKIP
    >>> store.save("s1", state).chunk_index               # doctest: +SKIP
    3
    >>> store.load("s1", model="tiny").equal(state)       # doctest: +SKIP
    True
    """

    def __init__(
        self,
        url: str | os.PathLike[str],
        *,
        compression: Compression = None,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        if compression not in (None, "zstd", "blosc"):
            raise ValueError(f"compression {compression!r} is not one of None, 'zstd', 'blosc'")
        if chunk_bytes < 1:
            raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
        self.url = os.fspath(url)
        self.compression = compression
        self.chunk_bytes = chunk_bytes
        self.storage_options = storage_options
        self._store: Store = open_store(self.url, storage_options=storage_options)
        self._root = open_root(self._store)
        self._epochs: dict[str, int] = {}  # session id -> the epoch this process writes with

    def __repr__(self) -> str:
        return f"CheckpointStore({self.url!r}, compression={self.compression!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_store, (self.url, self.compression, self.chunk_bytes, self.storage_options))

    # ------------------------------------------------------------------ writing

    def save(self, session_id: str, state: SessionState) -> CheckpointInfo:
        """Write ``state`` as the session's checkpoint (replacing the previous one).

        Tensors may live on any device; they are copied to the host once. The previous
        checkpoint stays loadable until the new one is complete.
        """
        _check_name("session id", session_id)
        for name in state.tensors:
            _check_name("tensor name", name)
        epoch = self._epochs.get(session_id)
        session = require_group(self._root, session_id)
        self._check_owner(session_id, epoch)
        generation = f"c{state.chunk_index:06d}-{uuid.uuid4().hex[:8]}"
        group = session.create_group(generation)
        pairs = []
        for name, tensor in state.tensors.items():
            data = to_numpy(tensor)
            array = group.create_array(
                name,
                shape=data.shape,
                dtype=data.dtype,
                chunks=chunk_shape(data.shape, data.itemsize, self.chunk_bytes),
                compressors=self._compressors(),
                filters=None,
                fill_value=0,
                config={"write_empty_chunks": True},
            )
            pairs.append((array, data))
        # The checksums are computed in threads while the chunks are written.
        sums = write_arrays(pairs, [functools.partial(checksum, data, CHECKSUM) for _, data in pairs])
        checksums = {name: crc for name, crc in zip(state.tensors, sums)}
        sealed = {
            _LAYOUT_KEY: CHECKPOINT_LAYOUT_VERSION,
            "generation": generation,
            "session_id": session_id,
            "identity": CheckpointIdentity.of(session_id, state.model, state.prompt, state.seed).to_dict(),
            "state": state.meta(),
            "checksum": CHECKSUM,
            "checksums": checksums,
        }
        # The generation's attributes are its "complete" marker: written after all data.
        # One document write (zarr's ``attrs.update`` writes the document once per key).
        group.update_attributes({**sealed, "digest": seal(sealed), "complete": True})
        # A new owner may have claimed the session while the arrays were written.
        self._check_owner(session_id, epoch, drop=generation)
        # The switch: one metadata document, replaced atomically on a local store.
        pointer = {
            _LAYOUT_KEY: CHECKPOINT_LAYOUT_VERSION,
            "current": generation,
            "model": state.model,
            "chunk_index": state.chunk_index,
            "nbytes": state.nbytes,
        }
        if epoch is not None:
            pointer[_EPOCH_KEY] = epoch
        session.update_attributes(pointer)  # one document, one atomic write
        for old in [g for g in session.group_keys() if g != generation]:
            try:
                del session[old]
            except OSError as exc:  # e.g. a writer that died mid-save still had files there
                logger.warning("checkpoint of session %s: could not delete old generation %s (%r); "
                               "the next save retries", session_id, old, exc)
        return CheckpointInfo(session_id, state.model, state.chunk_index, state.nbytes, generation, self.url)

    # ------------------------------------------------------------------ ownership

    def claim(self, session_id: str, epoch: int) -> None:
        """Make this process the session's writer at ownership ``epoch`` (a fencing token).

        The epoch is recorded in the session's pointer document; from then on a save by
        any process that claimed a lower epoch is refused with :class:`CheckpointFenced`
        (checked before the arrays are written and again right before the pointer
        switch), so an owner that lost the session (its worker was declared dead, or
        it was migrated away) cannot overwrite its successor's checkpoint. Claiming an
        epoch lower than the recorded one raises :class:`CheckpointFenced`.

        The check and the switch are two operations on the store, not an atomic
        compare-and-swap: a claim that lands between them (microseconds on a local
        disk) is not seen by that one save, whose generation is then the checkpoint
        of an equal or earlier chunk of the same session, and the next save by the
        new owner replaces it.
        """
        _check_name("session id", session_id)
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
            raise ValueError(f"an ownership epoch is an int >= 1, got {epoch!r}")
        stored = self.owner_epoch(session_id)
        if stored is not None and stored > epoch:
            raise CheckpointFenced(
                f"session {session_id!r} in {self.url} is owned at epoch {stored}; "
                f"epoch {epoch} is stale (the session moved on; stop serving it here)"
            )
        require_group(self._root, session_id).update_attributes({_EPOCH_KEY: epoch})
        self._epochs[session_id] = epoch

    def owner_epoch(self, session_id: str) -> int | None:
        """The epoch of the session's owner recorded in the store (None: none recorded, or unreadable)."""
        _check_name("session id", session_id)
        try:
            value = self._root[session_id].attrs.get(_EPOCH_KEY)
        except Exception:  # no group, or a garbled pointer: no fence to read
            return None
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def _check_owner(self, session_id: str, epoch: int | None, drop: str | None = None) -> None:
        """Refuse a save by a writer whose epoch is older than the recorded one."""
        if epoch is None:
            return
        # A save queued before this process claimed a newer epoch (a source taking its
        # session back after a failed move) is still the owner's.
        epoch = max(epoch, self._epochs.get(session_id, epoch))
        stored = self.owner_epoch(session_id)
        if stored is not None and stored > epoch:
            if drop is not None:
                try:
                    del self._root[session_id][drop]
                except Exception:
                    pass  # the new owner's next save deletes it
            raise CheckpointFenced(
                f"checkpoint of session {session_id!r} in {self.url}: this writer's epoch {epoch} is "
                f"older than the owner's {stored}; the session is served elsewhere now, not saved"
            )

    def delete(self, session_id: str, *, fence: int | None = None) -> bool:
        """Remove the session's checkpoint; ``False`` if there was none.

        With ``fence`` (an epoch above any owner's), the session's folder stays as a
        tombstone holding only that epoch, so a save still queued by its last owner
        is refused instead of bringing the closed session's checkpoint back.
        """
        _check_name("session id", session_id)
        if session_id not in self._root.group_keys():
            return False
        if fence is None:
            del self._root[session_id]
            return True
        self.claim(session_id, fence)
        session = self._root[session_id]
        for generation in list(session.group_keys()):
            try:
                del session[generation]
            except OSError:  # a fenced writer's files vanish under it, or it removes its own
                pass
        session.attrs.put({_EPOCH_KEY: fence})
        return True

    def discard(self, session_id: str) -> None:
        """Remove whatever is stored under the session's folder, readable or not (a refused checkpoint).

        Keeps the recorded ownership epoch and prompt switches when they can still be
        read, so the fence stays and a regeneration from chunk 0 switches where the
        session did.
        """
        _check_name("session id", session_id)
        keep = {k: v for k, v in ((_EPOCH_KEY, self.owner_epoch(session_id)),
                                  (_PROMPTS_KEY, self.recorded_prompts(session_id))) if v is not None}
        zarr.core.sync.sync(self._store.delete_dir(session_id))
        if keep:
            require_group(self._root, session_id).update_attributes(keep)

    def record_prompts(self, session_id: str, schedule: str) -> None:
        """Record the session's prompt switches now, before a checkpoint holds them.

        ``schedule``: a state's ``scalars["prompt.schedule"]`` (JSON ``[[chunk, prompt],
        ...]``, every switch so far). A switched state is checkpointed only once the
        client holds every chunk before the switch; a worker that dies before that save
        is written would otherwise take the switch with it, and the recovered session
        would go on with the old prompt. :meth:`recorded_prompts` reads it back. One
        small attribute write; refused like a save for a writer whose epoch is stale
        (:class:`CheckpointFenced`).
        """
        _check_name("session id", session_id)
        self._check_owner(session_id, self._epochs.get(session_id))
        require_group(self._root, session_id).update_attributes({_PROMPTS_KEY: str(schedule)})

    def recorded_prompts(self, session_id: str) -> str | None:
        """The prompt switches :meth:`record_prompts` recorded for the session (None: none, or unreadable)."""
        _check_name("session id", session_id)
        try:
            value = self._root[session_id].attrs.get(_PROMPTS_KEY)
        except Exception:  # no group, or a garbled document: nothing recorded
            return None
        return value if isinstance(value, str) else None

    # ------------------------------------------------------------------ reading

    def exists(self, session_id: str) -> bool:
        """Whether a checkpoint is recorded for the session (its data is not verified)."""
        _check_name("session id", session_id)
        try:
            return "current" in self._session_attrs(session_id)
        except CheckpointNotFound:
            return False

    def list(self) -> list[str]:
        """Session ids with a recorded checkpoint, sorted."""
        return sorted(name for name, group in self._root.groups() if "current" in group.attrs)

    def info(self, session_id: str) -> CheckpointInfo:
        """Describe the session's checkpoint without reading its tensors.

        This reads the session's pointer only, which :meth:`load` verifies against the
        sealed metadata of the generation: a damaged pointer is caught there, not here.

        Raises
        ------
        CheckpointNotFound, CheckpointVersionError
        """
        attrs = self._session_attrs(session_id)
        if "current" not in attrs:
            raise CheckpointNotFound(
                f"session {session_id!r} has no complete checkpoint in {self.url} (a first save was interrupted)"
            )
        self._check_layout(session_id, attrs)
        try:
            current = attrs["current"]
            _check_name("generation", current)
            return CheckpointInfo(
                session_id, str(attrs["model"]), int(attrs["chunk_index"]), int(attrs["nbytes"]), current, self.url
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointCorrupt(
                f"checkpoint of session {session_id!r} in {self.url} has a damaged pointer ({exc!r})"
            ) from None

    def latest_chunk(self, session_id: str) -> int:
        """Chunk index the session's checkpoint resumes at (raises :class:`CheckpointNotFound`)."""
        return self.info(session_id).chunk_index

    def load(
        self,
        session_id: str,
        *,
        model: object = None,
        device: str | torch.device = "cpu",
        expect: CheckpointIdentity | None = None,
    ) -> SessionState:
        """Read, verify and return the session's checkpointed state.

        Parameters
        ----------
        session_id
            The session.
        model
            The model that will run the state (a preset name or an object with a
            ``name``); when given, a checkpoint of another model is refused.
        device
            Where the returned tensors live.
        expect
            The identity of the session that asks (:meth:`CheckpointIdentity.of` its
            id, model, prompt and seed); when given, a checkpoint of any other session,
            model, prompt or seed is refused. Without it, the stored identity must
            still name ``session_id``.

        Raises
        ------
        CheckpointNotFound
            No checkpoint for the session.
        CheckpointMismatch
            It holds another session's state, or was made by another model, prompt or seed.
        CheckpointVersionError
            Its layout or state format is not the one this code reads.
        CheckpointCorrupt
            Its metadata fails its seal or disagrees with the pointer; an array is
            missing, truncated, of the wrong shape or dtype, or fails its checksum.
        """
        info = self.info(session_id)
        where = f"checkpoint of session {session_id!r} in {self.url}"
        session = self._root[session_id]
        try:
            group = session[info.generation]
            if not isinstance(group, zarr.Group):
                raise TypeError(f"{info.generation!r} is an array, not a generation group")
            attrs = group.attrs.asdict()
        except KeyError:
            raise CheckpointCorrupt(f"{where} points to generation {info.generation!r}, which is missing") from None
        except Exception as exc:  # zarr raises various types for a garbled metadata document
            raise CheckpointCorrupt(
                f"{where}: metadata of generation {info.generation!r} cannot be read: {exc!r}"
            ) from exc
        if not attrs.get("complete"):
            raise CheckpointCorrupt(f"{where}: generation {info.generation!r} was never completed")
        self._check_layout(session_id, attrs)
        meta = attrs.get("state")
        if not isinstance(meta, dict):
            raise CheckpointCorrupt(f"{where}: generation {info.generation!r} has no state metadata")
        if meta.get("format_version") != STATE_FORMAT_VERSION:
            raise CheckpointVersionError(
                f"{where} has state format version {meta.get('format_version')}, this code reads "
                f"version {STATE_FORMAT_VERSION}; regenerate the session from (model, prompt, seed)"
            )
        algorithm = attrs.get("checksum", "crc32")
        if algorithm not in available_checksums():
            raise CheckpointVersionError(
                f"{where} uses checksum {algorithm!r}; this installation computes {available_checksums()} "
                "(pip install google-crc32c for 'crc32c')"
            )
        stored = self._verify_metadata(session_id, info, attrs, where)
        wanted = _model_name(model)
        if wanted is not None and meta["model"] != wanted:
            raise CheckpointMismatch(
                f"checkpoint of session {session_id!r} was made by model {meta['model']!r}, this worker runs {wanted!r}"
            )
        if expect is not None and (diff := stored.differences(expect)):
            raise CheckpointMismatch(
                f"{where} belongs to another session: {'; '.join(diff)}; refusing it "
                "(the session regenerates from its prompt and seed instead)"
            )
        tensors = {
            name: self._read_tensor(group, name, spec, attrs["checksums"], algorithm, where)
            for name, spec in meta["tensors"].items()
        }
        state = SessionState.from_meta(meta, tensors)
        return state if torch.device(device).type == "cpu" else state.to(device)

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _verify_metadata(
        session_id: str, info: CheckpointInfo, attrs: dict[str, Any], where: str
    ) -> CheckpointIdentity:
        """Check the generation's seal, then the pointer and identity against it."""
        sealed = {k: v for k, v in attrs.items() if k not in ("digest", "complete")}
        if attrs.get("digest") != seal(sealed):
            raise CheckpointCorrupt(
                f"{where}: the metadata of generation {info.generation!r} fails its digest "
                "(changed on disk after the save: chunk index, seed, identity or checksums)"
            )
        meta = attrs["state"]
        try:
            stored = CheckpointIdentity.from_dict(attrs.get("identity"))
        except ValueError as exc:
            raise CheckpointCorrupt(f"{where}: {exc}") from None
        own = (meta.get("model"), prompt_digest(str(meta.get("prompt"))), meta.get("seed"))
        if (stored.model, stored.prompt_digest, stored.seed) != own:
            raise CheckpointCorrupt(f"{where}: the stored identity {stored} disagrees with the state it seals")
        if stored.session_id != session_id or attrs.get("session_id") != session_id:
            raise CheckpointMismatch(
                f"{where} holds the state of session {stored.session_id!r} (copied or moved into this "
                "session's folder); refusing it"
            )
        if attrs.get("generation") != info.generation:
            raise CheckpointCorrupt(
                f"{where}: the pointer names generation {info.generation!r}, whose sealed name is "
                f"{attrs.get('generation')!r} (copied from elsewhere)"
            )
        chunk = meta.get("chunk_index")
        try:
            nbytes = sum(
                int(np.prod(spec["shape"], dtype=np.int64)) * storage_dtype(torch_dtype(spec["dtype"])).itemsize
                for spec in meta["tensors"].values()
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CheckpointCorrupt(f"{where}: the sealed tensor list cannot be read ({exc!r})") from None
        if nbytes != info.nbytes:
            raise CheckpointCorrupt(
                f"{where}: the pointer says {info.nbytes} bytes, the sealed generation holds {nbytes}"
            )
        if chunk != info.chunk_index or info.model != meta.get("model") or not info.generation.startswith(
            f"c{chunk:06d}-" if isinstance(chunk, int) else "\0"
        ):
            raise CheckpointCorrupt(
                f"{where}: the pointer says chunk {info.chunk_index} of model {info.model!r}, the sealed "
                f"generation {info.generation!r} holds chunk {chunk} of model {meta.get('model')!r}"
            )
        return stored

    def _compressors(self) -> Any:
        if self.compression == "zstd":
            return [zarr.codecs.ZstdCodec(level=1)]
        if self.compression == "blosc":
            return [zarr.codecs.BloscCodec(cname="lz4", clevel=5)]
        return None

    def _session_attrs(self, session_id: str) -> dict[str, Any]:
        _check_name("session id", session_id)
        try:
            session = self._root[session_id]
        except KeyError:
            raise CheckpointNotFound(f"no checkpoint of session {session_id!r} in {self.url}") from None
        except Exception as exc:  # zarr raises various types for a garbled metadata document
            raise CheckpointCorrupt(
                f"checkpoint of session {session_id!r} in {self.url} cannot be read: {exc!r}"
            ) from exc
        if not isinstance(session, zarr.Group):
            raise CheckpointCorrupt(f"{session_id!r} in {self.url} is an array, not a checkpoint group")
        attrs = session.attrs.asdict()
        if not isinstance(attrs, dict):
            raise CheckpointCorrupt(f"checkpoint of session {session_id!r} in {self.url} has no attribute map")
        return attrs

    def _check_layout(self, session_id: str, attrs: dict[str, Any]) -> None:
        version = attrs.get(_LAYOUT_KEY)
        if version != CHECKPOINT_LAYOUT_VERSION:
            raise CheckpointVersionError(
                f"checkpoint of session {session_id!r} in {self.url} has layout version {version!r}, "
                f"this code reads version {CHECKPOINT_LAYOUT_VERSION}"
            )

    @staticmethod
    def _read_tensor(
        group: zarr.Group, name: str, spec: dict[str, Any], checksums: dict[str, int], algorithm: str, where: str
    ) -> torch.Tensor:
        dtype = torch_dtype(spec["dtype"])
        shape = tuple(spec["shape"])
        try:
            array = group[name]
        except KeyError:
            raise CheckpointCorrupt(f"{where}: array {name!r} is missing") from None
        except Exception as exc:  # zarr raises various types for a garbled metadata document
            raise CheckpointCorrupt(f"{where}: metadata of array {name!r} cannot be read: {exc!r}") from exc
        expected_dtype = storage_dtype(dtype)
        if tuple(array.shape) != shape or np.dtype(array.dtype) != expected_dtype:
            raise CheckpointCorrupt(
                f"{where}: array {name!r} has shape {tuple(array.shape)} and dtype {array.dtype}, "
                f"the state says {shape} and {expected_dtype}"
            )
        try:
            data = read_array(array, missing_chunks="error")
        except Exception as exc:  # zarr raises various types for truncated or garbled chunks
            raise CheckpointCorrupt(f"{where}: array {name!r} cannot be read ({type(exc).__name__}: {exc})") from exc
        if checksum(data, algorithm) != checksums.get(name):
            raise CheckpointCorrupt(f"{where}: array {name!r} fails its checksum (data changed or truncated on disk)")
        return from_numpy(data, dtype)


def _rebuild_store(
    url: str, compression: Compression, chunk_bytes: int, storage_options: dict[str, Any] | None
) -> CheckpointStore:
    return CheckpointStore(url, compression=compression, chunk_bytes=chunk_bytes, storage_options=storage_options)


__all__ = ["CHECKPOINT_LAYOUT_VERSION", "CheckpointIdentity", "CheckpointInfo", "CheckpointStore"]
