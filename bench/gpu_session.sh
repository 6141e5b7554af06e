#!/usr/bin/env bash
# Every GPU figure of the docs in one go, on a GPU machine with no network (issues 12, 21).
# Usage: bash bench/gpu_session.sh OUT [--dry-run] [BENCH ...]
#   BENCH: env parity encoder extract eval train scale (default: all but scale, in this order: by
#   value, so a call cut short keeps the most useful). Each writes OUT/BENCH.txt as it goes: its
#   command, tables and log, wall time and exit status; every bench prints each row when it is
#   measured. A bench that fails or runs past its budget (seconds, shared by its commands, sized
#   from the first H200 run: env 20, parity 110, encoder 100, extract 120, eval 60, train 160 =
#   570 s in all; scale 600; BENCH_TIMEOUT, per command, overrides them) is recorded as such and
#   the next one runs. scale runs its largest size first (its caches in a temporary folder); its scale.json
#   and scale.png are copied into OUT at the end, with the sizes that finished.
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
declare -A BUDGET=([env]=20 [parity]=110 [encoder]=100 [extract]=120 [eval]=60 [train]=160 [scale]=600)
for BENCH in "${BENCHES[@]}"; do
  case "$BENCH" in
    env|parity|encoder|extract|eval|train|scale) ;;
    *) echo "gpu_session.sh: unknown bench '$BENCH' (env parity encoder extract eval train scale)" >&2; exit 2 ;;
  esac
done
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
SCRATCH="$(mktemp -d)"  # scale's caches; the dry run's clips when no kit was built
trap 'rm -rf "$SCRATCH"' EXIT
SCALE_DIR="$SCRATCH/scale"
MEDIA=.gpu_kit/media

if [ "$DRY" = 1 ]; then
  PY=.venv/bin/python
  if [ ! -d "$MEDIA" ]; then  # a clean clone: the kit's clips, made here the way gpu_kit.sh makes them
    MEDIA="$SCRATCH/media"
    $PY -c "from pathlib import Path; from fixtures.real_videos import copy_kit_clips; copy_kit_clips(Path('$MEDIA'))" \
      || { echo "gpu_session.sh: could not make the kit's clips for the dry run" >&2; exit 1; }
  fi
else
  PY=python3
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu_kit_site \
    .gpu_kit/wheels/*.whl || { echo "gpu_session.sh: installing .gpu_kit/wheels failed (was .gpu_kit carried?)" >&2; exit 1; }
  export PYTHONPATH=/tmp/gpu_kit_site
fi

commands_for() {  # the bench's command lines, one per line: GPU sizes, or tiny ones for --dry-run
  case "$1:$DRY" in
    env:*) echo "date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; $PY -c 'import torch, cv2, av, numpy; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"| OpenCV\", cv2.__version__, \"| PyAV\", av.__version__, \"| numpy\", numpy.__version__)'" ;;
    encoder:0) echo "$PY -m bench.encoder_speed --device cuda --profile --lever-shapes B32 --levers fp32-layernorm conv-patches channels-last sdpa-math cudagraphs compile" ;;
    encoder:1) echo "$PY -m bench.encoder_speed --device cpu --shapes tiny --batch-sizes 4 --dtypes fp32 --ref-dtype fp32 --iters 1 --levers fp32-layernorm conv-patches sdpa-math" ;;
    eval:0) echo "$PY -m bench.eval_speed --devices cuda --queries 50 --profile" ;;
    eval:1) echo "$PY -m bench.eval_speed --devices cpu --videos 16 --frames 4 --dim 64 --queries 1 --select-frames 2 --profile" ;;
    parity:0) echo "$PY -m bench.device_parity --videos $MEDIA" ;;
    parity:1) echo "$PY -m bench.device_parity --device cpu --dtype fp16 --shape tiny --seeds 0 --heads seqTransf --epochs 1 --workers 0 --videos $MEDIA" ;;
    train:0) echo "$PY -m bench.train_speed --device cuda --epochs 1 --valid-videos 200 --heads meanP mlpScore seqTransf tightTransf" ;;
    train:1) echo "$PY -m bench.train_speed --device cpu --videos 16 --valid-videos 4 --frames 4 --dim 64 --heads seqTransf tightTransf --epochs 1 --batch-size 8" ;;
    extract:0) echo "$PY -m bench.extract_speed --device cuda --videos-from $MEDIA --videos 480 --workers 16 --worker-counts 12" ;;
    extract:1) echo "$PY -m bench.extract_speed --device cpu --shape tiny --videos-from $MEDIA --videos 7 --workers 1 --worker-counts --batch-videos 4" ;;
    scale:0) echo "$PY -m bench.scale --device cuda --sizes 100000 21500 4000 1000 --out $SCALE_DIR" ;;
    scale:1) echo "$PY -m bench.scale --device cpu --sizes 160 --seqtransf-up-to 1 --in-process --out $SCALE_DIR" ;;
  esac
}

for BENCH in "${BENCHES[@]}"; do
  mapfile -t COMMANDS < <(commands_for "$BENCH")
  LOG="$OUT/$BENCH.txt"
  : > "$LOG"
  for COMMAND in "${COMMANDS[@]}"; do
    START=$SECONDS
    echo "\$ $COMMAND" | tee -a "$LOG"
    # INT first, so Python unwinds and its temporary folders go; KILL 5 s later if it has not ended
    timeout --signal=INT --kill-after=5 "${BENCH_TIMEOUT:-$((BUDGET[$BENCH] / ${#COMMANDS[@]}))}" \
      bash -c "$COMMAND" >> "$LOG" 2>&1
    STATUS=$?
    echo "[$BENCH: exit $STATUS$([ $STATUS = 124 ] && echo ', timed out') after $((SECONDS - START)) s]" | tee -a "$LOG"
  done
  if [ "$BENCH" = scale ]; then cp "$SCALE_DIR"/scale.json "$SCALE_DIR"/scale.png "$OUT"/ 2>/dev/null; fi
done
