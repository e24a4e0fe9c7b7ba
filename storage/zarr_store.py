"""zarr v3 plumbing: open a store from a path or fsspec URL, size chunks, move bytes fast.

Local paths (and ``file://`` URLs) get zarr's :class:`~zarr.storage.LocalStore`, which
writes every key through a temporary file and a rename, so a metadata document is
either the old or the new one, never half written (there is no fsync: after a power
loss, checksums are what catch data that never reached the disk). Other URLs
(``s3://``, ``gs://``, ``memory://``, ...) go through :class:`~zarr.storage.FsspecStore`.

:func:`write_arrays` and :func:`read_array` move uncompressed arrays chunk by chunk
between the tensor's memory and the store without zarr's staging copies; the arrays
they write are ordinary zarr arrays, and they fall back to zarr's own codec pipeline
for anything else (compression, big-endian hosts).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import numpy as np
import zarr
from zarr.abc.store import Store
from zarr.codecs import BytesCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.errors import ContainsGroupError
from zarr.storage import FsspecStore, LocalStore

#: Default size of one stored chunk: large enough that per-file overhead vanishes for
#: GiB states, small enough that zarr writes several chunks of one tensor in parallel.
DEFAULT_CHUNK_BYTES = 32 * 2**20


def open_store(url: str | os.PathLike[str], *, storage_options: dict[str, Any] | None = None) -> Store:
    """A zarr store rooted at ``url`` (a directory path or an fsspec URL).

    Parameters
    ----------
    url
        ``"path/to/dir"``, ``"file:///abs/dir"``, ``"memory://name"``, ``"s3://bucket/key"``...
    storage_options
        Passed to fsspec for remote URLs (credentials, endpoint); ignored for local paths.
    """
    text = os.fspath(url)
    if "://" not in text or text.startswith("file://"):
        path = text.removeprefix("file://")
        os.makedirs(path, exist_ok=True)
        return LocalStore(path)
    return FsspecStore.from_url(text, storage_options=storage_options or {})


def open_root(store: Store) -> zarr.Group:
    """The root group of ``store``, created when absent (zarr format 3)."""
    return zarr.open_group(store=store, mode="a", zarr_format=3)


def require_group(parent: zarr.Group, name: str) -> zarr.Group:
    """``parent.require_group(name)`` that also holds when another writer creates it meanwhile.

    zarr's ``require_group`` looks, then creates: two writers that both find no group
    ``name`` (two sessions opened at the same instant and the index's ``__sessions__``
    group; a session's first checkpoint and its new owner's claim) both create it, and
    the second creation raises ``ContainsGroupError``. The group then exists: open it.
    """
    try:
        return parent.require_group(name)
    except ContainsGroupError:
        return parent[name]


def chunk_shape(shape: tuple[int, ...], itemsize: int, target_bytes: int = DEFAULT_CHUNK_BYTES) -> tuple[int, ...]:
    """A chunk shape of at most about ``target_bytes`` that splits the leading axes first.

    Trailing axes are kept whole while they fit, so a chunk is one contiguous run of
    the C-ordered tensor and writing it needs no gather.
    """
    chunks = [max(1, n) for n in shape]
    inner = itemsize
    for axis in reversed(range(len(shape))):
        n = chunks[axis]
        if inner * n <= target_bytes:
            inner *= n
            continue
        chunks[axis] = max(1, target_bytes // inner)
        for outer in range(axis):
            chunks[outer] = 1
        break
    return tuple(chunks)


class ChunkError(ValueError):
    """A chunk file of an array is missing or of the wrong size."""


def _chunk_regions(array: zarr.Array) -> Iterator[tuple[str, tuple[slice, ...]]]:
    """``(store key, region of the array)`` of every chunk."""
    chunks = array.chunks
    prefix = f"{array.store_path.path}/" if array.store_path.path else ""
    if array.ndim == 0:
        yield prefix + array.metadata.encode_chunk_key(()), ()
        return
    grid = tuple(-(-n // c) for n, c in zip(array.shape, chunks))
    for coords in np.ndindex(*grid):
        yield prefix + array.metadata.encode_chunk_key(coords), tuple(
            slice(i * c, (i + 1) * c) for i, c in zip(coords, chunks)
        )


def _is_plain_little_endian(array: zarr.Array) -> bool:
    codecs = array.metadata.codecs
    return (
        sys.byteorder == "little"
        and len(codecs) == 1
        and isinstance(codecs[0], BytesCodec)
        and (codecs[0].endian is None or codecs[0].endian.value == "little")
    )


def _chunk_payloads(array: zarr.Array, data: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
    """``(store key, 1-D uint8 bytes)`` of every chunk; views of ``data`` except edge chunks."""
    for key, region in _chunk_regions(array):
        part = data[region] if region else data
        if part.shape != array.chunks:
            # Edge chunk: zarr stores it padded to the full chunk shape.
            padded = np.zeros(array.chunks, dtype=data.dtype)
            padded[tuple(slice(0, n) for n in part.shape)] = part
            part = padded
        elif not part.flags.c_contiguous:
            part = np.ascontiguousarray(part)
        yield key, part.reshape(-1).view(np.uint8)


def write_arrays(
    pairs: Sequence[tuple[zarr.Array, np.ndarray]], side_jobs: Sequence[Callable[[], Any]] = ()
) -> list[Any]:
    """Write each array's full contents, and run ``side_jobs`` in threads meanwhile.

    Uncompressed little-endian arrays are written chunk by chunk straight from the
    source memory (no staging copy, except for padded edge chunks), all chunks of
    all arrays concurrently (bounded by ``zarr.config["async.concurrency"]``); other
    arrays go through zarr's own codec pipeline. Returns the side jobs' results.
    """
    direct = [(a, d) for a, d in pairs if _is_plain_little_endian(a)]
    for array, data in pairs:
        if not _is_plain_little_endian(array):
            array[...] = data
    prototype = default_buffer_prototype()

    async def run() -> list[Any]:
        limit = asyncio.Semaphore(int(zarr.config.get("async.concurrency") or 10))

        async def put(store: Store, key: str, payload: np.ndarray) -> None:
            async with limit:
                await store.set(key, prototype.buffer.from_array_like(payload))

        writes = [
            put(array.store_path.store, key, payload)
            for array, data in direct
            for key, payload in _chunk_payloads(array, data)
        ]
        jobs = [asyncio.to_thread(job) for job in side_jobs]
        results = await asyncio.gather(*jobs, *writes)
        return list(results[: len(jobs)])

    return sync(run())


def read_array(array: zarr.Array, *, missing_chunks: Literal["fill", "error"] = "fill") -> np.ndarray:
    """The whole array, read straight into one fresh buffer where the layout allows.

    Uncompressed little-endian arrays on a local store are read with ``readinto``
    into the result (one copy from the page cache, none through ``bytes``); others
    go through zarr. ``missing_chunks="error"`` raises :class:`ChunkError` for a
    missing chunk file instead of filling it with the fill value (on the direct path).
    """
    store = array.store_path.store
    if not (isinstance(store, LocalStore) and _is_plain_little_endian(array)):
        return array[...]
    out = np.empty(array.shape, dtype=array.dtype)
    if out.size == 0:
        return out
    chunks = array.chunks
    for key, region in _chunk_regions(array):
        target = out[region] if region else out
        staged = target.shape != chunks or not target.flags.c_contiguous
        buffer = np.empty(chunks, dtype=out.dtype) if staged else target
        raw = buffer.reshape(-1).view(np.uint8)
        try:
            with open(store.root / key, "rb") as f:
                n = f.readinto(raw)
                extra = f.read(1)
        except FileNotFoundError:
            if missing_chunks == "error":
                raise ChunkError(f"chunk file {key!r} is missing") from None
            target[...] = array.fill_value
            continue
        if n != raw.nbytes or extra:
            raise ChunkError(
                f"chunk file {key!r} holds {n if not extra else 'more than ' + str(n)} bytes, expected {raw.nbytes}"
            )
        if staged:
            target[...] = buffer[tuple(slice(0, s) for s in target.shape)]
    return out
