#!/usr/bin/env bash
# ListOps accuracy after fine-tuning on CPU: trains recipes/finetune/listops-tiny.yaml
# once per mixer (only the mixer differs), evaluates each checkpoint with
# `longtrain eval --tasks listops`, and writes one JSON with the command, the
# machine, the date and per mixer the accuracy, the eval split's majority
# class, the loss and the wall time:
#
#   bench/listops_cpu.sh [extra train arguments, e.g. --set train.steps=500]
#
# MIXERS (names below), BUILD_DIR, OUT and THREADS (default 2) override the defaults.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$ROOT/build}"
DATE="$(date +%F)"
OUT="${OUT:-$ROOT/bench/results/listops_cpu_$DATE.json}"
THREADS="${THREADS:-2}"
read -r -a MIXERS <<< "${MIXERS:-full sliding linear}"
declare -A SPEC=(
  [full]="{type: full}"
  # Longformer: a 32-token window, the pooled [eos] token global (global_first
  # creates the global projections; task.global_attention: auto marks it).
  [sliding]="{type: sliding, window: 32, block: 16, global_first: 1}"
  [linear]="{type: linear}"
  [aft]="{type: aft}"
)
RUNS="$ROOT/runs/listops-cpu-$DATE"
mkdir -p "$RUNS"
entries=()
for m in "${MIXERS[@]}"; do
  echo "== $m"
  start=$(date +%s)
  "$BUILD_DIR/longtrain" train "$ROOT/recipes/finetune/listops-tiny.yaml" --set "run.dir=$RUNS/$m" \
    --set "model.mixer=${SPEC[$m]}" --set "train.threads=$THREADS" "$@" > "$RUNS/$m.train.log" 2>&1 \
    || { tail -20 "$RUNS/$m.train.log"; exit 1; }
  seconds=$(( $(date +%s) - start ))
  grep -E "^(eval|summary)" "$RUNS/$m.train.log"
  ckpt="$(ls -d "$RUNS/$m"/checkpoints/step-* | sort | tail -1)"
  "$BUILD_DIR/longtrain" eval "$ckpt" --tasks listops --name "$m" --out "$RUNS/$m.report.json" > /dev/null
  entries+=("$(python3 - "$RUNS/$m.report.json" "$m" "${SPEC[$m]}" "$seconds" "$RUNS/$m/metrics.jsonl" <<'PY'
import json, sys
report, name, spec, seconds, metrics = sys.argv[1:]
r = json.load(open(report))
evals = [json.loads(l) for l in open(metrics) if '"eval"' in l]
t = r["tasks"]["listops"]
print(json.dumps({"mixer": name, "mixer_spec": spec, "parameters": r["model"]["parameters"], "steps": r["step"],
                  "accuracy": t["val_accuracy"], "majority_class": t["chance_accuracy"], "loss": t["val_loss"],
                  "eval_items": t["val_examples"], "train_seconds": int(seconds),
                  "accuracy_by_step": {str(e["step"]): e["val_accuracy"] for e in evals}}))
PY
)")
done
python3 - "$OUT" "$DATE" "$*" "${entries[@]}" <<'PY'
import json, os, platform, subprocess, sys
out, date, extra, *entries = sys.argv[1:]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
json.dump({"what": "ListOps (LRA) accuracy after fine-tuning from scratch on CPU, recipes/finetune/listops-tiny.yaml",
           "command": "bench/listops_cpu.sh " + extra, "date": date,
           "machine": {"cpu": cpu, "cores_visible": os.cpu_count(), "threads": int(os.environ.get("THREADS", "2")),
                       "note": "shared with other builds while measured; times are indicative only"},
           "chance": 0.1, "lra_transformer_reference": 0.37,
           "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip(),
           "results": [json.loads(e) for e in entries]}, open(out, "w"), indent=2)
print("wrote", out)
PY
