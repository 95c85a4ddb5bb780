#!/usr/bin/env bash
# The GPU-machine path: build against that machine's own PyTorch (its python3)
# and the Debian packages sent along in .deps/ (scripts/fetch_gpu_deps.sh makes
# them), run the test suite there (GPU tests included), and train the default
# recipe on CUDA in bf16. Logs and results go to one folder: $OUT, or gpu-out/.
#
#   scripts/gpu.sh all          # deps build test train
#   scripts/gpu.sh build test   # any subset, in order (also kernels, bench_sparse,
#                               # e2e_sparse, e2e_longformer, bench_linear, e2e_linear, e2e_linear_nodecay, bench_aft, e2e_aft,
#                               # breakdown, sweep_linear, e2e, bench_cpu, compare, dist)
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-$ROOT/gpu-out}"
BUILD_DIR="$ROOT/build-gpu"   # apart from the CPU build
DEPS=/opt/deps
mkdir -p "$OUT"
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export LD_LIBRARY_PATH="$DEPS/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export TORCH_CUDA_ARCH_LIST=9.0a

step_deps() {
  ls "$ROOT"/.deps/*.deb >/dev/null 2>&1 || { echo "no .deps/*.deb: run scripts/fetch_gpu_deps.sh first"; return 1; }
  for f in "$ROOT"/.deps/*.deb; do dpkg -x "$f" "$DEPS"; done
  # Debian's .pc files say prefix=/usr; the sysroot makes them point into $DEPS.
  { nvidia-smi; python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name())'; nvcc --version | tail -n 2; } \
    > "$OUT/machine.txt" 2>&1
  cat "$OUT/machine.txt"
}

step_build() {
  local torch_prefix
  torch_prefix="$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')"
  PKG_CONFIG_SYSROOT_DIR="$DEPS" PKG_CONFIG_PATH="$DEPS/usr/lib/x86_64-linux-gnu/pkgconfig" \
    cmake -S "$ROOT" -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DCMAKE_PREFIX_PATH="$torch_prefix;$DEPS/usr" -DCMAKE_LIBRARY_PATH="$DEPS/usr/lib/x86_64-linux-gnu" \
      -DCMAKE_INCLUDE_PATH="$DEPS/usr/include" -DLONGTRAIN_PTXAS_VERBOSE=ON > "$OUT/configure.log" 2>&1 || { tail -n 40 "$OUT/configure.log"; return 1; }
  local t0=$SECONDS
  cmake --build "$BUILD_DIR" -j "$(nproc)" ${BUILD_TARGETS:+--target $BUILD_TARGETS} > "$OUT/build.log" 2>&1 || { grep -E "error|FAILED" "$OUT/build.log" | head -n 30; return 1; }
  echo "build: $((SECONDS - t0)) s"
}

step_test() {
  (cd "$BUILD_DIR" && ctest --output-on-failure -j 4 --output-junit "$OUT/ctest.xml") > "$OUT/test.log" 2>&1
  local rc=$?
  grep -E "tests passed|tests failed|Skipped|\*\*\*Failed|Passed.*Gpu" "$OUT/test.log" | tail -n 40
  return $rc
}

step_train() {
  local run="$OUT/train-cuda-bf16"
  "$BUILD_DIR/longtrain" train "$ROOT/recipes/tiny.yaml" --set run.dir="$run" --set train.device=cuda \
    --set train.dtype=bf16 --set train.log_every=50 > "$OUT/train.log" 2>&1
  local rc=$?
  tail -n 12 "$OUT/train.log"
  rm -rf "$run/checkpoints"  # results only; checkpoints stay on the machine
  return $rc
}

# The kernel tests in one process (each ctest process would pay ~2 s of CUDA
# start-up), then compute-sanitizer memcheck and racecheck on a small case.
step_kernels() {
  local filter="${KERNEL_TESTS:-*SparseKernel*:TileLayout*:*LinearKernel*:*Aft*Kernel*:*AftFull*:*QkvRope*:*SoftmaxXent*:*AddNorm*:Residual.*Cuda*:*GeluMlp*}"
  "$BUILD_DIR/longtrain_tests" --gtest_filter="$filter" > "$OUT/kernels.log" 2>&1
  local rc=$?
  grep -E "^\[  (PASSED|FAILED|SKIPPED) |FAILED  \]|Failure|error" "$OUT/kernels.log" | head -n 40
  # Linear attention again with blocks of one sub-chunk: every pass, the
  # fused backward's walk included, then crosses many block boundaries.
  if [[ "$filter" == *LinearKernel* ]]; then
    LONGTRAIN_LINEAR_BLOCK_CHUNKS=1 "$BUILD_DIR/longtrain_tests" --gtest_filter="*LinearKernelVsReference*" \
      > "$OUT/kernels_linear_blocks1.log" 2>&1 || rc=1
    echo "linear, blocks of 1 sub-chunk: $(grep -E "^\[  (PASSED|FAILED) " "$OUT/kernels_linear_blocks1.log" | tr '\n' ' ')"
  fi
  local small="${SANITIZE_TESTS:-Patterns/SparseKernelVsReference.*sliding_w8_short*:Cases/LinearKernelVsReference.*B2_H2_L37*:Shapes/AftKernelVsReference.*B2_L37_d*:Shapes/AftBandKernelVsReference.*B2_L37_d64_H4*:Shapes/AftFullOnCuda.*B2_L37_d64_block16*:Shapes/QkvRopeKernel.*B2_L37_H3_D64_bf16*:Shapes/SoftmaxXentKernel.*C37_V1000*:Shapes/AddNormKernel.*B2_L37_D768_bf16_add_ln_dsum*:Shapes/GeluMlpKernel.*M37_K64_N256*}"
  for tool in ${SANITIZERS-memcheck racecheck}; do
    timeout 300 compute-sanitizer --tool "$tool" --error-exitcode 9 "$BUILD_DIR/longtrain_tests" \
      --gtest_filter="$small" > "$OUT/sanitizer_$tool.log" 2>&1
    # Findings in cuBLAS/cuDNN kernels (the references' GEMMs and SDPA: their
    # TMA/wgmma barriers are outside racecheck's model) are counted apart.
    echo "compute-sanitizer $tool: exit $? ($(grep -cE "^========= (Invalid|Race|Error|Warning)" "$OUT/sanitizer_$tool.log") findings," \
      "$(grep -E "^========= (Invalid|Race|Error|Warning)" "$OUT/sanitizer_$tool.log" | grep -c "longtrain::") in longtrain's kernels)"
  done
  return $rc
}

# Sparse attention beside FlexAttention / SDPA / HF Longformer (bench/sparse_attention.py).
step_bench_sparse() {
  local json="$OUT/sparse_attention_$(date +%F).json"
  python3 "$ROOT/bench/sparse_attention.py" --lib "$BUILD_DIR/liblongtrain_torch_ops.so" --out "$json" \
    ${BENCH_QUICK:+--quick} > "$OUT/bench_sparse.log" 2>&1
  local rc=$?
  tail -n 16 "$OUT/bench_sparse.log"
  return $rc
}

# Linear attention beside flash-linear-attention and plain PyTorch
# (bench/linear_attention.py). fla's source goes along in .carry/fla (carry it:
# mkdir -p .carry/fla && git -C <fla clone> archive HEAD fla | tar -x -C .carry/fla).
step_bench_linear() {
  local json="$OUT/linear_attention_$(date +%F).json"
  PYTHONPATH="$ROOT/.carry/fla${PYTHONPATH:+:$PYTHONPATH}" python3 "$ROOT/bench/linear_attention.py" \
    --lib "$BUILD_DIR/liblongtrain_torch_ops.so" --out "$json" ${BENCH_QUICK:+--quick} > "$OUT/bench_linear.log" 2>&1
  local rc=$?
  tail -n 24 "$OUT/bench_linear.log"
  # Optional sweeps: the scan's block size (sub-chunks of 64 rows per block)
  # and the earlier backwards (v5: dφk/dv and dφq passes; v1: three passes).
  for v in ${LINEAR_SWEEP:-}; do
    case "$v" in
      passes | v5) export LONGTRAIN_LINEAR_BWD=$v ;;
      *) export LONGTRAIN_LINEAR_BLOCK_CHUNKS=$v ;;
    esac
    PYTHONPATH="$ROOT/.carry/fla${PYTHONPATH:+:$PYTHONPATH}" python3 "$ROOT/bench/linear_attention.py" \
      --lib "$BUILD_DIR/liblongtrain_torch_ops.so" --quick --out "$OUT/linear_attention_${v}_$(date +%F).json" 2>&1 |
      grep longtrain_nonorm | sed "s/^/$v: /"
    unset LONGTRAIN_LINEAR_BWD LONGTRAIN_LINEAR_BLOCK_CHUNKS
  done
  return $rc
}

# Causal AFT simple, conv and full beside plain PyTorch (bench/aft.py): width 1024, L 4K and 16K.
step_bench_aft() {
  local json="$OUT/aft_$(date +%F).json"
  python3 "$ROOT/bench/aft.py" --lib "$BUILD_DIR/liblongtrain_torch_ops.so" --out "$json" > "$OUT/bench_aft.log" 2>&1
  local rc=$?
  tail -n 8 "$OUT/bench_aft.log"
  return $rc
}

# End to end: a recipe trained with the kernel (impl: cuda) and with
# impl: reference from the same seed; bench/compare_impl.py compares losses
# and tokens/s. e2e_pair NAME RECIPE ARGS...
e2e_pair() {
  local name="$1" recipe="$2"
  shift 2
  local common=(--set train.device=cuda --set train.steps="${E2E_STEPS:-300}"
    --set train.log_every=25 --set train.eval_every=0 --set checkpoint.every=0 ${E2E_SEED:+--set run.seed=$E2E_SEED} "$@")
  local rc=0 runs=("cuda bf16" "reference bf16")
  # E2E_FP32_CONTROL=1: the reference in fp32 too, the yardstick for "bf16
  # noise": the kernel's distance from it beside the bf16 reference's.
  [[ -n "${E2E_FP32_CONTROL:-}" ]] && runs+=("reference fp32")
  for run in "${runs[@]}"; do
    local impl="${run% *}" dtype="${run#* }"
    local dir="$OUT/e2e-$name-$impl"
    [[ "$dtype" == fp32 ]] && dir+="-fp32"
    "$BUILD_DIR/longtrain" train "$ROOT/recipes/$recipe" --set run.dir="$dir" --set model.mixer.impl=$impl \
      --set train.dtype=$dtype "${common[@]}" > "$dir.log" 2>&1 || { tail -n 5 "$dir.log"; rc=1; }
    rm -rf "$dir/checkpoints"
  done
  python3 "$ROOT/bench/compare_impl.py" "$OUT/e2e-$name-cuda" "$OUT/e2e-$name-reference" \
    --out "$OUT/e2e_${name}_$(date +%F).json" | tail -n 16
  if [[ -n "${E2E_FP32_CONTROL:-}" ]]; then
    for run in cuda reference; do
      echo "== $name: $run (bf16) against the fp32 reference"
      python3 "$ROOT/bench/compare_impl.py" "$OUT/e2e-$name-$run" "$OUT/e2e-$name-reference-fp32" \
        --out "$OUT/e2e_${name}_${run}_vs_fp32_$(date +%F).json" | tail -n 1
    done
  fi
  return $rc
}

# The sliding-window recipe at L = 4096, window 512, head dim 64.
step_e2e_sparse() {
  e2e_pair sparse sliding.yaml --set train.seq_len=4096 --set model.max_positions=4096 --set model.d_model=256 \
    --set model.n_heads=4 --set model.mixer.window=512 --set model.mixer.block=64 --set train.batch_size=8 \
    --set data.synthetic.filler=40
}

# The Longformer recipe (per-layer windows, dilated heads, 8 static global
# tokens with their own projections) at L = 4096, head dim 64.
step_e2e_longformer() {
  e2e_pair longformer longformer.yaml --set train.seq_len=4096 --set model.max_positions=4096 --set model.d_model=256 \
    --set model.n_heads=4 --set train.batch_size=8 --set data.synthetic.filler=40
}

# The linear recipe at L = 4096, head dim 64, fixed RetNet decay.
step_e2e_linear() {
  e2e_pair linear linear.yaml --set train.seq_len=4096 --set model.max_positions=4096 --set model.d_model=256 \
    --set model.n_heads=4 --set model.mixer.decay=fixed --set train.batch_size=8 --set data.synthetic.filler=40
}

# The linear recipe as it ships (normalised, no decay: the fused backward, v6)
# at L = 4096, head dim 64.
step_e2e_linear_nodecay() {
  e2e_pair linear_nodecay linear.yaml --set train.seq_len=4096 --set model.max_positions=4096 --set model.d_model=256 \
    --set model.n_heads=4 --set train.batch_size=8 --set data.synthetic.filler=40
}

# The AFT recipe (local, window 64) at L = 4096, d_model 256, 4 heads.
step_e2e_aft() {
  e2e_pair aft aft.yaml --set train.seq_len=4096 --set model.max_positions=4096 --set model.d_model=256 \
    --set model.n_heads=4 --set train.batch_size=8 --set data.synthetic.filler=40
}

# Per-kernel time of each op's forward+backward at the benchmark shapes
# (bench/kernel_breakdown.py; BREAKDOWN_CASES, comma-separated).
step_breakdown() {
  python3 "$ROOT/bench/kernel_breakdown.py" --lib "$BUILD_DIR/liblongtrain_torch_ops.so" \
    ${BREAKDOWN_CASES:+--cases "$BREAKDOWN_CASES"} --out "$OUT/breakdown_$(date +%F).json" > "$OUT/breakdown.log" 2>&1
  local rc=$?
  cat "$OUT/breakdown.log"
  return $rc
}

# The linear-attention breakdown (BREAKDOWN_CASES, default 4K / 16K / 64K in
# the benchmark's layout) once per block size in SWEEP_BLOCKS ("rule" = op.cpp's
# rule, a number forces it): LONGTRAIN_LINEAR_BLOCK_CHUNKS is read once per process.
step_sweep_linear() {
  local rc=0 n
  for n in ${SWEEP_BLOCKS:-rule 2 4 8 16}; do
    LONGTRAIN_LINEAR_BLOCK_CHUNKS="${n#rule}" python3 "$ROOT/bench/kernel_breakdown.py" \
      --lib "$BUILD_DIR/liblongtrain_torch_ops.so" --cases "${BREAKDOWN_CASES:-linear4k,linear16k_blhd,linear64k_blhd}" \
      --out "$OUT/breakdown_blocks_${n}_$(date +%F).json" > "$OUT/sweep_${n}.log" 2>&1 || rc=1
    echo "== block chunks ${n}"
    cut -c1-96 "$OUT/sweep_${n}.log" | head -n 30
  done
  return $rc
}

# bench/e2e: the 134M model, longtrain beside the PyTorch peer, and the
# longest trainable sequence (bench/e2e/run.sh; BENCH_QUICK=1 to shrink).
step_e2e() {
  "$ROOT/bench/e2e/run.sh" "$BUILD_DIR" "$OUT/e2e" > "$OUT/e2e.log" 2>&1
  local rc=$?
  tail -n 24 "$OUT/e2e.log"
  cp "$OUT"/e2e/e2e_*.json "$OUT/" 2>/dev/null
  return $rc
}

# Where the 134M model's training step spends its time (trainer/profile.h):
# PROFILE_CONFIGS (default "full-4k sliding-4k linear-4k") of bench/e2e/recipes,
# 3 steps recorded after 5; the summaries land in $OUT/profile/<config>.txt and
# .json (the traces stay on the machine: tens of MB each). PROFILE_SET="k=v ..."
# adds recipe overrides, PROFILE_TAG a suffix to the file names.
step_profile() {
  local c rc=0 dir kv sets=()
  for kv in ${PROFILE_SET:-}; do sets+=(--set "$kv"); done
  mkdir -p "$OUT/profile"
  for c in ${PROFILE_CONFIGS:-full-4k sliding-4k linear-4k}; do
    dir="$(mktemp -d)"
    local name="$c${PROFILE_TAG:-}"
    "$BUILD_DIR/longtrain" train "$ROOT/bench/e2e/recipes/$c.yaml" --set run.dir="$dir/run" --set train.steps=8 \
      --set checkpoint.every=0 "${sets[@]}" --profile "$dir/profile" --profile-steps 3 --profile-warmup 5 \
      > "$OUT/profile/$name.log" 2>&1 || { echo "profile $name: exit $?"; tail -n 20 "$OUT/profile/$name.log"; rc=1; }
    echo "== profile $name ${PROFILE_SET:-}"
    cp "$dir/profile/summary.txt" "$OUT/profile/$name.txt" 2>/dev/null && grep -v "^    .* ms .*x  void\|^    .* ms .*x  nvjet\|^    .* ms .*x  cudnn" "$OUT/profile/$name.txt"
    cp "$dir/profile/summary.json" "$OUT/profile/$name.json" 2>/dev/null
    rm -rf "$dir"
  done
  return $rc
}

# Data parallel over NCCL on all of this machine's GPUs (needs 2+): the tiny
# recipe in fp32 on N ranks of batch 4 and on one GPU of batch 4N; prints the
# largest relative loss difference (it should be ~1e-6); metrics (per-rank
# tokens/s, all-reduce ms) stay in $OUT/dist-*/metrics.jsonl.
step_dist() {
  local n
  n="$(nvidia-smi -L | wc -l)"
  [ "$n" -ge 2 ] || { echo "dist: needs 2+ GPUs, found $n"; return 0; }
  local common=(--set train.device=cuda --set train.dtype=fp32 --set train.steps=50 --set train.log_every=1
                --set checkpoint.every=0)
  { "$BUILD_DIR/longtrain" launch --nproc "$n" -- train "$ROOT/recipes/tiny.yaml" "${common[@]}" \
      --set run.dir="$OUT/dist-$n" --set train.batch_size=4 &&
    "$BUILD_DIR/longtrain" train "$ROOT/recipes/tiny.yaml" "${common[@]}" \
      --set run.dir="$OUT/dist-1" --set train.batch_size=$((4 * n)); } > "$OUT/dist.log" 2>&1 ||
    { tail -n 30 "$OUT/dist.log"; return 1; }
  rm -rf "$OUT/dist-$n/checkpoints" "$OUT/dist-1/checkpoints"
  python3 - "$OUT/dist-1/metrics.jsonl" "$OUT/dist-$n/metrics.jsonl" <<'PY'
import json, sys
runs = [[json.loads(l) for l in open(p) if '"eval"' not in l] for p in sys.argv[1:]]
worst = max(abs(a["loss"] - b["loss"]) / abs(a["loss"]) for a, b in zip(*runs))
last = runs[1][-1]
print(f"dist: {len(runs[1])} steps, max relative loss difference {worst:.2e}; "
      f"rank tokens/s {[round(t) for t in last['rank_tokens_per_s']]}, all-reduce {last['allreduce_ms']:.2f} ms/step")
PY
}

# The CPU scaling table (bench/README.md) on this machine's quiet CPU cores,
# 2 threads like a laptop; results and plot into $OUT.
step_bench_cpu() {
  local json="$OUT/cpu_scaling_$(date +%F).json"
  "$BUILD_DIR/longtrain_bench_cpu" --threads "${BENCH_THREADS:-2}" --max-seconds "${BENCH_MAX_SECONDS:-30}" \
    --out "$json" > "$OUT/bench_cpu.log" 2>&1
  local rc=$?
  tail -n 60 "$OUT/bench_cpu.log"
  python3 "$ROOT/bench/plot_scaling.py" "$json" "${json%.json}.png" >> "$OUT/bench_cpu.log" 2>&1 || echo "(no plot)"
  return $rc
}

# The long-context comparison (bench/compare_long_context.sh) on this GPU:
# COMPARE_LONG_STEPS steps per family (default the recipes' 4000), COMPARE_PARALLEL
# families at once (default 6), stopped after COMPARE_TIMEOUT seconds (1800).
step_compare_long() {
  BUILD_DIR="$BUILD_DIR" OUT_DIR="$OUT/long_context" PYTHON=python3 PARALLEL="${COMPARE_PARALLEL:-6}" \
    timeout "${COMPARE_TIMEOUT:-1800}" "$ROOT/bench/compare_long_context.sh" \
    "${COMPARE_LONG_STEPS:-}" --set train.device=cuda --set train.dtype=bf16 > "$OUT/compare_long.log" 2>&1
  local rc=$?
  tail -n 30 "$OUT/compare_long.log"
  return $rc
}

# The attention-family comparison (bench/compare_families.sh) on this GPU.
step_compare() {
  BUILD_DIR="$BUILD_DIR" OUT_DIR="$OUT" "$ROOT/bench/compare_families.sh" "${COMPARE_STEPS:-600}" \
    > "$OUT/compare.log" 2>&1
  local rc=$?
  tail -n 16 "$OUT/compare.log"
  return $rc
}

[ $# -eq 0 ] && set -- all
[ "$1" = all ] && set -- deps build test train
status=0
for s in "$@"; do
  echo "== $s"
  "step_$s" || { echo "== $s FAILED"; status=1; [ "$s" = build ] || [ "$s" = deps ] && break; }
done
exit $status
