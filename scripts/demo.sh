#!/usr/bin/env bash
# Sets up the environment and runs the demo pipeline (GPU if present, CPU otherwise).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python -m cusense.demo "$@"
