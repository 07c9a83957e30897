#!/usr/bin/env bash
# The device checks that need a CUDA GPU, in one go; paste the summary into bench/README.md ("GPU").
#   bash bench/gpu_checklist.sh [OUT]      (default OUT: runs/gpu-checklist)
# 1. kill -9 a `train ddpm --preset reference` run after its first checkpoint, then --resume it;
# 2. one epoch with fp16 + GradScaler forced, one with bf16 (images/s from history.json);
# 3. python bench/gpu_throughput.py.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/gpu-checklist}
rm -rf "$out" && mkdir -p "$out"
log() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$out/summary.txt"; }
log "$(python -c 'import torch; print(torch.__version__, torch.cuda.get_device_name(), torch.cuda.get_device_capability())')"

mnistgen train ddpm --preset reference --device cuda --no-progress --out "$out/killed" --epochs 2 \
    --set train.checkpoint_minutes=0.5 > "$out/killed.log" 2>&1 &
pid=$!
while [ ! -f "$out/killed/checkpoints/last.pt" ] && kill -0 $pid 2>/dev/null; do sleep 1; done
kill -9 $pid; wait $pid 2>/dev/null
log "killed after the first checkpoint: $(python -c "import torch; s = torch.load('$out/killed/checkpoints/last.pt', map_location='cpu', weights_only=False); print('epoch', s['epoch'], 'batch', s['batch'], 'step', s['step'])")"
if mnistgen train ddpm --resume --device cuda --no-progress --out "$out/killed" > "$out/resume.log" 2>&1; then
    log "resume: ok ($(tail -1 "$out/resume.log"))"
else
    log "resume: FAILED, see $out/resume.log"; tail -5 "$out/resume.log" | tee -a "$out/summary.txt"
fi

for amp in fp16 bf16; do
    if mnistgen train ddpm --preset reference --device cuda --no-progress --epochs 1 --set train.amp=$amp \
        --out "$out/amp-$amp" > "$out/amp-$amp.log" 2>&1; then
        log "one epoch, train.amp=$amp: $(python -c "import json; r = json.load(open('$out/amp-$amp/history.json'))[-1]; print(f\"{r['images_per_s']:.0f} images/s, train loss {r['train_loss']:.4f}, val loss {r['val_loss']:.4f}\")")"
    else
        log "one epoch, train.amp=$amp: FAILED, see $out/amp-$amp.log"
    fi
done

python bench/gpu_throughput.py 2>&1 | tee "$out/gpu_throughput.log" | tail -20
log "done"
