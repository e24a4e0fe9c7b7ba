"""The CLI answers at once: commands that need no model or cluster import neither.

Two checks per command: what it imports (exact, machine-independent: torch, diffusers,
distributed and pandas stay out) and its wall time against a bare ``python -c pass``
measured beside it (best of three each, so a busy machine slows both alike).
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

HEAVY = ("torch", "diffusers", "distributed", "pandas", "bokeh", "zarr")

#: (argv, modules that must not load, seconds allowed over a bare interpreter start)
COMMANDS = [
    (["--help"], HEAVY + ("dask",), 0.75),
    (["trace", "--help"], HEAVY + ("dask",), 0.75),
    (["trace", "generate", "--help"], HEAVY + ("dask",), 0.75),
    (["experiment", "frontier", "--help"], HEAVY + ("dask",), 0.75),
    (["config"], HEAVY, 1.5),  # reads dask.config: dask itself, but nothing heavier
]

_PROBE = """
import sys, runpy
sys.argv = ["turboserve", *{argv!r}]
try:
    from framework.cli import main
    main(sys.argv[1:])
except SystemExit:
    pass
print("\\nLOADED", " ".join(sorted({{m.split('.')[0] for m in sys.modules}})))
"""


def _loaded(argv: list[str]) -> set[str]:
    out = subprocess.run([sys.executable, "-c", _PROBE.format(argv=argv)], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    return set(out.rsplit("LOADED", 1)[1].split())


def _best_of(cmd: list[str], n: int = 3) -> float:
    best = float("inf")
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(cmd, capture_output=True, timeout=120, check=True)
        best = min(best, time.perf_counter() - t0)
    return best


@pytest.mark.parametrize("argv,forbidden,_", COMMANDS, ids=[" ".join(c[0]) for c in COMMANDS])
def test_light_commands_import_nothing_heavy(argv, forbidden, _):
    loaded = _loaded(argv)
    assert "framework" in loaded
    assert not loaded & set(forbidden), f"turboserve {' '.join(argv)} imported {sorted(loaded & set(forbidden))}"


@pytest.mark.parametrize("argv,_,budget_s", COMMANDS, ids=[" ".join(c[0]) for c in COMMANDS])
def test_light_commands_answer_within_a_budget_over_a_bare_python(argv, _, budget_s):
    bare = _best_of([sys.executable, "-c", "pass"])
    cmd = _best_of([sys.executable, "-m", "framework.cli", *argv])
    print(f"turboserve {' '.join(argv)}: {cmd:.2f}s, bare python {bare:.2f}s, ratio {cmd / bare:.1f}x")
    assert cmd - bare < budget_s, f"{cmd:.2f}s vs {bare:.2f}s for a bare python: over the {budget_s}s budget"


def test_config_overrides_still_apply():
    out = subprocess.run([sys.executable, "-m", "framework.cli", "--config", "engine.max-batch=3", "config"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert "max-batch: 3" in out


def test_a_reader_that_stops_early_gets_no_traceback():
    """``turboserve trace list | head -1``: the pipe closes under the command; it ends quietly."""
    cli = subprocess.Popen([sys.executable, "-m", "framework.cli", "trace", "list"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    cli.stdout.close()  # the reader is gone before the command writes
    err = cli.stderr.read().decode()
    assert cli.wait(timeout=120) == 0, err
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
