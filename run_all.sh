#!/usr/bin/env bash
# The whole pipeline: extract -> verify -> meanP eval -> train heads x seeds -> evaluate -> report.
#
#   bash run_all.sh                 the built-in demo data (a few minutes on 2 CPU cores)
#   bash run_all.sh --annotations DIR --videos DIR --clip CKPT [--gpus N] [--reversed-videos DIR] [--work DIR]
#   options for either: --heads "seqTransf tightTransf"  --seeds "0 1"  --epochs N  --train-args "--lr 1e-4 ..."
#                       --tune N   (first tune each head's settings on valid with tune.py, N trials per head)
#
# Everything goes under --work (default: work_demo/ or work/): cache/, runs/, results/, report/.
# --train-args is appended to every train_head.py call (after the demo's per-head settings, so it
# wins). Re-running reuses a cache whose meta matches and finished training runs. Stops at the
# first failing stage, naming it.
set -euo pipefail
cd "$(dirname "$0")"

ANNOTATIONS="" VIDEOS="" CLIP="" REVERSED="" WORK="" GPUS=1
HEADS="seqTransf tightTransf mlpScore" SEEDS="0 1 2" EPOCHS="" EXTRA_TRAIN_ARGS="" TUNE_TRIALS=""
while [ $# -gt 0 ]; do
  case "$1" in
    --annotations) ANNOTATIONS="$2"; shift 2 ;;
    --videos) VIDEOS="$2"; shift 2 ;;
    --clip) CLIP="$2"; shift 2 ;;
    --reversed-videos) REVERSED="$2"; shift 2 ;;
    --work) WORK="$2"; shift 2 ;;
    --gpus) GPUS="$2"; shift 2 ;;
    --heads) HEADS="$2"; shift 2 ;;
    --seeds) SEEDS="$2"; shift 2 ;;
    --epochs) EPOCHS="$2"; shift 2 ;;
    --train-args) EXTRA_TRAIN_ARGS="$2"; shift 2 ;;
    --tune) TUNE_TRIALS="$2"; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "run_all.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

case "$GPUS" in
  ''|*[!0-9]*|0) echo "run_all.sh: --gpus '$GPUS': give a whole number of GPUs, at least 1" >&2; exit 2 ;;
esac
for FLAG in EPOCHS TUNE_TRIALS; do
  if [ -n "${!FLAG}" ] && ! [ "${!FLAG}" -ge 1 ] 2>/dev/null; then
    echo "run_all.sh: --$(echo "$FLAG" | tr 'A-Z_' 'a-z-' | sed 's/-trials//') '${!FLAG}': give a whole number, at least 1" >&2; exit 2
  fi
done

STAGE="set-up"
trap 'echo "run_all.sh: stage \"$STAGE\" failed; the messages above say why." >&2' ERR
bash setup_env.sh
PY=.venv/bin/python

if [ -z "$ANNOTATIONS$VIDEOS$CLIP" ]; then
  # Demo: small data and a tiny random CLIP, so heads train for many short epochs on the CPU.
  WORK="${WORK:-work_demo}"
  STAGE="demo data"
  if [ ! -f "$WORK/demo/clip_tiny.pt" ]; then
    $PY make_demo_data.py --out "$WORK/demo"
  fi
  ANNOTATIONS="$WORK/demo/annotations" VIDEOS="$WORK/demo/videos" CLIP="$WORK/demo/clip_tiny.pt"
  REVERSED="$WORK/demo/videos_reversed"
  EXTRACT_ARGS=(--fps 4)
  MEANP_FRAMES=8
  declare -A TRAIN_ARGS=(
    [seqTransf]="--frames 8 --epochs 60 --batch-size 32 --learn-temp"
    [tightTransf]="--frames 4 --epochs 30 --batch-size 16"
    [mlpScore]="--frames 8 --epochs 30 --batch-size 32 --learn-temp"
  )
  HAND_SET_ARGS="--lr 3e-3"  # what --tune searches instead
else
  if [ -z "$ANNOTATIONS" ] || [ -z "$VIDEOS" ] || [ -z "$CLIP" ]; then
    echo "run_all.sh: a real run needs all of --annotations, --videos and --clip" >&2; exit 2
  fi
  WORK="${WORK:-work}"
  EXTRACT_ARGS=()
  MEANP_FRAMES=""
  declare -A TRAIN_ARGS=()
  HAND_SET_ARGS=""
fi
CACHE="$WORK/cache"
mkdir -p "$WORK/runs" "$WORK/results"

STAGE="extract"
if [ "$GPUS" -gt 1 ]; then
  .venv/bin/torchrun --nproc_per_node="$GPUS" extract.py --annotations "$ANNOTATIONS" --videos "$VIDEOS" \
    --clip "$CLIP" --out "$CACHE" "${EXTRACT_ARGS[@]}"
else
  $PY extract.py --annotations "$ANNOTATIONS" --videos "$VIDEOS" --clip "$CLIP" --out "$CACHE" "${EXTRACT_ARGS[@]}"
fi

STAGE="verify"
$PY verify.py --cache "$CACHE" --annotations "$ANNOTATIONS" --videos "$VIDEOS" --clip "$CLIP" \
  ${REVERSED:+--reversed-videos "$REVERSED"}

STAGE="evaluate meanP"
$PY evaluate.py --cache "$CACHE" --split test --head meanP ${MEANP_FRAMES:+--frames $MEANP_FRAMES} \
  --out "$WORK/results/meanP.json"

for HEAD in $HEADS; do
  HEAD_ARGS="--reverse-negatives ${TRAIN_ARGS[$HEAD]:-} ${EPOCHS:+--epochs $EPOCHS}"
  CHOSEN_ARGS=($HAND_SET_ARGS)  # the demo's hand-set settings, or the ones tune.py chose
  if [ -n "$TUNE_TRIALS" ]; then
    STAGE="tune $HEAD"
    $PY tune.py --cache "$CACHE" --clip "$CLIP" --heads "$HEAD" --trials "$TUNE_TRIALS" --out "$WORK/tuning/$HEAD" \
      --train-args "$HEAD_ARGS $EXTRA_TRAIN_ARGS"
    mapfile -t CHOSEN_ARGS < <($PY -c 'import json, sys; print("\n".join(json.load(open(sys.argv[1]))["train_args"]))' \
      "$WORK/tuning/$HEAD/best/$HEAD.json")
  fi
  for SEED in $SEEDS; do
    RUN="$WORK/runs/${HEAD}_seed${SEED}"
    STAGE="train $HEAD seed $SEED"
    # shellcheck disable=SC2086  # the settings are word lists; --train-args comes last, so it wins
    $PY train_head.py --cache "$CACHE" --head "$HEAD" --seed "$SEED" --out "$RUN" --clip "$CLIP" $HEAD_ARGS \
      "${CHOSEN_ARGS[@]}" $EXTRA_TRAIN_ARGS
    STAGE="evaluate $HEAD seed $SEED"
    $PY evaluate.py --cache "$CACHE" --split test --ckpt "$RUN/best.pt" --method "$HEAD" \
      --out "$WORK/results/${HEAD}_seed${SEED}.json"
  done
done

STAGE="report"
$PY report.py --results "$WORK/results" --out "$WORK/report"
echo "Done. Report: $WORK/report/report.md"
