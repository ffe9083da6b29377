#!/usr/bin/env bash
# Passes the tests: installs what they need (Debian packages, .venv), then runs the
# linters (ruff, import-linter contracts for the rules of the house, mypy) and pytest.
# Run as root: the network-namespace tests need it (they run, never skip, in CI).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH"

echo "== ruff"
ruff check agent drivers hil tests
echo "== import-linter (rules of the house)"
lint-imports
echo "== mypy"
mypy
echo "== pytest"
exec pytest -q -p no:cacheprovider "$@"
