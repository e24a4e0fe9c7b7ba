"""The simulator's knobs have one source: the ``turboserve`` namespace of the dask config (the YAML)."""

from __future__ import annotations

import dask

from experiments.sim.config import SimConfig
from framework import config as tconfig
from framework.control_settings import ControlSettings, gpu_memory_bytes
from policies.types import DEFAULT_WORKER_MEMORY_BYTES


def test_a_plain_record_takes_every_yaml_knob_from_the_config():
    plain = SimConfig()
    assert plain == SimConfig.from_config()
    assert plain.align_phases is bool(tconfig.get("simulator.align-phases"))
    assert plain.transform_fixed_s == float(tconfig.get("simulator.parallel.transform-fixed-s"))
    assert plain.max_batch == int(tconfig.get("engine.max-batch"))


def test_a_changed_config_changes_the_defaults_of_records_made_afterwards():
    flipped = not tconfig.get("simulator.align-phases")
    with dask.config.set({"turboserve.simulator.align-phases": flipped,
                          "turboserve.simulator.parallel.transform-fixed-s": "250ms"}):
        made = SimConfig(initial_workers=3)
    assert made.align_phases is flipped and made.transform_fixed_s == 0.25
    assert SimConfig().align_phases is not flipped  # the config is back, and so are the defaults


def test_gpu_memory_is_written_once_and_a_configured_value_wins():
    assert tconfig.get("simulator.gpu-memory-bytes") is None  # the YAML refers to the policies' figure
    assert gpu_memory_bytes() == DEFAULT_WORKER_MEMORY_BYTES == SimConfig().gpu_memory_bytes
    assert ControlSettings().worker_memory_bytes == DEFAULT_WORKER_MEMORY_BYTES
    with dask.config.set({"turboserve.simulator.gpu-memory-bytes": 4e10}):
        assert gpu_memory_bytes() == 40_000_000_000 == SimConfig().gpu_memory_bytes
