#!/usr/bin/env bash
# CPU check of the AFT kernels' own CUDA source, for when no GPU is at hand:
# kernels/aft/*.cu compiled by g++ against shim/ (a host emulation of what they
# use: the threads of a block as std::threads with a barrier, bf16/fp16 in
# software, atomics under a mutex), the `<<<>>>` launch lines rewritten to an
# emulated launch, against naive fp64 O(L²) references (outputs, dq, dk, dv,
# du). Checks index arithmetic, chunk/segment logic and numerics; not warp
# timing, races or speed — the GPU tests (tests/kernels/aft_test.cpp) do that.
#   scripts/aft_host_check/run.sh        # exit 0 when every case is within bf16 rounding
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$HERE/../.."
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/kernels/aft"
cp "$ROOT/kernels/math_constants.h" "$WORK/kernels/"
for f in fwd bwd band; do
  sed -E 's/^(\s*)([A-Za-z_0-9:]+(<[^<>]*>)?)<<<(.*), 0, stream>>>\((.*)\);/\1emulate_launch(\2, \4, \5);/' \
    "$ROOT/kernels/aft/$f.cu" > "$WORK/kernels/aft/$f.cu"
done
cp "$ROOT"/kernels/aft/*.h "$ROOT"/kernels/aft/*.cuh "$WORK/kernels/aft/"
srcs=("$WORK"/kernels/aft/{fwd,bwd,band}.cu)
g++ -std=c++20 -O1 -I "$HERE/shim" -I "$WORK" "$HERE/simple_check.cpp" -x c++ "${srcs[@]}" -x none -o "$WORK/simple" -lpthread
g++ -std=c++20 -O1 -I "$HERE/shim" -I "$WORK" "$HERE/band_check.cpp" -x c++ "${srcs[@]}" -x none -o "$WORK/band" -lpthread
"$WORK/simple"
"$WORK/band"
