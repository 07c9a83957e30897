#!/usr/bin/env bash
# Train variants of one preset side by side on one device, then score each the same way.
#   bash bench/screen_variants.sh OUT BUDGET_S KIND PRESET NAME='--set a=b --set c=d' NAME2='...' ...
# e.g. bash bench/screen_variants.sh runs/screen 500 ddpm cpu base='' ema9995='--set train.ema_decay=0.9995'
# Every variant trains in its own process at once (a GPU that one small network leaves idle between
# kernel launches runs several; on a 2-core CPU run one variant per call instead), under a timeout
# that keeps 80 s of BUDGET_S for scoring. A finished run is scored with `mnistgen evaluate` (its
# preset's sampler, 1,000 samples, the bundled classifier) and drawn as an 8x8 grid from seed 0.
# A screen on a GPU measures which settings pay, not the CPU's timings, and uses the GPU's noise.
# OUT/summary.txt has one line per variant; OUT/results.tgz packs the scores, grids and histories.
set -uo pipefail
cd "$(dirname "$0")/.."
out=$1 budget=$2 kind=$3 preset=$4
shift 4
device=${DEVICE:-cuda}
start=$SECONDS
rm -rf "$out" && mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
log() { echo "[+$((SECONDS - start))s] $*" | tee -a "$out/summary.txt"; }
log "$(python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else "no cuda")')"

names=()
for spec in "$@"; do  # NAME=ARGS
    name=${spec%%=*} args=${spec#*=}
    names+=("$name")
    # shellcheck disable=SC2086  # ARGS is a list of --set options
    timeout -s INT -k 10 $((budget - 80)) python3 -m mnistgen train "$kind" --preset "$preset" --device "$device" \
        --no-progress --out "$out/$name" $args > "$out/$name.train.log" 2>&1 &
done
wait
log "training done"

score() {
    local name=$1 run=$out/$1
    if ! grep -q '"epoch"' "$run/history.json" 2> /dev/null || ! python3 -c "
import json, sys
h = json.load(open('$run/history.json')); c = json.load(open('$run/config.json'))
sys.exit(h[-1]['epoch'] != c['train']['epochs'])" 2> /dev/null; then
        log "$name: not finished ($(tail -1 "$run.train.log"))"
        return
    fi
    timeout 70 python3 -m mnistgen evaluate "$run" --n 1000 --device "$device" --no-progress > "$run.eval.log" 2>&1
    timeout 30 python3 -m mnistgen sample "$run" --n 64 --seed 0 --device "$device" --no-progress \
        --out "$out/$name-grid.png" > /dev/null 2>&1
    log "$name: $(python3 -c "
import json
m = json.load(open('$run/metrics.json')); h = json.load(open('$run/history.json'))
print(f\"MNIST-FD {m['mnist_fd']:.2f} +- {m['mnist_fd_std']:.2f}, KID {m['kid']:.2f}, val loss {h[-1]['val_loss']:.4f},\",
      f\"{sum(r['images_per_s'] for r in h) / len(h):.0f} images/s (shared device)\")" 2>&1 | tail -1)"
}
for name in "${names[@]}"; do score "$name" & done
wait
log "done"
tar czf "$out/results.tgz" -C "$out" --exclude='*/checkpoints' --exclude='*.npz' --exclude=results.tgz . 2> /dev/null
cp "$out/results.tgz" "$out/summary.txt" "${OUT:-$out}/" 2> /dev/null || true
