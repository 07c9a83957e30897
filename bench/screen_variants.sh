#!/usr/bin/env bash
# Train variants of one preset side by side on one device, then score each the same way.
#   bash bench/screen_variants.sh OUT BUDGET_S KIND PRESET NAME='--set a=b --set c=d' NAME2='...' ...
# e.g. bash bench/screen_variants.sh runs/screen 500 ddpm cpu base='' ema9995='--set train.ema_decay=0.9995'
# Every variant trains in its own process at once (a GPU that one small network leaves idle between
# kernel launches runs several; on a 2-core CPU run one variant at a time, with DEVICE=cpu SCORE_S=300),
# under a timeout that keeps SCORE_S seconds (default 110) of BUDGET_S for scoring. A finished run is
# scored with `mnistgen evaluate` (its preset's sampler, 1,000 samples, the bundled classifier) and
# drawn as an 8x8 grid from seed 0. OUT must be new or empty.
# A screen on a GPU measures which settings pay, not the CPU's timings, and uses the GPU's noise.
# OUT/summary.txt has one line per variant; OUT/results.tgz packs the scores, grids and histories (both are
# also copied into $OUT when that names a folder). Exit status 1 when a variant did not finish.
set -uo pipefail
(($# >= 5)) || { echo "usage: $0 OUT BUDGET_S KIND PRESET NAME='ARGS' ..." >&2; exit 2; }
out=$(realpath -m "$1") budget=$2 kind=$3 preset=$4
shift 4
cd "$(dirname "$0")/.."
device=${DEVICE:-cuda}
score_s=${SCORE_S:-110}
declare -A seen
for spec in "$@"; do
    name=${spec%%=*}
    [[ $spec == *=* && $name =~ ^[A-Za-z0-9_-]+$ && -z ${seen[$name]:-} ]] \
        || { echo "bad variant '$spec': NAME='ARGS', NAME unique (letters, digits, _ -), ARGS may be empty" >&2; exit 2; }
    seen[$name]=1
done
((score_s >= 70)) || { echo "SCORE_S must be at least 70 s (evaluation and grid)" >&2; exit 2; }
((budget > score_s + 60)) || { echo "BUDGET_S must exceed SCORE_S ($score_s) by a minute of training at least" >&2; exit 2; }
[ -e "$out" ] && [ -n "$(ls -A "$out")" ] && { echo "$out exists and is not empty; name a new folder" >&2; exit 2; }
start=$SECONDS
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
log() { echo "[+$((SECONDS - start))s] $*" | tee -a "$out/summary.txt"; }
log "$(python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else "no cuda")')"

names=()
for spec in "$@"; do  # NAME=ARGS
    name=${spec%%=*} args=${spec#*=}
    names+=("$name")
    # shellcheck disable=SC2086  # ARGS is a list of --set options
    timeout -s INT -k 10 $((budget - score_s)) python3 -m mnistgen train "$kind" --preset "$preset" --device "$device" \
        --no-progress --out "$out/$name" $args > "$out/$name.train.log" 2>&1 &
done
wait
log "training done"

score() {
    local name=$1 run=$out/$1
    if ! python3 -c "
import json, sys
h = json.load(open(sys.argv[1] + '/history.json')); c = json.load(open(sys.argv[1] + '/config.json'))
sys.exit(h[-1]['epoch'] != c['train']['epochs'])" "$run" 2> /dev/null; then
        log "$name: not finished ($(tail -1 "$run.train.log"))"
        return 1
    fi
    timeout $((score_s - 40)) python3 -m mnistgen evaluate "$run" --n 1000 --device "$device" --no-progress > "$run.eval.log" 2>&1
    local rc=$?
    if ((rc != 0)); then
        log "$name: evaluation failed (exit $rc$( ((rc == 124)) && echo ", past its $((score_s - 40)) s limit"))"
        return 1
    fi
    timeout 30 python3 -m mnistgen sample "$run" --n 64 --seed 0 --device "$device" --no-progress \
        --out "$out/$name-grid.png" > /dev/null 2>&1
    log "$name: $(python3 -c "
import json, sys
m = json.load(open(sys.argv[1] + '/metrics.json')); h = json.load(open(sys.argv[1] + '/history.json'))
print(f\"MNIST-FD {m['mnist_fd']:.2f} +- {m['mnist_fd_std']:.2f}, KID {m['kid']:.2f}, val loss {h[-1]['val_loss']:.4f},\",
      f\"{sum(r['images_per_s'] for r in h) / len(h):.0f} images/s (shared device)\")" "$run" 2>&1 | tail -1)"
}
pids=()
for name in "${names[@]}"; do score "$name" & pids+=($!); done
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
log "done"
tar czf "$out/results.tgz" -C "$out" --exclude='*/checkpoints' --exclude='*.npz' --exclude=results.tgz . 2> /dev/null
[ -d "${OUT:-}" ] && cp "$out/results.tgz" "$out/summary.txt" "$OUT/"
exit $failed
