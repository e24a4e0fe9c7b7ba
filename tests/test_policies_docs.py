"""The examples in the policy modules' docstrings run and print what they say."""

import doctest
import importlib

import pytest

MODULES = ["policies.admission", "policies.ledger_cache", "policies.placement", "policies.autoscaling", "policies.offload", "policies.combined",
           "policies.reference_autoscalers"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted > 0 and result.failed == 0
