#!/usr/bin/env bash
# The long-context comparison: trains recipes/compare/{full,sliding,bigbird,
# linear,aft,hybrid}.yaml (equal width, depth, data and budget; only the mixer
# differs), evaluates each with `longtrain eval --tasks lm,passkey,mqar`, and
# writes one table and the charts of scripts/plot.py to
# bench/results/long_context_<date>/ (table.md, reports/*.json, *.png), with
# the command and the machine.
#
#   bench/compare_long_context.sh [STEPS] [extra train arguments, e.g. --set train.lr=1e-3]
#
# STEPS defaults to the recipes' 4000 (a GPU-scale budget: on two CPU cores
# expect a day). LENGTHS (default 128,256,512), SAMPLES (default 20),
# FAMILIES, BUILD_DIR, OUT_DIR and PYTHON override the defaults. PARALLEL
# (default 1) trains that many families at once: the models are small, so one
# GPU runs six of them side by side nearly as fast as one (training seconds in
# the table are then wall time under sharing).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$ROOT/build}"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
DATE="$(date +%F)"
OUT_DIR="${OUT_DIR:-$ROOT/bench/results/long_context_$DATE}"
STEPS="${1:-}"
shift || true
LENGTHS="${LENGTHS:-128,256,512}"
SAMPLES="${SAMPLES:-20}"
read -r -a FAMILIES <<< "${FAMILIES:-full sliding bigbird linear aft hybrid}"
RUNS="$ROOT/runs/compare-long-$DATE"
mkdir -p "$OUT_DIR/reports" "$RUNS"
steps_args=()
[ -n "$STEPS" ] && steps_args=(--set "train.steps=$STEPS")
PARALLEL="${PARALLEL:-1}"
train_one() {  # family: trains, then evaluates; logs under $RUNS
  local f="$1" start ckpt
  start=$(date +%s)
  "$BUILD_DIR/longtrain" train "$ROOT/recipes/compare/$f.yaml" --set "run.dir=$RUNS/$f" "${steps_args[@]}" \
    "${train_args[@]}" > "$RUNS/$f.train.log" 2>&1 || { echo "== $f: training failed"; tail -20 "$RUNS/$f.train.log"; return 1; }
  echo $(( $(date +%s) - start )) > "$RUNS/$f.seconds"
  ckpt="$(ls -d "$RUNS/$f"/checkpoints/step-* | sort | tail -1)"
  "$BUILD_DIR/longtrain" eval "$ckpt" --tasks lm,passkey,mqar --lengths "$LENGTHS" --samples "$SAMPLES" \
    --name "$f" --out "$OUT_DIR/reports/$f.json" > "$RUNS/$f.eval.log" 2>&1 || { echo "== $f: eval failed"; tail -20 "$RUNS/$f.eval.log"; return 1; }
  echo "== $f done in $(cat "$RUNS/$f.seconds") s of training"
  cat "$RUNS/$f.eval.log"
}
train_args=("$@")
pids=()
status=0
for f in "${FAMILIES[@]}"; do
  train_one "$f" &
  pids+=($!)
  if [ "${#pids[@]}" -ge "$PARALLEL" ]; then wait "${pids[0]}" || status=1; pids=("${pids[@]:1}"); fi
done
for p in "${pids[@]}"; do wait "$p" || status=1; done
[ "$status" -eq 0 ] || exit 1
reports=()
for f in "${FAMILIES[@]}"; do reports+=("$OUT_DIR/reports/$f.json"); done
"$PYTHON" "$ROOT/scripts/plot.py" "${reports[@]}" --out "$OUT_DIR"
"$PYTHON" - "$OUT_DIR" "$RUNS" "$DATE" "bench/compare_long_context.sh ${STEPS} $*" "${FAMILIES[@]}" <<'PY'
import json, os, platform, sys
out_dir, runs, date, cmd, *families = sys.argv[1:]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
def pct(v):
    return "skip" if v is None else f"{100 * v:.0f}%"
def runs_of(layers):
    """'linear,linear,full' -> 'linear x2, full'."""
    out = []
    for m in layers.split(","):
        if out and out[-1][0] == m:
            out[-1][1] += 1
        else:
            out.append([m, 1])
    return ", ".join(m if n == 1 else f"{m} x{n}" for m, n in out)
def mean(row):
    vals = [v for v in row if v is not None]
    return sum(vals) / len(vals) if vals else None
rows = []
for f in families:
    r = json.load(open(f"{out_dir}/reports/{f}.json"))
    t = r["tasks"]
    lm = {e["length"]: e for e in t["lm"]}
    evals = [json.loads(l) for l in open(f"{runs}/{f}/metrics.jsonl") if '"eval":true' in l]
    rows.append((f, r, t, lm, int(open(f"{runs}/{f}.seconds").read()), evals))
lengths = rows[0][2]["passkey"]["lengths"]
pairs = rows[0][2]["mqar"]["pairs"]
device = rows[0][1]["device"]
with open(f"{out_dir}/table.md", "w") as fh:
    fh.write(f"# Long-context comparison ({date}; {device}: {cpu}, {os.cpu_count()} cores)\n\n")
    fh.write(f"Reproduce: `{cmd.strip()}`. Steps and data: recipes/compare/*.yaml; items seeded (same on every machine).\n\n")
    head = ["model", "layers", "params", "train s", "recall/digit"] + [f"bpb@{l}" for l in lengths] + \
           [f"passkey@{l}" for l in lengths] + [f"mqar@{l} ({p}p)" for l in lengths for p in pairs]
    fh.write("| " + " | ".join(head) + " |\n|" + "---|" * len(head) + "\n")
    for f, r, t, lm, secs, evals in rows:
        recall = evals[-1]["long_range_accuracy"] if evals else None
        cells = [f, runs_of(r["model"]["layers"]), str(r["model"]["parameters"]), str(secs), pct(recall)]
        cells += ["skip" if "skipped" in lm.get(l, {"skipped": 1}) else f"{lm[l]['bits_per_byte']:.3f}" for l in lengths]
        cells += [pct(mean(row)) for row in t["passkey"]["accuracy"]]
        cells += [pct(row[j]) for row in t["mqar"]["accuracy"] for j in range(len(pairs))]
        fh.write("| " + " | ".join(cells) + " |\n")
    fh.write("\nrecall/digit: the value digits of the corpus' questions on the validation documents "
             "(plain `longtrain eval`; chance 10%). passkey: mean over depths; chance 0.1%. Charts: loss_by_position.png, passkey_heatmap.png, "
             "accuracy_vs_length.png, lm_vs_length.png.\n")
    fh.write("\n## recall/digit and validation bits per byte by step\n\n")
    steps = [e["step"] for e in rows[0][5]]
    fh.write("| model | " + " | ".join(str(x) for x in steps) + " |\n|" + "---|" * (len(steps) + 1) + "\n")
    for f, *_, evals in rows:
        fh.write(f"| {f} | " + " | ".join(f"{pct(e['long_range_accuracy'])} / {e['val_bpb']:.2f}" for e in evals) + " |\n")
print(open(f"{out_dir}/table.md").read())
PY
