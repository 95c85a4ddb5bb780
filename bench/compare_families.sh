#!/usr/bin/env bash
# The attention-family comparison: trains recipes/{tiny,sliding,longformer,
# bigbird,sparse,linear,aft,hybrid-7to1}.yaml for the same short budget on the
# synthetic long-document corpus (same data, widths, schedule and seed; only the
# mixer differs) and writes the final validation bits per byte and long-range
# accuracy of each to bench/results/family_comparison_<date>.json and .md.
#
#   bench/compare_families.sh [STEPS] [extra --set overrides...]
#
# STEPS defaults to 300 (about 2 minutes per family on two CPU cores; the
# sparse references are slower than SDPA on CPU). Needs a built `longtrain`
# (scripts/setup.sh). BUILD_DIR and OUT_DIR override the defaults.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$ROOT/build}"
OUT_DIR="${OUT_DIR:-$ROOT/bench/results}"
STEPS="${1:-300}"
shift || true
DATE="$(date +%F)"
RUNS="$ROOT/runs/compare-$DATE"
FAMILIES=(tiny sliding longformer bigbird sparse linear aft hybrid-7to1)
mkdir -p "$OUT_DIR" "$RUNS"
for f in "${FAMILIES[@]}"; do
  echo "== $f: $STEPS steps"
  start=$(date +%s)
  "$BUILD_DIR/longtrain" train "$ROOT/recipes/$f.yaml" --set "run.dir=$RUNS/$f" "train.steps=$STEPS" \
    "train.eval_every=0" "checkpoint.every=0" "$@" > "$RUNS/$f.log" 2>&1 || { tail -20 "$RUNS/$f.log"; exit 1; }
  echo $(( $(date +%s) - start )) > "$RUNS/$f.seconds"
  grep "after training" "$RUNS/$f.log" || tail -3 "$RUNS/$f.log"
done
python3 - "$RUNS" "$OUT_DIR" "$DATE" "$STEPS" "$*" "${FAMILIES[@]}" <<'PY'
import json, os, platform, re, sys
runs, out_dir, date, steps, extra, *families = sys.argv[1:]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
rows = []
for f in families:
    evals = [json.loads(l) for l in open(f"{runs}/{f}/metrics.jsonl") if '"eval"' in l]
    m = re.search(r"model: (\d+) parameters", open(f"{runs}/{f}.log").read())
    params = int(m.group(1)) if m else None
    last = evals[-1]
    rows.append({"recipe": f"recipes/{f}.yaml", "steps": last["step"], "val_loss": last["val_loss"],
                 "val_bpb": last["val_bpb"], "long_range_accuracy": last.get("long_range_accuracy"),
                 "long_range_bits": last.get("long_range_bits"), "parameters": params,
                 "seconds": int(open(f"{runs}/{f}.seconds").read())})
cmd = f"bench/compare_families.sh {steps}" + (f" {extra}" if extra else "")
result = {"date": date, "device": f"cpu ({cpu}, {os.cpu_count()} cores)", "command": cmd,
          "corpus": "synthetic long-document corpus (recipes' data section; long-range chance accuracy 10%)",
          "results": rows}
with open(f"{out_dir}/family_comparison_{date}.json", "w") as fh:
    json.dump(result, fh, indent=2)
with open(f"{out_dir}/family_comparison_{date}.md", "w") as fh:
    fh.write(f"# Attention families, {steps} steps each ({date}, {result['device']})\n\n")
    fh.write(f"Reproduce: `{cmd}`\n\n")
    fh.write("| recipe | parameters | val bits/byte | long-range accuracy | long-range bits | seconds |\n|---|---|---|---|---|---|\n")
    for r in rows:
        acc = "-" if r["long_range_accuracy"] is None else f"{100 * r['long_range_accuracy']:.1f}%"
        bits = "-" if r["long_range_bits"] is None else f"{r['long_range_bits']:.2f}"
        fh.write(f"| {r['recipe']} | {r['parameters']} | {r['val_bpb']:.3f} | {acc} | {bits} | {r['seconds']} |\n")
print(open(f"{out_dir}/family_comparison_{date}.md").read())
PY
