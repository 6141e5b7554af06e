#!/usr/bin/env bash
# The project's test command: sets up .venv (with test-only packages), lints, then runs the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash setup_env.sh --dev
# The examples page is opened in Debian's headless Chromium (tests/test_analyses.py); install it where
# this runs as root with apt, as in CI. Elsewhere that one test says why it is skipped.
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "tests/run.sh: could not install chromium"
fi
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest -q tests "$@"
