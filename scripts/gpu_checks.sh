#!/usr/bin/env bash
# The checks that need a GPU, as one prepared run on a lent GPU machine (the device tool):
#   1. the measured latency profile of the real wan-1.3b geometry in bf16, batch 1..16
#      (experiments.bench_kernels), written as a profile CSV the simulator reads (--profile);
#   2. the tests marked gpu (pytest -m gpu);
#   3. migration bandwidth: NCCL point-to-point and host-staged, against memcpy;
#   4. state offload to pinned host memory and back;
#   5. a chunk through its Dask future against the direct stream, on a GPU worker (issue 12).
# Each step has its own time limit and writes its log to $OUT (or ./gpu-out), so a step
# that runs over leaves the others' results. Before the run, here: scripts/gpu_wheels.sh;
# then run: command "scripts/gpu_checks.sh", carry [".whl"], timeout_s 600.
# Copy $OUT/wan-1.3b-*-measured.csv into kernels/profiles/ (measured profiles; --profile NAME) and the logs' figures
# into docs/PERFORMANCE.md / docs/TRANSPORTS.md.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-out}
mkdir -p "$out"
if [[ -d .whl ]]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "gpu_checks: installing the carried wheels failed" >&2; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
step() {  # step NAME SECONDS CMD...: run CMD with a limit, its output to $out/NAME.log
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout --signal=INT --kill-after=10 "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  tail -n 25 "$out/$name.log"
  echo "== $name: rc $rc in $((SECONDS - t0)) s"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$out/env.log" 2>&1
"$py" -c "import torch, dask, distributed, diffusers; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-'); print('dask', dask.__version__, 'distributed', distributed.__version__, 'diffusers', diffusers.__version__)" >>"$out/env.log" 2>&1
cat "$out/env.log"
gpu=$("$py" -c "import torch; n = torch.cuda.get_device_name(0).lower(); print(next((k for k in ('h200', 'h100', 'b200', 'gb200', 'a100') if k in n), 'gpu'))" 2>/dev/null || echo gpu)
step kernels 250 "$py" -m experiments.bench_kernels --preset wan-1.3b --device cuda --dtype bfloat16 \
  --batches 1,2,4,8,16 --repeats 3 --warmup 1 --out "$out/wan-1.3b-$gpu-measured.csv"
step pytest_gpu 150 "$py" -m pytest -m gpu -q -x -p no:cacheprovider --timeout 120
step migration 60 "$py" -m experiments.bench_migration --device cuda --sizes-mib 256,2048 --repeats 3 --timeout 20
step offload 40 "$py" -m experiments.bench_state --sizes-mib 256 2048 --repeat 3
step chunk_paths 80 "$py" -m experiments.bench_chunk_paths --chunks 32 --pin
ls -la "$out"
