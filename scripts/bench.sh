#!/usr/bin/env bash
# Runs the benchmarks in the virtual lab and prints their JSON figures (root, Debian).
#   ./scripts/bench.sh                 # all benchmarks, full length
#   ./scripts/bench.sh failover --trials 3 --noisy-minutes 1   # one, with its options
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
if [[ $# -gt 0 ]]; then
  name=$1; shift
  exec .venv/bin/python -m "hil.bench.$name" --json "$@"
fi
for module in hil/bench/*.py; do
  name=$(basename "$module" .py)
  case "$name" in __init__|voice_path) continue ;; esac
  echo "== $name"
  .venv/bin/python -m "hil.bench.$name" --json
done
