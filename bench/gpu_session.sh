#!/usr/bin/env bash
# Every GPU figure of the README in one go, on a GPU machine with no network (issues 12, 21).
# Usage: bash bench/gpu_session.sh OUT [--dry-run] [BENCH ...]
#   BENCH: env parity encoder extract eval train scale (default: all but scale, in this order: by
#   value, so a call cut short keeps the most useful). Each writes OUT/BENCH.txt as it goes: its
#   command, tables and log, wall time and exit status. A bench that fails or runs past its budget
#   (seconds, shared by its commands: env 30, parity 100, encoder 100, extract 110, eval 60, train 80
#   = 8 min in all; scale 600; BENCH_TIMEOUT, per command, overrides them) is recorded as such and
#   the next one runs.
#   On the GPU machine: carry .gpu_kit and clip_vendor/bpe_simple_vocab_16e6.txt.gz (built here by
#   bench/gpu_kit.sh); the kit's wheels are installed into /tmp/gpu_kit_site first. Its python3
#   holds the CUDA build of torch: no setup_env.sh there.
#   --dry-run: here, on the CPU, with .venv's Python and tiny sizes: every bench end to end, so the
#   GPU minutes go to measuring.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:?usage: bash bench/gpu_session.sh OUT [--dry-run] [BENCH ...]}"
shift
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
BENCHES=("$@")
[ ${#BENCHES[@]} -gt 0 ] || BENCHES=(env parity encoder extract eval train)
declare -A BUDGET=([env]=30 [parity]=100 [encoder]=100 [extract]=110 [eval]=60 [train]=80 [scale]=600)
for BENCH in "${BENCHES[@]}"; do
  case "$BENCH" in
    env|parity|encoder|extract|eval|train|scale) ;;
    *) echo "gpu_session.sh: unknown bench '$BENCH' (env parity encoder extract eval train scale)" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

if [ "$DRY" = 1 ]; then
  PY=.venv/bin/python
else
  PY=python3
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu_kit_site \
    .gpu_kit/wheels/*.whl || { echo "gpu_session.sh: installing .gpu_kit/wheels failed (was .gpu_kit carried?)" >&2; exit 1; }
  export PYTHONPATH=/tmp/gpu_kit_site
fi

commands_for() {  # the bench's command lines, one per line: GPU sizes, or tiny ones for --dry-run
  case "$1:$DRY" in
    env:*) echo "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv"
           echo "$PY -c 'import torch, cv2, av, numpy; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"| OpenCV\", cv2.__version__, \"| PyAV\", av.__version__, \"| numpy\", numpy.__version__)'"
           echo "nproc" ;;
    encoder:0) echo "$PY -m bench.encoder_speed --device cuda" ;;
    encoder:1) echo "$PY -m bench.encoder_speed --device cpu --shapes tiny --batch-sizes 8 --dtypes fp32 --ref-dtype fp32 --iters 2 --levers channels-last compile" ;;
    eval:0) echo "$PY -m bench.eval_speed --devices cuda --queries 50"
            echo "$PY -m bench.eval_speed --devices cpu --queries 3 --skip-all-pairs-on-cpu" ;;
    eval:1) echo "$PY -m bench.eval_speed --devices cpu --videos 64 --dim 64 --queries 2" ;;
    parity:0) echo "$PY -m bench.device_parity --videos .gpu_kit/media" ;;
    parity:1) echo "$PY -m bench.device_parity --device cpu --dtype fp16 --shape tiny --seeds 0 --heads seqTransf --videos .gpu_kit/media" ;;
    train:0) echo "$PY -m bench.train_speed --device cuda --epochs 1" ;;
    train:1) echo "$PY -m bench.train_speed --device cpu --videos 32 --valid-videos 8 --dim 64 --heads seqTransf tightTransf --epochs 1 --batch-size 16" ;;
    extract:0) echo "$PY -m bench.extract_speed --device cuda --videos-from .gpu_kit/media --videos 480 --workers 16 --worker-counts 4 8 12"
               echo "$PY -m bench.extract_speed --device cuda --videos 160 --workers 16 --worker-counts 8" ;;
    extract:1) echo "$PY -m bench.extract_speed --device cpu --shape tiny --videos-from .gpu_kit/media --videos 14 --workers 2 --worker-counts 1 --batch-videos 4" ;;
    scale:0) echo "$PY -m bench.scale --device cuda --sizes 1000 4000 21500 100000 --out /tmp/scale" ;;
    scale:1) echo "$PY -m bench.scale --device cpu --sizes 200 400 --out /tmp/scale_dry" ;;
  esac
}

for BENCH in "${BENCHES[@]}"; do
  mapfile -t COMMANDS < <(commands_for "$BENCH")
  LOG="$OUT/$BENCH.txt"
  : > "$LOG"
  for COMMAND in "${COMMANDS[@]}"; do
    START=$SECONDS
    echo "\$ $COMMAND" | tee -a "$LOG"
    timeout --signal=INT "${BENCH_TIMEOUT:-$((BUDGET[$BENCH] / ${#COMMANDS[@]}))}" bash -c "$COMMAND" >> "$LOG" 2>&1
    STATUS=$?
    echo "[$BENCH: exit $STATUS$([ $STATUS = 124 ] && echo ', timed out') after $((SECONDS - START)) s]" | tee -a "$LOG"
  done
done
