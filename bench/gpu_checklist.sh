#!/usr/bin/env bash
# The device checks that need a CUDA GPU, in one go, inside a time budget; paste the summary into
# docs/benchmarks.md ("GPU").
#   bash bench/gpu_checklist.sh [OUT] [BUDGET_S]     (defaults: runs/gpu-checklist, 540 s)
# Each step runs under a timeout that ends it before the budget does; a step that no longer fits
# is skipped and says so. In order of what matters most:
#   1. the smoke study end to end on the GPU (every model, sampler, metric, figure and the report);
#   2. kill -9 a `train ddpm --preset reference` run after its first checkpoint, then --resume it;
#   3. one reference DDPM epoch with fp16 + GradScaler forced (the T4 path) and one with bf16;
#   4. torchrun with nccl, one process per GPU (needs two or more GPUs; gloo with two processes on a CPU);
#   5. the `cpu` study end to end on the GPU (wall time and scores beside the CPU's);
#   6. 1,000 reference DDPM samples with ancestral-1000 (the study's sampler);
#   7. python bench/gpu_throughput.py;
#   8. the test suite with CUDA visible.
# What to bring back (logs, scores, figures, a CUDA-written checkpoint and the exported models) is
# packed into OUT/results.tgz. STEPS="study pytest" (say) runs only the named steps (smoke resume amp
# torchrun study ancestral throughput pytest). DEVICE=cpu REF_PRESET=smoke STUDY_PRESET=smoke runs the
# same steps on a CPU as a rehearsal.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/gpu-checklist}
budget=${2:-540}
device=${DEVICE:-cuda}
ref=${REF_PRESET:-reference}
study=${STUDY_PRESET:-cpu}
steps=" ${STEPS:-smoke resume amp torchrun study ancestral throughput pytest} "
want() { [[ $steps == *" $1 "* ]]; }
start=$SECONDS
rm -rf "$out" && mkdir -p "$out" && touch "$out/.started"
log() { echo "[$(date +%H:%M:%S) +$((SECONDS - start))s] $*" | tee -a "$out/summary.txt"; }

# step NAME CAP CMD...: run CMD (output in OUT/NAME.log) for at most CAP seconds and never past the budget
# (the budget keeps 25 s for packing, and up to 20 s more for a command that ignores SIGINT)
step() {
    local name=$1 cap=$2
    shift 2
    local t=$((budget - (SECONDS - start) - 45))
    ((t > cap)) && t=$cap
    if ((t < 15)); then
        log "$name: skipped (budget spent)"
        return 99
    fi
    local s=$SECONDS
    timeout -s INT -k 20 "$t" "$@" > "$out/$name.log" 2>&1  # SIGINT first: pytest still prints its summary
    local rc=$?
    local why=""
    ((rc == 124)) && why=" (stopped at its $t s limit)"
    ((rc == 137)) && why=" (killed: its $t s limit, or memory)"
    log "$name: exit $rc after $((SECONDS - s)) s$why"
    ((rc == 0)) || tail -4 "$out/$name.log" | sed 's/^/    /' | tee -a "$out/summary.txt"
    return $rc
}
py() { python3 -c "$@" 2>&1 | tee -a "$out/summary.txt"; }
epoch_line() {  # the last epoch of a run's history
    py "import json; r = json.load(open('$1/history.json'))[-1]; print(f\"    epoch {r['epoch']}: {r['images_per_s']:.0f} images/s, train loss {r['train_loss']:.4f}, val loss {r['val_loss']:.4f}\")"
}
scores() {  # the headline scores of a study
    py "
import json
for kind in ('vae', 'ddpm', 'cfg'):
    m = json.load(open('$1/' + kind + '/metrics.json'))
    keys = ('sampler', 'steps', 'n_samples', 'mnist_fd', 'mnist_fd_std', 'kid', 'class_accuracy', 'val_neg_elbo',
            'iwae_nll', 'sample_seconds')
    print('    ' + kind + ':', {k: round(m[k], 4) if isinstance(m[k], float) else m[k] for k in keys if k in m})"
}

log "$(nvidia-smi -L 2>/dev/null | head -4)"
log "$(python3 -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, *([torch.cuda.get_device_name(), torch.cuda.get_device_capability()] if torch.cuda.is_available() else ["no cuda"]))')"
if ! command -v mnistgen > /dev/null; then  # a machine with torch but without mnistgen: install it offline
    python3 -m pip install -q --no-deps --no-build-isolation -e . > "$out/install.log" 2>&1 \
        || log "pip install failed ($(tail -1 "$out/install.log")); running from src/"
    if ! command -v mnistgen > /dev/null; then
        bin="$(cd "$out" && pwd)/bin"
        mkdir -p "$bin" && printf '#!/bin/sh\nexec python3 -m mnistgen "$@"\n' > "$bin/mnistgen"
        chmod +x "$bin/mnistgen" && export PATH="$bin:$PATH" PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
    fi
fi
nproc=$([ "$device" = cuda ] && python3 -c 'import torch; print(torch.cuda.device_count())' || echo 2)

# 1. the smoke study, end to end
want smoke && step smoke-study 120 mnistgen reproduce --preset smoke --device "$device" --no-progress --out "$out/smoke" \
    && log "$(tail -1 "$out/smoke-study.log")"

# 2. kill -9 after the first checkpoint, then resume
want resume && ((budget - (SECONDS - start) > 120)) && {
    mnistgen train ddpm --preset "$ref" --device "$device" --no-progress --out "$out/killed" --epochs 2 \
        --set train.checkpoint_minutes=0.1 > "$out/killed.log" 2>&1 &
    pid=$!
    s=$SECONDS
    while [ ! -f "$out/killed/checkpoints/last.pt" ] && kill -0 $pid 2> /dev/null && ((SECONDS - s < 90)); do sleep 0.5; done
    kill -9 $pid 2> /dev/null
    wait $pid 2> /dev/null
    if [ -f "$out/killed/checkpoints/last.pt" ]; then
        log "killed after the first checkpoint ($((SECONDS - s)) s): $(python3 -c "import torch; s = torch.load('$out/killed/checkpoints/last.pt', map_location='cpu', weights_only=True); print('epoch', s['epoch'], 'batch', s['batch'], 'step', s['step'])" 2>&1 | tail -1)"
        step resume 120 mnistgen train ddpm --resume --device "$device" --no-progress --out "$out/killed" \
            && epoch_line "$out/killed"
    else
        log "kill -9: no checkpoint within $((SECONDS - s)) s"
        tail -4 "$out/killed.log" | sed 's/^/    /' | tee -a "$out/summary.txt"
    fi
}

# 3. one reference epoch in fp16 + GradScaler (forced, the T4 path) and in bf16
want amp && for amp in fp16 bf16; do
    step "amp-$amp" 90 mnistgen train ddpm --preset "$ref" --device "$device" --no-progress --epochs 1 \
        --set train.amp=$amp --out "$out/amp-$amp" && epoch_line "$out/amp-$amp"
done

# 4. torchrun: DistributedDataParallel over nccl, one process per GPU (gloo with two processes on a CPU);
#    one process is no test (no process group is formed) and nccl refuses two processes on one GPU
if want torchrun && ((nproc < 2)); then
    log "torchrun: skipped (one GPU: DDP over nccl needs two)"
elif want torchrun; then
    step torchrun 90 torchrun --standalone --nproc_per_node="$nproc" -m mnistgen train ddpm --preset smoke \
        --device "$device" --no-progress --out "$out/ddp" && epoch_line "$out/ddp"
fi

# 5. the cpu study, end to end
want study && step cpu-study 300 mnistgen reproduce --preset "$study" --device "$device" --no-progress --out "$out/study" \
    && { log "$(tail -1 "$out/cpu-study.log")"; scores "$out/study"; }
[ -f "$out/study/cfg/metrics.json" ] && step export 60 mnistgen export "$out/study" --to "$out/export" \
    --trained-on "$(python3 -c "import torch; print(torch.cuda.get_device_name() if '$device' == 'cuda' else 'cpu')"), torch $(python3 -c 'import torch; print(torch.__version__)')"

# 6. the study's sampler on the reference network (one epoch of training: time only)
want ancestral && ! [ -f "$out/amp-bf16/checkpoints/last.pt" ] && log "ancestral-1000: skipped (no amp-bf16 run)"
want ancestral && [ -f "$out/amp-bf16/checkpoints/last.pt" ] && step ancestral-1000 90 mnistgen sample "$out/amp-bf16" --n 1000 \
    --sampler ancestral --steps 1000 --device "$device" --no-progress --out "$out/ancestral1000.png"

# 7. throughput: the usual way of training against mnistgen's
if ! want throughput; then
    :
elif [ "$device" = cuda ]; then
    step throughput 150 python3 bench/gpu_throughput.py --steps 30 --rounds 2 --warmup 10 \
        && tail -9 "$out/throughput.log" | tee -a "$out/summary.txt"
else
    step throughput 150 python3 bench/gpu_throughput.py --device cpu --preset smoke --steps 3 --rounds 1 --warmup 1
fi
find bench/results -name "gpu-*.json" -newer "$out/.started" -exec cp {} "$out/" \;  # written by this run

# 8. the test suite with CUDA visible, in parallel where pytest-xdist is installed
xdist=$(python3 -c 'import xdist' 2> /dev/null && echo "-n 12")
want pytest && OMP_NUM_THREADS=1 step pytest 400 python3 -m pytest -q -p no:cacheprovider $xdist
if want pytest && [ -f "$out/pytest.log" ]; then
    tail -2 "$out/pytest.log" | tee -a "$out/summary.txt"
    grep -E "^(FAILED|ERROR)" "$out/pytest.log" | head -40 | tee -a "$out/summary.txt"
fi

log "done"
dest=${OUT:-$out}
tar czf "$dest/results.tgz" -C "$out" --exclude='*/checkpoints/epoch_*' --exclude='killed/checkpoints' \
    --exclude='amp-*/checkpoints' --exclude='study/*/checkpoints' --exclude='ddp/checkpoints' \
    --exclude='smoke/*/samples' --exclude='study/*/samples' --exclude='ancestral1000.npz' --exclude='*.tmp' . 2> /dev/null
[ "$dest" != "$out" ] && cp "$out/summary.txt" "$dest/"
ls -la "$dest"
