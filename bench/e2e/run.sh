#!/usr/bin/env bash
# bench/e2e on one GPU: the 134M model (bench/e2e/recipes/, make_recipes.py)
# with full, sliding (w=512), linear (elu+1) and hybrid mixers at L = 4K, 16K,
# 64K, 65,536 tokens per step; longtrain and the PyTorch peer (peer_lm.py)
# in the same run on the same machine; then the longest single sequence that
# trains (sliding and linear, batch 1, activation checkpointing + chunked
# cross-entropy), doubling L until a run fails. One JSON with device, date,
# tokens/s, peak memory, MFU and ratios: $OUT_DIR/e2e_<date>.json.
#
#   bench/e2e/run.sh BUILD_DIR OUT_DIR
#   BENCH_QUICK=1    L = 4K and 16K only, fewer steps, probe up to 512K/1M
#   E2E_MIXERS="full sliding"  E2E_LENGTHS="4k"  E2E_SKIP_PEERS=1  E2E_SKIP_PROBE=1  E2E_STEPS=40
#   PEERS_REFERENCE=path  (default: the first of .carry/, shared/bench/, ../shared/bench/)
#   E2E_BUDGET_S=470  wall-clock budget (the whole run stays under ~8 min):
#                     longtrain runs start until 53% of it, the peer runs
#                     until 77%, the probe until 100%; what is cut is reported
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BUILD_DIR="${1:?usage: run.sh BUILD_DIR OUT_DIR}"
OUT_DIR="${2:?usage: run.sh BUILD_DIR OUT_DIR}"
BIN="$BUILD_DIR/longtrain"
HERE="$ROOT/bench/e2e"
mkdir -p "$OUT_DIR/runs"
rm -f "$OUT_DIR/peers.jsonl" "$OUT_DIR/longest.jsonl"

TOTAL="${E2E_BUDGET_S:-470}"
STEPS="${E2E_STEPS:-10}"  # 5 warm-up (one log interval) + 5 timed; E2E_STEPS=40: 7 timed intervals, their median
if [ -n "${BENCH_QUICK:-}" ]; then
  LENGTHS="${E2E_LENGTHS:-4k 16k}" PROBE_MAX_SLIDING=524288 PROBE_MAX_LINEAR=1048576
else
  LENGTHS="${E2E_LENGTHS:-4k 16k 64k}" PROBE_MAX_SLIDING=1048576 PROBE_MAX_LINEAR=2097152
fi
over_budget() { [ "$SECONDS" -ge "$BUDGET" ] && echo "$1: skipped (its share of E2E_BUDGET_S=$TOTAL, ${BUDGET} s, is spent)"; }
MIXERS="${E2E_MIXERS:-full sliding linear hybrid}"
declare -A LEN=([4k]=4096 [16k]=16384 [64k]=65536)

# longtrain: the first 5 steps (one log interval) are the warm-up, the rest timed.
BUDGET=$((TOTAL * 53 / 100))
for mixer in $MIXERS; do
  for tag in $LENGTHS; do
    name="$mixer-$tag" run="$OUT_DIR/runs/$mixer-$tag"
    rm -rf "$run"
    over_budget "$name" && continue
    timeout 240 "$BIN" train "$HERE/recipes/$name.yaml" --set run.dir="$run" --set train.steps="$STEPS" \
      > "$OUT_DIR/$name.log" 2>&1 || echo "$name: longtrain failed (exit $?), see $name.log"
    rm -rf "$run/checkpoints"
    grep -v '"eval"' "$run/metrics.jsonl" 2>/dev/null | tail -n 1 | cut -c1-200
  done
done

BUDGET=$((TOTAL * 77 / 100))
# The PyTorch peer, same configs, in one process (one CUDA start-up).
if [ -z "${E2E_SKIP_PEERS:-}" ] && ! over_budget peers; then
  peers="${PEERS_REFERENCE:-}"
  for p in "$ROOT/.carry/peers_reference.py" "$ROOT/shared/bench/peers_reference.py" \
           "$ROOT/../shared/bench/peers_reference.py"; do
    [ -z "$peers" ] && [ -f "$p" ] && peers="$p"
  done
  if [ -n "$peers" ]; then
    # A copy in the ignored .carry/: the reference script is never committed.
    mkdir -p "$ROOT/.carry"
    [ "$peers" -ef "$ROOT/.carry/peers_reference.py" ] || cp "$peers" "$ROOT/.carry/peers_reference.py"
    configs=()
    for mixer in $MIXERS; do for tag in $LENGTHS; do configs+=("$mixer:${LEN[$tag]}"); done; done
    timeout $((BUDGET - SECONDS + 20)) python3 "$HERE/peer_lm.py" --peers "$ROOT/.carry/peers_reference.py" --out "$OUT_DIR/peers.jsonl" \
      --steps $((STEPS - 5)) --warmup 3 "${configs[@]}" > "$OUT_DIR/peers.log" 2>&1 || echo "peers: exit $?"
    cut -c1-200 "$OUT_DIR/peers.jsonl" 2>/dev/null
  else
    echo "peers: no peers_reference.py found (set PEERS_REFERENCE)"
  fi
fi

# Longest sequence: batch 1, full checkpointing, chunked loss, one step; L
# doubles from $3 (the 64K configs above already train at batch 1).
probe() {
  local mixer=$1 max=$2 L=$3 recipe="$HERE/recipes/$1-64k.yaml"
  while [ "$L" -le "$max" ]; do
    over_budget "probe $mixer L=$L" && break
    local run="$OUT_DIR/probe/$mixer-$L" t0=$SECONDS rc
    rm -rf "$run"
    timeout 150 "$BIN" train "$recipe" --set run.dir="$run" --set train.steps=1 --set train.warmup=0 \
      --set train.log_every=1 --set train.batch_size=1 --set train.seq_len=$L \
      --set train.activation_checkpointing=full --set train.loss_chunk=8192 > "$OUT_DIR/probe-$mixer-$L.log" 2>&1
    rc=$?
    rm -rf "$run/checkpoints"
    local mem
    mem=$(python3 -c "import json,sys; r=[json.loads(l) for l in open(sys.argv[1]) if '\"eval\"' not in l]; print(max(x['memory_bytes'] for x in r)/2**20)" \
      "$run/metrics.jsonl" 2>/dev/null || echo null)
    echo "{\"mixer\": \"$mixer\", \"L\": $L, \"ok\": $([ $rc -eq 0 ] && echo true || echo false), \"exit\": $rc, \"peak_memory_mib\": $mem, \"seconds\": $((SECONDS - t0))}" \
      | tee -a "$OUT_DIR/longest.jsonl"
    [ $rc -eq 0 ] || break
    L=$((L * 2))
  done
}
BUDGET=$TOTAL
if [ -z "${E2E_SKIP_PROBE:-}" ]; then
  probe sliding "$PROBE_MAX_SLIDING" 131072
  probe linear "$PROBE_MAX_LINEAR" 262144
fi

json="$OUT_DIR/e2e_$(date +%F).json"
python3 "$HERE/summarize.py" "$OUT_DIR" > "$json" && echo "wrote $json"
python3 - "$json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(r["device"], r["date"])
for c in r["configs"]:
    o, p = c["longtrain"], c["peer"]
    f = lambda d, k, s="{:.0f}": s.format(d[k]) if k in d else d.get("error", "-")[:40]
    print(f'{c["mixer"]:8s} L={c["L"]:6d}  longtrain {f(o, "tokens_per_s")} tok/s {f(o, "peak_memory_mib")} MiB '
          f'MFU {f(o, "mfu", "{:.2f}")} | peer {f(p, "tokens_per_s")} tok/s {f(p, "peak_memory_mib")} MiB '
          f'| ratio {c.get("speed_ratio", float("nan")):.2f}')
for l in r["longest_sequence"]:
    print("longest:", l)
PY
