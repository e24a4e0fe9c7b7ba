"""A small registry of policies by kind and name, used by config, CLI and simulator.

>>> from policies.registry import register, make
>>> @register("placement", "example")
... class Example:
...     kind, name = "placement", "example"
...     def __init__(self, **params): self.params = params
...     def initial_state(self): return None
...     def decide(self, snap, state): return [], state
>>> make("placement", "example").name
'example'

A name of the form ``"package.module:attr"`` imports ``attr`` from that module instead,
so users can plug in their own policy without registering it.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

KINDS = ("placement", "autoscaling", "offload", "parallelism")

_REGISTRY: dict[str, dict[str, Callable[..., Any]]] = {kind: {} for kind in KINDS}


def register(kind: str, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Class decorator: make ``cls`` available as ``make(kind, name, **params)``."""
    if kind not in _REGISTRY:
        raise ValueError(f"unknown policy kind {kind!r}; known: {sorted(_REGISTRY)}")

    def deco(factory: Callable[..., Any]) -> Callable[..., Any]:
        _REGISTRY[kind][name] = factory
        return factory

    return deco


def names(kind: str) -> list[str]:
    """Sorted names registered under ``kind``."""
    _load_builtins()
    if kind not in _REGISTRY:
        raise ValueError(f"unknown policy kind {kind!r}; known: {sorted(_REGISTRY)}")
    return sorted(_REGISTRY[kind])


def make(kind: str, name: str, **params: Any) -> Any:
    """Build the policy registered as ``(kind, name)`` with ``params``.

    Raises ``ValueError`` naming the known policies when ``name`` is unknown.
    """
    _load_builtins()
    if kind not in _REGISTRY:
        raise ValueError(f"unknown policy kind {kind!r}; known: {sorted(_REGISTRY)}")
    if ":" in name:
        module, _, attr = name.partition(":")
        factory = getattr(importlib.import_module(module), attr)
        return factory(**params)
    try:
        factory = _REGISTRY[kind][name]
    except KeyError:
        raise ValueError(
            f"unknown {kind} policy {name!r}; known: {sorted(_REGISTRY[kind])}"
        ) from None
    return factory(**params)


def _load_builtins() -> None:
    # Importing the policy modules registers them; done lazily so that importing the
    # registry alone stays cheap and free of import cycles.
    for module in ("policies.placement", "policies.autoscaling", "policies.load_driven", "policies.offload",
                   "policies.parallelism"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
