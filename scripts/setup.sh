#!/usr/bin/env bash
# Set up turboserve in ./.venv.
#   scripts/setup.sh          runtime only
#   scripts/setup.sh --test   runtime + test extras
# torch: with no NVIDIA GPU visible we ask for the CPU build (on the development machines
# `torch==2.13.0` is a local CPU wheel, installed in seconds). With a GPU we let pip pick
# its default CUDA build. Override with TURBOSERVE_TORCH_SPEC="torch==X.Y.Z".
set -euo pipefail
cd "$(dirname "$0")/.."
extras=""
[[ "${1:-}" == "--test" ]] && extras="[test]"
PY="${PYTHON:-python3}"
if [[ ! -x .venv/bin/python ]]; then
  "$PY" -m venv .venv
fi
pip_q() { .venv/bin/python -m pip install -q --disable-pip-version-check "$@" 2>&1 | grep -v "is ignored: it is neither" || true; }
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  if [[ -n "${TURBOSERVE_TORCH_SPEC:-}" ]]; then
    pip_q "$TURBOSERVE_TORCH_SPEC"
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    pip_q "torch>=2.4"
  else
    # CPU-only machine: the CPU build (local wheel here, the PyTorch CPU index elsewhere).
    pip_q "torch==2.13.0" || pip_q "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu
  fi
fi
# compat mode puts the checkout on sys.path through a .pth entry: with the default
# finder, the spill folder "storage/" in a Dask worker's directory (first on sys.path)
# would shadow our `storage` package as a namespace package.
pip_q -e ".${extras}" --config-settings editable_mode=compat
.venv/bin/python -c "import torch, distributed, diffusers; print(f'turboserve ready: torch {torch.__version__}, distributed {distributed.__version__}, diffusers {diffusers.__version__}, cuda={torch.cuda.is_available()}')"
