"""The serving configuration of the scheduler plugin: :class:`ServingSettings`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from framework import config
from policies.types import TIERS

def _seconds(value: Any) -> float:
    from dask.utils import parse_timedelta

    return float(parse_timedelta(value, default="s"))


#: Ways to move a session's state between workers (``turboserve.state.transport``).
TRANSPORTS = ("auto", "host", "p2p")


@dataclass(frozen=True, slots=True)
class ServingSettings:
    """The resolved serving configuration the scheduler plugin works with.

    Build it with :meth:`from_config` (``turboserve.*`` with explicit overrides); the
    fields not given are read from ``turboserve.*`` (``framework/turboserve.yaml``). Where sessions go is the
    control loop's placement policy (:class:`~framework.control_settings.ControlSettings`).
    """

    model: str = field(default_factory=lambda: config.get("model"))
    height: int = field(default_factory=lambda: config.get("chunk.height"))
    width: int = field(default_factory=lambda: config.get("chunk.width"))
    fps: int = field(default_factory=lambda: config.get("chunk.fps"))
    store: str | None = None  # no checkpoint store unless given (from_config: turboserve.state.store)
    placement: str | None = None  # the control loop's placement policy; None: turboserve.policies.placement
    max_sessions_per_worker: int = field(default_factory=lambda: config.get("admission.max-sessions-per-worker"))
    on_full: str = field(default_factory=lambda: config.get("admission.on-full"))
    queue_timeout_s: float = field(default_factory=lambda: config.get("admission.queue-timeout-s"))
    offload_tier: str = field(default_factory=lambda: config.get("state.offload-tier"))
    transport: str = field(default_factory=lambda: config.get("state.transport"))  # auto, host, p2p
    transfer_timeout_s: float = field(default_factory=lambda: _seconds(config.get("control.transfer-timeout")))
    group_timeout_s: float = field(default_factory=lambda: _seconds(config.get("control.group-timeout")))

    def __post_init__(self) -> None:
        if self.on_full not in ("refuse", "queue"):
            raise ValueError(f"admission.on-full must be 'refuse' or 'queue', got {self.on_full!r}")
        if self.offload_tier not in TIERS:
            raise ValueError(f"state.offload-tier must be one of {TIERS}, got {self.offload_tier!r}")
        if self.transport not in TRANSPORTS:
            raise ValueError(f"transport must be 'auto', 'host' or 'p2p', got {self.transport!r}")
        if not self.transfer_timeout_s > 0:
            raise ValueError(f"control.transfer-timeout must be > 0 seconds, got {self.transfer_timeout_s!r}")
        if not self.group_timeout_s > 0:
            raise ValueError(f"control.group-timeout must be > 0 seconds, got {self.group_timeout_s!r}")
        if self.max_sessions_per_worker < 1:
            raise ValueError(f"admission.max-sessions-per-worker must be >= 1, got {self.max_sessions_per_worker}")

    @classmethod
    def from_config(cls, **overrides: Any) -> "ServingSettings":
        """Read ``turboserve.*`` (``framework.config``); non-None ``overrides`` win."""
        values = {
            "model": config.get("model"),
            "height": config.get("chunk.height"),
            "width": config.get("chunk.width"),
            "fps": config.get("chunk.fps"),
            "store": config.get("state.store"),
            "max_sessions_per_worker": config.get("admission.max-sessions-per-worker"),
            "on_full": config.get("admission.on-full"),
            "queue_timeout_s": config.get("admission.queue-timeout-s"),
            "offload_tier": config.get("state.offload-tier"),
            "transport": config.get("state.transport"),
            "transfer_timeout_s": _seconds(config.get("control.transfer-timeout")),
            "group_timeout_s": _seconds(config.get("control.group-timeout")),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        if values["store"] is not None:
            values["store"] = str(values["store"])
        return cls(**values)
