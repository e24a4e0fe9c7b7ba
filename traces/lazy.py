"""Package members imported on first use (PEP 562), for package faces that must load fast.

``traces`` and ``framework`` name their public members in their ``__init__`` without
importing the modules that define them (pandas, torch, distributed), so ``turboserve
--help`` and the trace commands' parsers start in milliseconds. This module lives on the
lowest floor that uses it and imports nothing of the project.

>>> import types, sys
>>> pkg = types.ModuleType("example_pkg")
>>> sys.modules["example_pkg"] = pkg
>>> pkg.__getattr__, pkg.__dir__ = lazy_exports("example_pkg", {"OrderedDict": "collections"})
>>> pkg.OrderedDict.__name__, "OrderedDict" in vars(pkg)
('OrderedDict', True)
>>> pkg.missing
Traceback (most recent call last):
AttributeError: module 'example_pkg' has no attribute 'missing'
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str, exports: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``; ``exports`` maps a name to its defining module.

    The first access to a name imports its module and stores the value in the package,
    so later accesses are plain attribute lookups. Use it in the package's ``__init__``:
    ``__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)``.
    """

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted([*vars(sys.modules[package]), *exports])

    return __getattr__, __dir__
