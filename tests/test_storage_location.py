"""Where the checkpoint store lives: ``auto`` is a folder per cluster, anything else as given."""

from __future__ import annotations

import os
import tempfile

import pytest

from storage.location import AUTO, auto_store_path, is_auto, resolve_store


def test_auto_is_a_folder_per_scheduler_under_the_temp_dir() -> None:
    a = resolve_store(AUTO, "Scheduler-1111")
    b = resolve_store("auto", "Scheduler-2222")
    assert a != b
    assert a == os.path.join(tempfile.gettempdir(), "turboserve-state", "Scheduler-1111")
    assert os.path.dirname(a) == os.path.dirname(b)


def test_ids_become_safe_folder_names() -> None:
    path = auto_store_path("../x/y z")
    assert os.path.dirname(path) == os.path.join(tempfile.gettempdir(), "turboserve-state")
    assert os.path.basename(path) == "_x_y_z"
    with pytest.raises(ValueError, match="cluster id"):
        auto_store_path("")


@pytest.mark.parametrize("off", [None, "", "none", "None", "null", "  "])
def test_no_store(off) -> None:
    assert resolve_store(off, "Scheduler-1") is None


def test_other_values_are_used_as_given() -> None:
    assert resolve_store("s3://bucket/state", "Scheduler-1") == "s3://bucket/state"
    assert resolve_store("relative/dir", "Scheduler-1") == "relative/dir"
    assert is_auto("auto") and not is_auto("autox") and not is_auto(None)
