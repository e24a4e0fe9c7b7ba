#!/usr/bin/env bash
# The frontier grid of docs/RESULTS.md: a = {0.1, 1.0} x start-up = {10, 60} s at t1 = 344 ms
# (the published H100 figure), 64 GPUs, traces fitted to the cluster (--scale fit).
#   scripts/frontier_grid.sh OUT_DIR [SEEDS] [SCENARIO ...]
# Defaults: seeds 0; the ServeGen-, Mooncake- and Azure-derived scenarios; DURATION_S=3600;
# BATCH_COSTS="1.0 0.1"; MEASURE_FROM_S=0 (the measurement window's start, --measure-from-s). Each regime
# writes OUT_DIR/a<A>-s<S>/{frontier.csv,headline.csv,frontier.png,config.yaml}.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/frontier_grid.sh OUT_DIR [SEEDS] [SCENARIO ...]}
seeds=${2:-0}
duration=${DURATION_S:-3600}
shift $(( $# >= 2 ? 2 : 1 ))
scenarios=("$@")
[[ ${#scenarios[@]} -gt 0 ]] || scenarios=(mooncake-conversation azure-code servegen-language)
args=()
for s in "${scenarios[@]}"; do args+=(--scenario "$s"); done
families=(static hpa+migration-aware ray-serve+migration-aware predictive+migration-aware turboserve-ref turboserve)
fams=()
for f in "${families[@]}"; do fams+=(--family "$f"); done
py=${PYTHON:-.venv/bin/python}
for a in ${BATCH_COSTS:-1.0 0.1}; do
  for s in 10 60; do
    echo "== a=$a start-up=${s}s"
    "$py" -m framework.cli experiment frontier "${args[@]}" "${fams[@]}" --gpus 64 --seeds "$seeds" --duration-s "$duration" \
      --batch-cost "$a" --t1-s 0.344 --startup-s "$s" --quality-valve --measure-from-s "${MEASURE_FROM_S:-0}" \
      --no-progress --out "$out/a$a-s$s"
  done
done
