#!/usr/bin/env bash
# The whole pipeline: extract -> verify -> zero-shot eval -> train heads x seeds -> evaluate -> report.
#
#   bash run_all.sh                 the built-in demo data (a few minutes on 2 CPU cores)
#   bash run_all.sh --annotations DIR --videos DIR --clip CKPT [--gpus N] [--reversed-videos DIR] [--work DIR]
#   options for either: --heads "HEAD ..." (default: see python -m heads)  --seeds "0 1"  --epochs N  --train-args "--lr 1e-4 ..."
#                       --extract-args "--fps 2 --paragraphs ..."  --verify-args "--rel-tol 0.05 ..."  (passed through)
#                       --backbones "hf:DIR ..."  (more backbones beside --clip's, docs/backbones.md: each gets its
#                                    own cache, verify, zero-shot evaluation and heads x seeds; one report over all)
#                       --tune N   (first tune each head's settings on valid with tune.py, N trials per head)
#                       --jobs N   (run the heads x seeds matrix N at a time; --gpus N: N at a time, one GPU each)
#                       --print-runs  (print the matrix, one self-contained command per line, and run nothing)
#                       --skip-runs   (everything but the matrix and the report: for a cluster, see docs/run_all.md)
#
# Everything goes under --work (default: work_demo/ or work/): cache/, runs/, results/, logs/, report/.
# --train-args is appended to every train_head.py call (after the demo's per-head settings, so it
# wins), --extract-args to extract.py's and --verify-args to verify.py's. Re-running reuses a cache
# whose meta matches, a verify that passed on the same cache_meta.json and options, finished training
# runs and finished evaluations (evaluate.py --keep-finished). Reversals are training negatives where
# the train split has them. Stops at the first failing stage or run, naming it. No head is named
# here: the default heads, the zero-shot ones and each head's demo settings come from the heads
# themselves (python -m heads, one call).
set -euo pipefail
CALLER="$(pwd)"
cd "$(dirname "$0")"
REPO="$(pwd)"

ANNOTATIONS="" VIDEOS="" CLIP="" REVERSED="" WORK="" GPUS=1 GPU_SLOTS=false JOBS=1
HEADS="" SEEDS="0 1 2" EPOCHS="" EXTRA_TRAIN_ARGS="" EXTRA_EXTRACT_ARGS="" EXTRA_VERIFY_ARGS="" TUNE_TRIALS=""
MORE_BACKBONES=""
PRINT_RUNS=false SKIP_RUNS=false
refuse() { echo "run_all.sh: $1" >&2; exit 2; }
# a flag's value: there, and not empty (`--jobs ''` or a trailing `--jobs` would run with a default unseen)
value() { if [ $# -lt 2 ] || [ -z "$2" ]; then refuse "$1 needs a value (see --help)"; fi; }
JOBS_GIVEN=""
while [ $# -gt 0 ]; do
  case "$1" in
    --annotations) value "$@"; ANNOTATIONS="$2"; shift 2 ;;
    --videos) value "$@"; VIDEOS="$2"; shift 2 ;;
    --clip) value "$@"; CLIP="$2"; shift 2 ;;
    --reversed-videos) value "$@"; REVERSED="$2"; shift 2 ;;
    --work) value "$@"; WORK="$2"; shift 2 ;;
    --gpus) value "$@"; GPUS="$2"; JOBS="$2"; GPU_SLOTS=true; shift 2 ;;
    --jobs) value "$@"; JOBS_GIVEN="$2"; shift 2 ;;
    --heads) value "$@"; HEADS="$2"; shift 2 ;;
    --seeds) value "$@"; SEEDS="$2"; shift 2 ;;
    --epochs) value "$@"; EPOCHS="$2"; shift 2 ;;
    --train-args) [ $# -ge 2 ] || refuse "--train-args needs a value (see --help)"; EXTRA_TRAIN_ARGS="$2"; shift 2 ;;
    --extract-args) [ $# -ge 2 ] || refuse "--extract-args needs a value (see --help)"; EXTRA_EXTRACT_ARGS="$2"; shift 2 ;;
    --verify-args) [ $# -ge 2 ] || refuse "--verify-args needs a value (see --help)"; EXTRA_VERIFY_ARGS="$2"; shift 2 ;;
    --tune) value "$@"; TUNE_TRIALS="$2"; shift 2 ;;
    --backbones) value "$@"; MORE_BACKBONES="$2"; shift 2 ;;
    --print-runs) PRINT_RUNS=true; shift ;;
    --skip-runs) SKIP_RUNS=true; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) refuse "unknown argument '$1' (see --help)" ;;
  esac
done

for NAME in ANNOTATIONS VIDEOS CLIP REVERSED WORK; do  # paths are the caller's, whatever folder this runs in
  if [ -n "${!NAME}" ] && [ "${!NAME:0:1}" != / ]; then printf -v "$NAME" '%s/%s' "$CALLER" "${!NAME}"; fi
done
case "$GPUS" in
  ''|*[!0-9]*|0) refuse "--gpus '$GPUS': give a whole number of GPUs, at least 1" ;;
esac
JOBS="${JOBS_GIVEN:-$JOBS}"
for FLAG in EPOCHS TUNE_TRIALS JOBS; do
  if [ -n "${!FLAG}" ] && ! [ "${!FLAG}" -ge 1 ] 2>/dev/null; then
    refuse "--$(echo "$FLAG" | tr 'A-Z_' 'a-z-' | sed 's/-trials//') '${!FLAG}': give a whole number, at least 1"
  fi
done
if $GPU_SLOTS && [ "$JOBS" -gt "$GPUS" ]; then  # each run of the matrix takes one GPU of its own
  refuse "--jobs $JOBS with --gpus $GPUS: each run takes one GPU, so at most $GPUS run at once"
fi
for SEED in $SEEDS; do
  case "$SEED" in *[!0-9]*) refuse "--seeds '$SEEDS': give whole numbers, as \"0 1 2\"" ;; esac
done
[ -n "${SEEDS// /}" ] || refuse "--seeds '$SEEDS': give at least one seed"
# --backbones: each KIND:PATH's path made absolute, and the name its cache, runs and results carry
MORE_SPECS=() MORE_NAMES=()
for SPEC in $MORE_BACKBONES; do
  KIND="${SPEC%%:*}" BACKBONE_PATH="${SPEC#*:}"
  if [ "$KIND" = "$SPEC" ] || [ -z "$KIND" ] || [ -z "$BACKBONE_PATH" ]; then
    refuse "--backbones '$SPEC': give KIND:PATH, e.g. hf:models/siglip (docs/backbones.md)"
  fi
  [ "${BACKBONE_PATH:0:1}" = / ] || BACKBONE_PATH="$CALLER/$BACKBONE_PATH"
  NAME="$(basename "$BACKBONE_PATH" | tr -c 'A-Za-z0-9.\n-' '_')"
  for OTHER in "${MORE_NAMES[@]}"; do
    [ "$OTHER" != "$NAME" ] || refuse "--backbones: two backbones in folders named $NAME; their caches would share a name"
  done
  MORE_SPECS+=("$KIND:$BACKBONE_PATH") MORE_NAMES+=("$NAME")
done
if [ -n "$TUNE_TRIALS" ] && [ ${#MORE_SPECS[@]} -gt 0 ]; then
  refuse "--tune with --backbones: tune one backbone at a time (tune.py), then pass its settings with --train-args"
fi

# The work folder is one driver's: a second run_all.sh on it stops here, before it touches anything
# (the runs' locks and logs are the first one's). Every stage and run it starts stops itself once
# this driver is gone, even killed with SIGKILL (RUN_ALL_DRIVER: infra/cli.py).
if [ -z "$ANNOTATIONS$VIDEOS$CLIP" ]; then WORK="${WORK:-work_demo}"; else WORK="${WORK:-work}"; fi
WORK="$(realpath -m "$WORK")"
if ! $PRINT_RUNS; then
  mkdir -p "$WORK"
  exec 9>>"$WORK/.run_all.lock"  # opened to append: a refused driver truncates nothing
  if ! flock -n 9; then
    refuse "another run_all.sh (pid $(cat "$WORK/.run_all.lock")) is running on $WORK: wait for it to end, or stop it"
  fi
  echo "$$" > "$WORK/.run_all.lock"
  export RUN_ALL_DRIVER="$$"
fi

STAGE="set-up"
trap 'echo "run_all.sh: stage \"$STAGE\" failed; the messages above say why." >&2' ERR
trap 'echo "run_all.sh: hung up; the stage and runs under way stop with it" >&2; exit 129' HUP
if ! $PRINT_RUNS; then
  bash setup_env.sh
fi
PY="$REPO/.venv/bin/python"
declare -A DEMO_ARGS=()  # each head's settings in the demo (a zero-shot head's: its frames, for evaluate.py)
while IFS=$'\t' read -r FACT NAME VALUE; do
  case "$FACT" in
    default) DEFAULT_HEADS="$NAME" ;;
    zero-shot) ZERO_SHOT="$NAME" ;;
    demo) DEMO_ARGS[$NAME]="$VALUE" ;;
  esac
done < <($PY -m heads)
if [ -z "${DEFAULT_HEADS:-}" ]; then
  echo "run_all.sh: $PY -m heads named no head (is .venv set up? bash setup_env.sh)" >&2; exit 2
fi
HEADS="${HEADS:-$DEFAULT_HEADS}"

if [ -z "$ANNOTATIONS$VIDEOS$CLIP" ]; then
  # Demo: small data and a tiny random CLIP, so heads train for many short epochs on the CPU.
  STAGE="demo data"
  if [ ! -f "$WORK/demo/clip_tiny.pt" ] && ! $PRINT_RUNS; then
    $PY make_demo_data.py --out "$WORK/demo"
  fi
  ANNOTATIONS="$WORK/demo/annotations" VIDEOS="$WORK/demo/videos" CLIP="$WORK/demo/clip_tiny.pt"
  REVERSED="$WORK/demo/videos_reversed"
  EXTRACT_ARGS=(--fps 4)
  VERIFY_ARGS=(--n-videos 8)  # lossless demo files: 8 re-extracted videos show as much as 20
  declare -A TRAIN_ARGS=()
  for HEAD in "${!DEMO_ARGS[@]}"; do TRAIN_ARGS[$HEAD]="${DEMO_ARGS[$HEAD]}"; done
  HAND_SET_ARGS="--lr 3e-3"  # what --tune searches instead
else
  if [ -z "$ANNOTATIONS" ] || [ -z "$VIDEOS" ] || [ -z "$CLIP" ]; then
    echo "run_all.sh: a real run needs all of --annotations, --videos and --clip" >&2; exit 2
  fi
  EXTRACT_ARGS=()
  VERIFY_ARGS=()
  declare -A TRAIN_ARGS=()
  HAND_SET_ARGS=""
fi
# shellcheck disable=SC2206  # the pass-through options are word lists, as --train-args
EXTRACT_ARGS+=($EXTRA_EXTRACT_ARGS) VERIFY_ARGS+=($EXTRA_VERIFY_ARGS)
CLIP="$(realpath -m "$CLIP")"  # the printed runs work from any folder (WORK is made absolute above)
# The backbones: --clip's, whose cache, runs and results keep their plain names (cache/, HEAD_seedS),
# then each of --backbones, whose carry its name (cache_NAME/, HEAD_seedS_NAME); a stage is given
# one as its flag and value
BACKBONE_FLAGS=(--clip) BACKBONE_VALUES=("$CLIP") SUFFIXES=("")
for i in "${!MORE_SPECS[@]}"; do
  BACKBONE_FLAGS+=(--backbone) BACKBONE_VALUES+=("${MORE_SPECS[$i]}") SUFFIXES+=("_${MORE_NAMES[$i]}")
done

# The matrix: one self-contained command per (head, seed), training then evaluation. Each is
# idempotent and resumable: training resumes from last.pt (a finished run is a no-op), and the
# evaluation rewrites its result whole.
RUN_NAMES=() RUNS=()
plan_runs() {
  local i head seed args=() chosen=() cache run
  for i in "${!SUFFIXES[@]}"; do
  cache="$WORK/cache${SUFFIXES[$i]}"
  for head in $HEADS; do
    # shellcheck disable=SC2206  # the settings are word lists
    chosen=($HAND_SET_ARGS)  # the demo's hand-set settings, or the ones tune.py chose
    if [ -n "$TUNE_TRIALS" ]; then
      local best="$WORK/tuning/$head/best/$head.json"
      if [ ! -f "$best" ]; then
        echo "run_all.sh: $best is missing: run the search first (the same command without --print-runs)" >&2
        exit 2
      fi
      mapfile -t chosen < <(python3 -c 'import json, sys; print("\n".join(json.load(open(sys.argv[1]))["train_args"]))' "$best")
    fi
    for seed in $SEEDS; do
      run="${head}_seed${seed}${SUFFIXES[$i]}"
      # shellcheck disable=SC2206
      args=(--cache "$cache" --head "$head" --seed "$seed" --out "$WORK/runs/$run" "${BACKBONE_FLAGS[$i]}"
        "${BACKBONE_VALUES[$i]}" --reverse-negatives if-any ${TRAIN_ARGS[$head]:-} ${EPOCHS:+--epochs $EPOCHS}
        "${chosen[@]}" $EXTRA_TRAIN_ARGS)
      RUN_NAMES+=("$run")
      RUNS+=("cd $(printf %q "$REPO") && $(printf '%q ' "$PY" train_head.py "${args[@]}")&& $(printf '%q ' \
        "$PY" evaluate.py --cache "$cache" --split test --ckpt "$WORK/runs/$run/best.pt" \
        --method "$head" --rewrites --keep-finished --out "$WORK/results/$run.json")")
    done
  done
  done
}

if $PRINT_RUNS; then
  plan_runs
  printf '%s\n' "${RUNS[@]}"
  exit 0
fi
mkdir -p "$WORK/runs" "$WORK/results" "$WORK/logs"

for i in "${!SUFFIXES[@]}"; do
  SUFFIX="${SUFFIXES[$i]}" BACKBONE=("${BACKBONE_FLAGS[$i]}" "${BACKBONE_VALUES[$i]}") CACHE="$WORK/cache${SUFFIXES[$i]}"
  STAGE="extract$SUFFIX"
  if [ "$GPUS" -gt 1 ]; then
    .venv/bin/torchrun --nproc_per_node="$GPUS" extract.py --annotations "$ANNOTATIONS" --videos "$VIDEOS" \
      "${BACKBONE[@]}" --out "$CACHE" "${EXTRACT_ARGS[@]}"
  else
    $PY extract.py --annotations "$ANNOTATIONS" --videos "$VIDEOS" "${BACKBONE[@]}" --out "$CACHE" "${EXTRACT_ARGS[@]}"
  fi

  STAGE="verify$SUFFIX"
  VERIFY=(verify.py --cache "$CACHE" --annotations "$ANNOTATIONS" --videos "$VIDEOS" "${BACKBONE[@]}"
    ${REVERSED:+--reversed-videos "$REVERSED"} "${VERIFY_ARGS[@]}")
  # what verify passed on: the cache's meta (which pins every file of the cache, the videos and the
  # backbone) and the options; the same again is not verified again
  VERIFIED="$(sha256sum "$CACHE/cache_meta.json" | cut -d' ' -f1) ${VERIFY[*]}"
  STAMP="$WORK/logs/verify$SUFFIX.passed"
  if [ "$(cat "$STAMP" 2>/dev/null)" = "$VERIFIED" ]; then
    echo "verify: passed before on this cache_meta.json with these options; not run again (delete $STAMP to)"
  else
    $PY "${VERIFY[@]}"
    printf '%s\n' "$VERIFIED" > "$STAMP.tmp" && mv "$STAMP.tmp" "$STAMP"
  fi

  for HEAD in $ZERO_SHOT; do
    STAGE="evaluate $HEAD$SUFFIX"
    # shellcheck disable=SC2086  # the demo's settings are a word list
    $PY evaluate.py --cache "$CACHE" --split test --head "$HEAD" ${TRAIN_ARGS[$HEAD]:-} --rewrites --keep-finished \
      --out "$WORK/results/$HEAD$SUFFIX.json"
  done
done
CACHE="$WORK/cache"  # --clip's: what a search of settings (--tune) runs on

if [ -n "$TUNE_TRIALS" ]; then
  for HEAD in $HEADS; do
    STAGE="tune $HEAD"
    $PY tune.py --cache "$CACHE" --clip "$CLIP" --heads "$HEAD" --trials "$TUNE_TRIALS" --out "$WORK/tuning/$HEAD" \
      --train-args "--reverse-negatives if-any ${TRAIN_ARGS[$HEAD]:-} ${EPOCHS:+--epochs $EPOCHS} $EXTRA_TRAIN_ARGS"
  done
fi
if $SKIP_RUNS; then
  echo "Done (--skip-runs): the cache, the zero-shot result and any search are ready; the runs: --print-runs"
  exit 0
fi

# Run the matrix JOBS at a time, each in its own process group with its own log; with --gpus, each
# on one GPU (CUDA_VISIBLE_DEVICES), else with the CPU's threads divided among the runs. The first
# failure stops the others and is named.
STAGE="runs"
plan_runs
THREADS=$(( $(nproc) / JOBS )); THREADS=$(( THREADS > 0 ? THREADS : 1 ))
declare -A NAME_OF=() SLOT_OF=() STARTED=()
FREE_SLOTS=()
for ((slot = 0; slot < JOBS; slot++)); do FREE_SLOTS+=("$slot"); done
stop_runs() {
  local pid
  for pid in "${!NAME_OF[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap 'stop_runs; echo "run_all.sh: interrupted; finished runs are kept, rerun to resume" >&2; exit 130' INT TERM HUP
echo "running ${#RUNS[@]} runs, $JOBS at a time (logs: $WORK/logs/)"
NEXT=0 FINISHED=0
while [ "$FINISHED" -lt "${#RUNS[@]}" ]; do
  while [ "$NEXT" -lt "${#RUNS[@]}" ] && [ "${#FREE_SLOTS[@]}" -gt 0 ]; do
    SLOT="${FREE_SLOTS[0]}"; FREE_SLOTS=("${FREE_SLOTS[@]:1}")
    if $GPU_SLOTS; then DEVICE_ENV=(CUDA_VISIBLE_DEVICES="$SLOT"); else DEVICE_ENV=(OMP_NUM_THREADS="$THREADS"); fi
    env "${DEVICE_ENV[@]}" setsid bash -c "${RUNS[$NEXT]}" > "$WORK/logs/${RUN_NAMES[$NEXT]}.log" 2>&1 &
    NAME_OF[$!]="${RUN_NAMES[$NEXT]}" SLOT_OF[$!]="$SLOT" STARTED[$!]="$SECONDS"
    NEXT=$((NEXT + 1))
  done
  if wait -n -p DONE_PID; then STATUS=0; else STATUS=$?; fi
  NAME="${NAME_OF[$DONE_PID]}"
  FREE_SLOTS+=("${SLOT_OF[$DONE_PID]}")
  unset "NAME_OF[$DONE_PID]" "SLOT_OF[$DONE_PID]"
  FINISHED=$((FINISHED + 1))
  if [ "$STATUS" -ne 0 ]; then
    echo "run_all.sh: run $NAME failed (exit $STATUS); see $WORK/logs/$NAME.log, which ends:" >&2
    tail -n 3 "$WORK/logs/$NAME.log" | sed 's/^/  | /' >&2
    echo "run_all.sh: stopping the ${#NAME_OF[@]} other running run(s)." >&2
    stop_runs
    exit 1
  fi
  echo "[$FINISHED/${#RUNS[@]}] $NAME done in $((SECONDS - STARTED[$DONE_PID])) s"
done
trap - INT TERM HUP

STAGE="report"
$PY report.py --results "$WORK/results" --out "$WORK/report" --examples 3 --videos "$VIDEOS" --convention carebench
echo "Done. Report: $WORK/report/report.md"
