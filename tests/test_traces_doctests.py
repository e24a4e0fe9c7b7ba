"""The examples in the traces package's docstrings run and give what they show."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "traces", "traces.commands", "traces.distributions", "traces.generator", "traces.io", "traces.lazy",
    "traces.rates", "traces.scenarios", "traces.schema", "traces.stats", "traces.transform",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no docstring examples"
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
