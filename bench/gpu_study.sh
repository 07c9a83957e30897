#!/usr/bin/env bash
# The `reference` study (SPEC: every model, sampler, metric, figure and the report) end to end on one GPU,
# inside a time budget. The three models train and evaluate side by side, one process each on the one GPU
# (bench/study_parts.py runs exactly the study's piece for a model); then the report is written. Nothing of
# the study's settings is cut: a piece that does not fit is stopped (training checkpoints on SIGINT, so a
# second call on the same machine resumes it) and the summary says which parts ran.
#   bash bench/gpu_study.sh [OUT] [BUDGET_S]        (defaults: runs/gpu-study, 540 s)
#   PRESET=smoke DEVICE=cpu bash bench/gpu_study.sh OUT 300    (the rehearsal on a CPU; a test runs it)
# OUT/summary.txt has the timings and scores, OUT/study.json the histories, configs, metrics and provenance (what
# bench/results/gpu-study-*.json keeps); OUT/results.tgz the logs, metrics, histories, figures and report.
cd "$(dirname "$0")/.."
out=${1:-runs/gpu-study}
budget=${2:-540}
preset=${PRESET:-reference}
device=${DEVICE:-cuda}
start=$SECONDS
mkdir -p "$out"
log() { echo "[$(date +%H:%M:%S) +$((SECONDS - start))s] $*" | tee -a "$out/summary.txt"; }
parts() { python3 bench/study_parts.py "$@" --preset "$preset" --out "$out/study" --device "$device"; }
left() { local t=$((budget - (SECONDS - start) - ${1:-0})); echo $((t < 1 ? 1 : t)); }  # timeout 0 would mean none

log "$(nvidia-smi -L 2> /dev/null | head -2)"
log "$(python3 -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, *([torch.cuda.get_device_name()] if torch.cuda.is_available() else []))')"
parts start || { log "start refused"; exit 2; }
threads=$(( $(nproc) / 3 ))
((threads < 1)) && threads=1
pids=()
for kind in vae ddpm cfg; do  # each piece stops (SIGINT, then SIGKILL 20 s later) 40 s before the budget ends
    OMP_NUM_THREADS=$threads timeout -s INT -k 20 "$(left 40)" \
        python3 bench/study_parts.py "$kind" --preset "$preset" --out "$out/study" --device "$device" \
        > "$out/$kind.log" 2>&1 &
    pids+=($!)
done
status=0
for i in 0 1 2; do
    kind=(vae ddpm cfg)
    wait "${pids[$i]}"
    rc=$?
    log "${kind[$i]}: exit $rc$( ((rc == 124 || rc == 130)) && echo ' (stopped by the budget)')"
    ((rc == 0)) || { status=1; tail -3 "$out/${kind[$i]}.log" | sed 's/^/    /' | tee -a "$out/summary.txt"; }
done
if ((status == 0)); then
    parts report > "$out/report.log" 2>&1 && log "report written: study/report.html" || log "report failed"
else
    log "report not written: a model's piece did not finish (resume: run this script again with the same OUT)"
fi
python3 bench/study_parts.py summary --out "$out/study" --json "$out/study.json" 2>&1 | tee -a "$out/summary.txt"
log "done"
(cd "$out" && tar czf results.tgz --exclude='*.pt' --exclude='*.safetensors' --exclude='*.npz' \
    summary.txt study.json ./*.log study 2> /dev/null)
exit $status
