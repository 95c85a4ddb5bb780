#!/usr/bin/env bash
# Downloads the Debian 12 packages the GPU machine lacks into .deps/ (ignored
# by git), to be sent along with the working tree (`carry: [.deps]`) and
# unpacked there by scripts/gpu.sh. The GPU machine reaches no registry.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "$ROOT/.deps"
cd "$ROOT/.deps"
apt-get download libyaml-cpp-dev libyaml-cpp0.7 libsentencepiece-dev libsentencepiece0 \
  libgtest-dev googletest nlohmann-json3-dev libcli11-dev libgloo-dev
ls -la
