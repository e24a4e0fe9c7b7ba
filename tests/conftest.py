"""Shared pytest setup: the `gpu` marker skips cleanly (with the reason) without CUDA."""

from __future__ import annotations

import dask.config
import pytest

# The closed control loop is on by default (turboserve.control.auto-start); tests run
# their servers without it (a policy's migrations and offloads would move sessions under
# the tests' feet) and start it where they test it.
dask.config.set({"turboserve.control.auto-start": False})


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:  # pragma: no cover - torch missing is a setup error reported elsewhere
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
