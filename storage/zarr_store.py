"""Open a zarr v3 store from a local path or any fsspec URL, and size array chunks.

Local paths (and ``file://`` URLs) get zarr's :class:`~zarr.storage.LocalStore`, which
writes every key through a temporary file and a rename, so a metadata document is
either the old or the new one, never half written. Other URLs (``s3://``,
``gs://``, ``memory://``, ...) go through :class:`~zarr.storage.FsspecStore`.
"""

from __future__ import annotations

import os
from typing import Any

import zarr
from zarr.abc.store import Store
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


