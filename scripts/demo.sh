#!/usr/bin/env bash
# Runs the demo: builds the virtual lab (network namespaces), starts a real mosquitto
# broker and the agent, cuts the primary, shows VoIP moving to LTE and back, prints the
# measured figures and tears everything down. Run as root on Debian.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh
exec .venv/bin/cpe-agent demo "$@"
