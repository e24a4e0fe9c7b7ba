"""Typed errors of the storage tiers: what went wrong with a checkpoint or a video store.

Every error names the session, the location and what to do, so a worker that fails to
resume a session can log one line that explains itself.
"""

from __future__ import annotations


class StorageError(Exception):
    """Base of every error raised by :mod:`storage`."""


class CheckpointError(StorageError):
    """A checkpoint cannot be saved or loaded (base of the specific cases below)."""


class CheckpointNotFound(CheckpointError, LookupError):
    """No complete checkpoint exists for the session."""


class CheckpointMismatch(CheckpointError):
    """The checkpoint was made by another model than the one that wants to load it."""


class CheckpointVersionError(CheckpointError):
    """The checkpoint layout or the state format is of a version this code cannot read."""


class CheckpointCorrupt(CheckpointError):
    """The checkpoint is incomplete or damaged: missing array, wrong shape, bad checksum."""


class CheckpointFenced(CheckpointError):
    """A writer whose ownership epoch is older than the session's: another worker owns it now.

    The session moved (migration, resume, recovery) and its new owner claimed a higher
    epoch (:meth:`storage.CheckpointStore.claim`); the old owner must stop serving it.
    """


class VideoStoreError(StorageError):
    """A video store rejected an append, or cannot be read or exported."""
