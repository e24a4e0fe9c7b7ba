"""A session's video as an xarray Dataset on zarr, appended chunk by chunk.

One zarr group per session (under any fsspec URL) holds::

    frames  (frame, y, x, channel)  uint8    zarr chunk = one video chunk
    chunk   (frame,)                int64    the video chunk each frame belongs to

with attributes ``session``, ``model``, ``fps``, ``height``, ``width``. The ``chunk``
coordinate makes appends idempotent: recovery may regenerate chunk ``k`` after a crash,
and appending it again is a no-op instead of a duplicate.

Example
-------
>>> video = VideoStore("/tmp/videos", "s1", model="tiny", fps=16, height=64, width=64)  # doctest: +SKIP
>>> video.append(frames, chunk_index=0)                                              # doctest: +SKIP
True
>>> video.open().frames.shape                                                        # doctest: +SKIP
(12, 64, 64, 3)
>>> video.to_video("s1.gif")                                                         # doctest: +SKIP
"""

from __future__ import annotations

import os
import pathlib
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from storage.errors import VideoStoreError
from storage.zarr_store import open_root, open_store

if TYPE_CHECKING:  # xarray loads on first use: workers that only checkpoint skip it
    import xarray as xr

DIMS = ("frame", "y", "x", "channel")
_IDENTITY = ("session", "model", "fps", "height", "width")


class VideoStore:
    """Frames of one session, stored as an xarray Dataset on zarr.

    Parameters
    ----------
    url
        Root directory or fsspec URL (shared by many sessions: one group each).
    session_id
        The session (the group name).
    model, fps, height, width
        Recorded as attributes; reopening an existing store with other values is refused.
    storage_options
        fsspec options for remote URLs.
    """

    def __init__(
        self,
        url: str | os.PathLike[str],
        session_id: str,
        *,
        model: str,
        fps: int,
        height: int,
        width: int,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        if not session_id or "/" in session_id or session_id.startswith("__"):
            raise ValueError(f"session id {session_id!r} cannot name a zarr group: use a non-empty string without '/'")
        for name, value in (("fps", fps), ("height", height), ("width", width)):
            if int(value) <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.url = os.fspath(url)
        self.session_id = session_id
        self.attrs: dict[str, Any] = {
            "session": session_id,
            "model": model,
            "fps": int(fps),
            "height": int(height),
            "width": int(width),
        }
        self.storage_options = storage_options
        self._store = open_store(self.url, storage_options=storage_options)
        self._root = open_root(self._store)
        if self._exists():
            self._check_identity()

    def __repr__(self) -> str:
        return f"VideoStore({self.url!r}, {self.session_id!r}, chunks={len(self.chunk_indices())})"

    def __reduce__(self) -> tuple[Any, ...]:
        a = self.attrs
        return (
            _rebuild_video,
            (self.url, self.session_id, a["model"], a["fps"], a["height"], a["width"], self.storage_options),
        )

    # ------------------------------------------------------------------ writing

    def append(self, frames: np.ndarray, *, chunk_index: int) -> bool:
        """Append one chunk of frames ``(T, height, width, 3)`` uint8.

        Returns
        -------
        bool
            ``True`` if written, ``False`` if chunk ``chunk_index`` was already stored
            (a regenerated chunk after recovery: nothing is duplicated).

        Raises
        ------
        VideoStoreError
            Wrong shape or dtype, or a gap: chunks must arrive in order 0, 1, 2, ...
        """
        frames = np.asarray(frames)
        expected = ("T", self.attrs["height"], self.attrs["width"], 3)
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[1:] != expected[1:] or frames.shape[0] == 0:
            raise VideoStoreError(
                f"session {self.session_id!r}: chunk {chunk_index} has shape {frames.shape} dtype {frames.dtype}, "
                f"expected {expected} uint8 with T >= 1"
            )
        stored = self.chunk_indices()
        if chunk_index in stored:
            return False
        following = stored[-1] + 1 if stored else 0
        if chunk_index != following:
            have = f"chunks {stored[0]}..{stored[-1]}" if stored else "no chunks"
            raise VideoStoreError(
                f"session {self.session_id!r}: chunk {chunk_index} appended after {have}; "
                f"chunks must be appended in order, the next one is {following}"
            )
        import xarray as xr

        ds = xr.Dataset(
            {"frames": (DIMS, frames)},
            coords={"chunk": ("frame", np.full(frames.shape[0], chunk_index, dtype=np.int64))},
            attrs=self.attrs,
        )
        if self._exists():
            ds.to_zarr(self._store, group=self.session_id, append_dim="frame", consolidated=False)
        else:  # also replaces a group left empty by a first append that was cut off
            ds.to_zarr(
                self._store,
                group=self.session_id,
                mode="w",
                zarr_format=3,
                consolidated=False,
                encoding={"frames": {"chunks": frames.shape}},
            )
        return True

    # ------------------------------------------------------------------ reading

    def chunk_indices(self) -> list[int]:
        """Indices of the stored chunks, in order (empty before the first append)."""
        if not self._exists():
            return []
        group = self._group()
        labels = group["chunk"][...]
        n_frames = group["frames"].shape[0]
        if len(labels) != n_frames:
            labels = self._repair(group, labels, n_frames)
        return sorted(set(int(k) for k in np.unique(labels)))

    @property
    def n_frames(self) -> int:
        """Number of stored frames."""
        return int(self._group()["frames"].shape[0]) if self._exists() else 0

    def open(self) -> xr.Dataset:
        """The stored video as a lazily loaded :class:`xarray.Dataset`."""
        if not self._exists():
            raise VideoStoreError(f"session {self.session_id!r} has no frames in {self.url} yet")
        import xarray as xr

        self.chunk_indices()  # repairs an append cut off between its two arrays
        return xr.open_zarr(self._store, group=self.session_id, consolidated=False)

    def read_chunk(self, chunk_index: int) -> np.ndarray:
        """The frames of one stored chunk, ``(T, height, width, 3)`` uint8."""
        ds = self.open()
        mask = ds["chunk"].values == chunk_index
        if not mask.any():
            raise VideoStoreError(
                f"session {self.session_id!r} has no chunk {chunk_index}; stored: {self.chunk_indices()}"
            )
        return ds["frames"].values[mask]

    def to_video(self, path: str | os.PathLike[str], *, fps: int | None = None) -> pathlib.Path:
        """Write the stored frames to ``path``: ``.mp4`` (H.264), ``.webm`` (VP9) or ``.gif``.

        mp4 and WebM go through PyAV (:mod:`storage.video_files`); GIF always works.

        Raises
        ------
        VideoStoreError
            No frames yet, or no encoder for that format here.
        """
        from storage.video_files import write_video

        frames = self.open()["frames"].values
        if len(frames) == 0:
            raise VideoStoreError(f"session {self.session_id!r} has no frames yet in {self.url}")
        return write_video(path, frames, int(fps or self.attrs["fps"]))

    # ------------------------------------------------------------------ helpers

    def _exists(self) -> bool:
        """Whether the session's group holds both arrays (frames were appended)."""
        if self.session_id not in self._root.group_keys():
            return False
        return {"frames", "chunk"} <= set(self._group().array_keys())

    def _group(self) -> zarr.Group:
        return self._root[self.session_id]

    def _check_identity(self) -> None:
        stored = self._group().attrs.asdict()
        diff = {k: (stored.get(k), self.attrs[k]) for k in _IDENTITY if stored.get(k) != self.attrs[k]}
        if diff:
            raise VideoStoreError(
                f"video store of session {self.session_id!r} in {self.url} was made with "
                + ", ".join(f"{k}={old!r}" for k, (old, _) in diff.items())
                + "; reopened with "
                + ", ".join(f"{k}={new!r}" for k, (_, new) in diff.items())
            )

    @staticmethod
    def _repair(group: zarr.Group, labels: np.ndarray, n_frames: int) -> np.ndarray:
        """Cut both arrays to their common length after an append was cut off between them.

        zarr resizes an array in one metadata write, so the shorter array ends at the
        last append that reached both; the longer one holds the interrupted chunk,
        which recovery appends again.
        """
        n = min(len(labels), n_frames)
        group["chunk"].resize((n,))
        frames = group["frames"]
        frames.resize((n, *frames.shape[1:]))
        return labels[:n]


def _rebuild_video(
    url: str, session_id: str, model: str, fps: int, height: int, width: int, storage_options: dict[str, Any] | None
) -> VideoStore:
    return VideoStore(
        url, session_id, model=model, fps=fps, height=height, width=width, storage_options=storage_options
    )


def open_video(
    url: str | os.PathLike[str], session_id: str, *, storage_options: dict[str, Any] | None = None
) -> xr.Dataset:
    """Open a stored session video without knowing its model or geometry."""
    import xarray as xr

    store = open_store(url, storage_options=storage_options)
    try:
        return xr.open_zarr(store, group=session_id, consolidated=False)
    except (FileNotFoundError, KeyError) as exc:
        raise VideoStoreError(f"no video of session {session_id!r} in {os.fspath(url)}") from exc
