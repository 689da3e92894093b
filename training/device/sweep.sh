#!/usr/bin/env bash
# Train several ResNet9 runs side by side on the lent GPU machine, then put their logs and
# the best runs' weights into $OUT within the device tool's limits.  See training/device/README.md.
#
#   bash training/device/sweep.sh NAME:"ARGS" [NAME:"ARGS" ...] [--then NAME:"ARGS" ...]
#
# NAME: letters, digits, _ and -.  ARGS: extra arguments of python -m training.train, split on
# blanks (no quoting inside).  In ARGS, @VOTES is the unpacked FER+ votes file, @DATA the
# unpacked npz, @EPOCHS the epochs that fit the time left (every run of the stage first runs
# training.train --probe SWEEP_PROBE side by side; the time left, less SWEEP_LATER seconds
# when later stages follow, less a SWEEP_MARGIN fraction, over the probe's seconds an
# epoch, at most SWEEP_MOST) and @TMP the scratch folder: a run's weights are at @TMP/out_NAME, so a run
# after --then can distil from an earlier one (--teacher @TMP/out_A), in this call or in a
# later call on the still-warm machine.  Runs of one stage start together; --then starts a
# new stage once every run of the one before has ended.
#
# Every run: python -m training.train --data @DATA --device $SWEEP_DEVICE
#   --checkpoint-dir @TMP/ck_NAME --out @TMP/out_NAME --save-every 0 --threads CORES/RUNS ARGS
# under timeout, so that everything ends SWEEP_WALL seconds after the start.  A run killed
# by the timeout keeps its best export so far and its per-epoch checkpoint (go on with the
# same NAME and ARGS plus --resume in a later call on the warm machine).
#
# Environment (defaults):
#   PYTHON=python3  SWEEP_DEVICE=cuda  SWEEP_WALL=540 (seconds, the whole script)
#   SWEEP_PROBE=30 SWEEP_MARGIN=0.1 SWEEP_MOST=300 SWEEP_LATER=0 (@EPOCHS, above)
#   SWEEP_RESERVE=35 (seconds kept for collecting)  SWEEP_LIMIT=0 (>0: --limit N for every run)
#   SWEEP_KEEP=3 (weights of at most this many runs, best PublicTest accuracy with flip first;
#   three fp16 exports of 20.6 MiB are all that fit in 64 MiB)  SWEEP_PACK=.device  SWEEP_TMP=/tmp
#   SWEEP_ONNX=0 (1: let training write its 21 MB ONNX graph at every improvement; 0 hides the
#   onnx package from training, which then warns and skips it: python -m training.network DIR
#   makes it here)  SWEEP_THREADS (per run; default cores / runs in the stage)  OUT (required)
set -uo pipefail
T0=$(date +%s)
PY=${PYTHON:-python3}
WALL=${SWEEP_WALL:-540}
RESERVE=${SWEEP_RESERVE:-35}
DEV=${SWEEP_DEVICE:-cuda}
LIMIT=${SWEEP_LIMIT:-0}
KEEP=${SWEEP_KEEP:-3}
PACK=${SWEEP_PACK:-.device}
TMPD=${SWEEP_TMP:-/tmp}
PROBE=${SWEEP_PROBE:-30}
MARGIN=${SWEEP_MARGIN:-0.1}
MOST=${SWEEP_MOST:-300}
: "${OUT:?OUT must name the folder whose files come back (the device tool sets it)}"
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/../.." || exit 2
CORES=$(nproc)
mkdir -p "$TMPD" "$OUT"
say() { echo "[sweep +$(( $(date +%s) - T0 ))s] $*"; }

# ---- the runs ----------------------------------------------------------------------------
NAMES=(); ARGS=(); STAGES=(); stage=0
for word in "$@"; do
  if [[ $word == --then ]]; then stage=$((stage + 1)); continue; fi
  if [[ $word != *:* ]]; then echo "sweep: '$word' is not NAME:ARGS" >&2; exit 2; fi
  name=${word%%:*}
  if [[ ! $name =~ ^[A-Za-z0-9_-]+$ ]]; then echo "sweep: bad run name '$name'" >&2; exit 2; fi
  for n in "${NAMES[@]}"; do [[ $n == "$name" ]] && { echo "sweep: run '$name' twice" >&2; exit 2; }; done
  NAMES+=("$name"); ARGS+=("${word#*:}"); STAGES+=("$stage")
done
(( ${#NAMES[@]} )) || { echo "usage: bash training/device/sweep.sh NAME:\"ARGS\" ... [--then NAME:\"ARGS\" ...]" >&2; exit 2; }
say "${#NAMES[@]} runs in $((stage + 1)) stage(s) on $DEV, $CORES cores, wall ${WALL}s; $($PY -c 'import torch; print("torch", torch.__version__, "cuda" if torch.cuda.is_available() else "no cuda")' 2>&1 | tail -1)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv,noheader

# ---- the data ----------------------------------------------------------------------------
DATA=$TMPD/fer.npz
# The votes go beside the data, as in ../shared, so that the exported manifests hold the FER+
# majority figures as they do here.
VDIR=$TMPD
VOTES=$VDIR/ferplus_votes_train_val.npz
if [[ -f $PACK/pack.json ]]; then
  want=$(sha256sum "$PACK/pack.json" | cut -d' ' -f1)
  VOTES=$VDIR/$($PY -c 'import json,sys; print(json.load(open(sys.argv[1])).get("votes", {}).get("file", "no-votes"))' "$PACK/pack.json")
  if [[ -f $DATA && -f $VOTES && "$(cat "$DATA.pack" 2>/dev/null)" == "$want" ]]; then
    say "data: $DATA already unpacked from this pack (warm machine)"
  else
    rm -f "$TMPD/ferplus_votes_train_val.npz"
    $PY -m training.device.pack --unpack "$PACK" --to "$DATA" --votes-to "$VOTES" || { say "data: unpacking failed"; exit 3; }
    echo "$want" > "$DATA.pack"
  fi
elif [[ -f $DATA.pack && -f $DATA ]]; then
  say "data: no $PACK/pack.json in this call; using $DATA unpacked by an earlier call"
else
  say "data: no $PACK/pack.json and nothing unpacked yet: pack (python -m training.device.pack) and carry $PACK"; exit 3
fi

# ---- onnx hidden from training (it would write a 21 MB graph at every improvement) --------
PYPATH=${PYTHONPATH:-}
if [[ ${SWEEP_ONNX:-0} != 1 ]]; then
  mkdir -p "$TMPD/sweep-noonnx/onnx"
  echo 'raise ImportError("onnx hidden by training/device/sweep.sh (SWEEP_ONNX=0)")' > "$TMPD/sweep-noonnx/onnx/__init__.py"
  if PYTHONPATH=$TMPD/sweep-noonnx${PYPATH:+:$PYPATH} $PY -c 'import training.train' 2>/dev/null; then
    PYPATH=$TMPD/sweep-noonnx${PYPATH:+:$PYPATH}
  else
    say "onnx: training does not import with onnx hidden; leaving it visible"
  fi
fi

# ---- the stages --------------------------------------------------------------------------
heartbeat() {  # one line a minute: each run's last logged epoch
  local sp=""
  trap 'kill $sp 2>/dev/null; exit 0' TERM  # and its sleep with it: nothing may hold stdout open
  while :; do
    sleep 60 & sp=$!; wait $sp
    say "epoch, PublicTest flip: $($PY -m training.device.gather heartbeat --tmp "$TMPD" "$@")"
  done
}

build() {  # build NAME ARGS: the run's command line in cmd
  local a=$2
  a=${a//@VOTES/$VOTES}; a=${a//@DATA/$DATA}; a=${a//@TMP/$TMPD}
  read -ra extra <<< "$a"
  cmd=("$PY" -m training.train --data "$DATA" --device "$DEV" --checkpoint-dir "$TMPD/ck_$1"
       --out "$TMPD/out_$1" --save-every 0 --threads "$threads")
  (( LIMIT > 0 )) && cmd+=(--limit "$LIMIT")
  cmd+=("${extra[@]}")
}

for s in $(seq 0 "$stage"); do
  idx=(); for i in "${!NAMES[@]}"; do [[ ${STAGES[$i]} == "$s" ]] && idx+=("$i"); done
  (( ${#idx[@]} )) || continue
  left=$(( T0 + WALL - RESERVE - $(date +%s) ))
  if (( left < 20 )); then say "stage $s: only ${left}s left, not started"; break; fi
  threads=${SWEEP_THREADS:-$(( CORES / ${#idx[@]} ))}; (( threads < 1 )) && threads=1
  # @EPOCHS: every run of the stage first probes its own steps side by side (as they will
  # share the device), then each @EPOCHS becomes the epochs that fit the time left, so that
  # the schedule (its cosine end included) completes before the wall.
  declare -A FIT=()
  fitting=0; for i in "${idx[@]}"; do [[ ${ARGS[$i]} == *@EPOCHS* ]] && fitting=1; done
  if (( fitting )); then
    ppids=(); pnames=()
    for i in "${idx[@]}"; do
      n=${NAMES[$i]}; build "$n" "${ARGS[$i]//@EPOCHS/$MOST}"  # as many steps as the probe may take
      say "stage $s: probe $n ($PROBE steps)"
      ( p0=$(date +%s%N)
        PYTHONPATH=$PYPATH timeout --signal=TERM --kill-after=10 "$(( left / 3 ))" "${cmd[@]}" --probe "$PROBE" \
          > "$TMPD/probe_$n.log" 2>&1
        ms=$(( ($(date +%s%N) - p0) / 1000000 )); printf '%d.%03d\n' $(( ms / 1000 )) $(( ms % 1000 )) > "$TMPD/probe_$n.seconds" ) &
      ppids+=($!); pnames+=("$n")
    done
    wait "${ppids[@]}"
    left=$(( T0 + WALL - RESERVE - $(date +%s) ))
    later=0; (( s < stage )) && later=${SWEEP_LATER:-0}
    while read -r n e; do FIT[$n]=$e; done < <($PY -m training.device.gather epochs --tmp "$TMPD" \
        --left "$(( left - later ))" --margin "$MARGIN" --most "$MOST" "${pnames[@]}")
    say "stage $s: @EPOCHS for ${left}s (${later}s kept for later stages): $(for n in "${pnames[@]}"; do printf '%s=%s ' "$n" "${FIT[$n]:--}"; done)"
  fi
  pids=(); names=()
  for i in "${idx[@]}"; do
    n=${NAMES[$i]}; a=${ARGS[$i]}
    if [[ $a == *@EPOCHS* ]]; then
      if [[ ${FIT[$n]:--} == - ]]; then
        say "stage $s: $n not started: its probe printed no timings:"; tail -n 15 "$TMPD/probe_$n.log"
        cp "$TMPD/probe_$n.log" "$TMPD/stdout_$n.log"; echo probe-failed > "$TMPD/rc_$n"; continue
      fi
      a=${a//@EPOCHS/${FIT[$n]}}
    fi
    build "$n" "$a"
    if [[ " $a " != *" --resume "* ]]; then rm -rf "$TMPD/ck_$n" "$TMPD/out_$n"; fi
    printf '%q ' "${cmd[@]}" > "$TMPD/cmd_$n"; echo >> "$TMPD/cmd_$n"
    echo "$s $threads $(date +%s)" > "$TMPD/meta_$n"
    say "stage $s: start $n (${left}s): ${cmd[*]:3}"
    ( PYTHONPATH=$PYPATH timeout --signal=TERM --kill-after=10 "$left" "${cmd[@]}" > "$TMPD/stdout_$n.log" 2>&1
      echo $? > "$TMPD/rc_$n"; date +%s > "$TMPD/end_$n" ) &
    pids+=($!); names+=("$n")
  done
  heartbeat "${names[@]}" & hb=$!
  wait "${pids[@]}"
  kill "$hb" 2>/dev/null; wait "$hb" 2>/dev/null
  for n in "${names[@]}"; do
    rc=$(cat "$TMPD/rc_$n"); say "stage $s: $n ended, exit $rc$( [[ $rc == 124 || $rc == 137 ]] && echo ' (wall limit)')"
    [[ $rc != 0 && $rc != 124 && $rc != 137 ]] && tail -n 15 "$TMPD/stdout_$n.log"
  done
done

# ---- what comes back ---------------------------------------------------------------------
$PY -m training.device.gather collect --tmp "$TMPD" --out "$OUT" --keep "$KEEP" "${NAMES[@]}"
rc=$?
say "done (collect exit $rc); \$OUT: $(ls "$OUT" | tr '\n' ' ')"
exit $rc
