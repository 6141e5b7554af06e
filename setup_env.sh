#!/usr/bin/env bash
# Create .venv with the pinned dependencies and CLIP's BPE vocabulary. Safe to re-run.
# Usage: bash setup_env.sh [--dev]     (--dev adds the test-only packages)
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
if [ "${1:-}" = "--dev" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt
  # OpenAI's reference clip/model.py and simple_tokenizer.py, for parity tests only. --no-deps:
  # its declared torchvision does not import beside this torch, and the tests load the two files by path.
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps clip-anytorch==2.6.0
fi
.venv/bin/python -m clip_vendor.fetch_vocab
