#!/usr/bin/env bash
# Fetch (here, where pip reaches PyPI) the wheels that the GPU machines lack, for
# scripts/gpu_checks.sh to install there: that machine has Python 3.12 with torch,
# pandas, xarray, pytest and hypothesis (see the device tool's KINDS.md), and no network.
# The versions are this checkout's .venv's, so both machines run the same dask and diffusers.
# Usage: scripts/gpu_wheels.sh   (writes .whl/, ignored by git; then carry ".whl" with the run)
set -euo pipefail
cd "$(dirname "$0")/.."
py=.venv/bin/python
# The dependency closure of turboserve (+ the test extras the gpu tests use) that the
# device image does not hold. av (FFmpeg, ~40 MB) is left out: only the demo's videos use it.
pkgs=(dask distributed diffusers zarr numcodecs donfig google-crc32c bokeh xyzservices tornado
      locket partd tblib zict importlib-metadata tzdata pytest-timeout)
specs=()
for p in "${pkgs[@]}"; do
  v=$("$py" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$p" 2>/dev/null) || {
    echo "gpu_wheels: $p is not installed in .venv (run scripts/setup.sh --test first)" >&2; exit 1; }
  specs+=("$p==$v")
done
rm -rf .whl && mkdir -p .whl
plats=()
for n in 17 24 27 28 31 34; do plats+=(--platform "manylinux_2_${n}_x86_64"); done
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${plats[@]}" --platform manylinux2014_x86_64 -d .whl "${specs[@]}"
du -sh .whl
ls .whl
