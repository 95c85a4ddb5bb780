#!/usr/bin/env bash
# Idempotent set-up on Debian 12: installs what is missing (Debian packages;
# a project-local Python venv with PyTorch 2.11.0 from PyPI, whose LibTorch we
# link), then configures and builds into build/. Fast when nothing is missing.
#
#   scripts/setup.sh            # everything
#   BUILD_DIR=build-debug CMAKE_BUILD_TYPE=Debug scripts/setup.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$ROOT/build}"
VENV="${LONGTRAIN_VENV:-$ROOT/.venv}"
TORCH_VERSION="2.11.0"
APT_PACKAGES=(build-essential cmake ninja-build pkg-config python3 python3-venv python3-pip
              libyaml-cpp-dev libsentencepiece-dev libgtest-dev nlohmann-json3-dev libcli11-dev libgloo-dev)

say() { echo "[setup] $*"; }

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# python3 may come from elsewhere (pyenv); accept it when it can make a venv.
if [ ${#missing[@]} -gt 0 ] && command -v python3 >/dev/null && python3 -c 'import venv, ensurepip' 2>/dev/null; then
  filtered=()
  for p in "${missing[@]}"; do case "$p" in python3|python3-venv|python3-pip) ;; *) filtered+=("$p");; esac; done
  missing=("${filtered[@]+"${filtered[@]}"}")
fi
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('$TORCH_VERSION') else 1)" 2>/dev/null; then
  say "creating $VENV with torch==$TORCH_VERSION (a large download the first time)"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q "torch==$TORCH_VERSION" numpy
fi
# scripts/plot.py (charts of eval reports) and bench/plot_scaling.py draw with matplotlib.
if ! "$VENV/bin/python" -c "import matplotlib" 2>/dev/null; then
  say "installing matplotlib into $VENV"
  "$VENV/bin/pip" install -q matplotlib
fi
TORCH_PREFIX="$("$VENV/bin/python" -c 'import torch; print(torch.utils.cmake_prefix_path)' 2>/dev/null)"

# Torch's CMake takes the CUDA architecture from this variable, not from
# CMAKE_CUDA_ARCHITECTURES; the kernels target Hopper (sm_90a).
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0a}"
if [ ! -f "$BUILD_DIR/build.ninja" ]; then
  say "configuring $BUILD_DIR"
  cmake -S "$ROOT" -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE="${CMAKE_BUILD_TYPE:-Release}" \
        -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" >"$BUILD_DIR.configure.log" 2>&1 \
    || { cat "$BUILD_DIR.configure.log"; exit 1; }
fi
say "building (log: $BUILD_DIR/build.log)"
cmake --build "$BUILD_DIR" -j "$(nproc)" >"$BUILD_DIR/build.log" 2>&1 || { tail -n 60 "$BUILD_DIR/build.log"; exit 1; }
say "ready: $BUILD_DIR/longtrain"
