"""The streaming video model: presets, the chunk-causal transformer, the batched step.

``from kernels import StreamingVideoModel, get_preset``. Presets and the session state
import without torch-heavy modules; the model (and diffusers) loads on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .presets import PRESETS, ModelPreset, get_preset
from .state import SessionState

if TYPE_CHECKING:
    from .model import StreamingVideoModel
    from .text import HashTextEncoder, TextEncoder

_LAZY = {
    "StreamingVideoModel": "model",
    "HashTextEncoder": "text",
    "TextEncoder": "text",
}

__all__ = [
    "PRESETS",
    "HashTextEncoder",
    "ModelPreset",
    "SessionState",
    "StreamingVideoModel",
    "TextEncoder",
    "get_preset",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
