#!/usr/bin/env bash
# One command on a GPU machine: the efficiency study on CUDA from 1K to 10M images, then the decoding
# benchmark, on a generator of the default architecture with random weights (timing does not depend on
# weights; no pretrained file or download is needed). Writes results/gpu/efficiency.csv,
# efficiency_crossovers.csv and decoding_benchmark.csv, each with the GPU's name.
#
#   bash scripts/gpu_efficiency.sh                 # profile gpu (profiles/gpu.yaml)
#   bash scripts/gpu_efficiency.sh --sizes 1e3,1e4 # any option of avg speed
#
# Needs python3 with torch (CUDA), transformers, numpy, pandas, pyyaml, scikit-learn and tqdm; it uses the
# .venv of scripts/setup.sh when there is one.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$PY" -m avg_lib.tools.speed --profile gpu --what efficiency "$@"
"$PY" -m avg_lib.tools.speed --profile gpu --what decoding "$@"
