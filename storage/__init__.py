"""Session state storage: the device/host/disk tiers, zarr checkpoints, video stores.

Sits on the ``kernels`` floor (it only knows :class:`SessionState`) and below
``workers``/``framework``.
"""

from kernels.state import STATE_FORMAT_VERSION, SessionState
from storage.checkpoint import (
    CHECKPOINT_LAYOUT_VERSION,
    CheckpointInfo,
    CheckpointStore,
)
from storage.errors import (
    CheckpointCorrupt,
    CheckpointError,
    CheckpointFenced,
    CheckpointMismatch,
    CheckpointNotFound,
    CheckpointVersionError,
    StorageError,
    VideoStoreError,
)
from storage.identity import CheckpointIdentity, prompt_digest
from storage.tiers import Tier, is_pinned, offload_to_host, restore_to_device, tier_of
from storage.video import VideoStore, open_video

__all__ = [
    "CHECKPOINT_LAYOUT_VERSION",
    "STATE_FORMAT_VERSION",
    "CheckpointCorrupt",
    "CheckpointError",
    "CheckpointFenced",
    "CheckpointIdentity",
    "CheckpointInfo",
    "CheckpointMismatch",
    "CheckpointNotFound",
    "CheckpointStore",
    "CheckpointVersionError",
    "SessionState",
    "StorageError",
    "Tier",
    "VideoStore",
    "VideoStoreError",
    "is_pinned",
    "offload_to_host",
    "open_video",
    "prompt_digest",
    "restore_to_device",
    "tier_of",
]
