#!/usr/bin/env bash
# The project's test command: sets up .venv (with test-only packages) and runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash setup_env.sh --dev
.venv/bin/python -m pytest -q tests "$@"
