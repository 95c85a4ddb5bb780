#!/usr/bin/env bash
# Set-up (scripts/setup.sh), then train the default recipe (recipes/tiny.yaml,
# about three minutes on two CPU cores) in a fresh run directory and print its
# evaluation. Extra arguments go to `longtrain train` (e.g. --set train.steps=100).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$ROOT/build}"
RECIPE="${RECIPE:-$ROOT/recipes/tiny.yaml}"
"$ROOT/scripts/setup.sh"
RUN_DIR="$ROOT/runs/$(basename "$RECIPE" .yaml)-$(date +%Y%m%d-%H%M%S)"
"$BUILD_DIR/longtrain" train "$RECIPE" --set "run.dir=$RUN_DIR" "$@"
CKPT="$(ls -d "$RUN_DIR"/checkpoints/step-* | sort | tail -n 1)"
echo
"$BUILD_DIR/longtrain" eval "$CKPT" --json "$RUN_DIR/eval.json"
echo "run directory: $RUN_DIR (metrics.jsonl, recipe.yaml, checkpoints/, eval.json)"
