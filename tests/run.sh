#!/usr/bin/env bash
# The project's test command: sets up .venv (with test-only packages), lints, then runs the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash setup_env.sh --dev
# The examples page is opened in Debian's headless Chromium (tests/test_analyses.py) and tables.tex
# compiled by pdflatex (tests/test_latex.py); install them where this runs as root with apt, as in CI.
# Elsewhere those tests say why they are skipped.
debian_install() {  # what the tests need from Debian
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && apt-get install -y -qq "$@" >/dev/null) || echo "tests/run.sh: could not install $*"
  fi
}
command -v chromium >/dev/null || debian_install chromium
command -v pdflatex >/dev/null || debian_install --no-install-recommends texlive-latex-base texlive-latex-recommended
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest -q tests "$@"
