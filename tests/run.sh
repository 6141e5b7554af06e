#!/usr/bin/env bash
# The project's test command: sets up .venv (with test-only packages), lints, then runs the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash setup_env.sh --dev
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest -q tests "$@"
