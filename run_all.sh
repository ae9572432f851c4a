#!/usr/bin/env bash
# Regenerate every table and figure: runs notebooks/NN_*.ipynb in order with papermill.
#   ./run_all.sh                    offline default (emoji), writes results/
#   ./run_all.sh --profile smoke    minutes, synthetic data, writes results/smoke/
#   ./run_all.sh --from 02          resume at a notebook; --only 01 03 runs a selection
#   ./run_all.sh --help             all options
set -euo pipefail
cd "$(dirname "$0")"
if [ -z "${VIRTUAL_ENV:-}" ] && [ -f .venv/bin/activate ]; then
  # shellcheck disable=SC1091
  . .venv/bin/activate
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec python -m avg_lib.runs.runner "$@"
