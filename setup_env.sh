#!/usr/bin/env bash
# Create .venv with the pinned dependencies and CLIP's BPE vocabulary. Safe to re-run: a requirements
# file installed before, unchanged since (its sha256 is kept in .venv), is not handed to pip again.
# Usage: bash setup_env.sh [--dev]     (--dev adds the test-only packages)
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi

install() {  # install FILE [more pip arguments]: once per content of the file and the arguments
  local file="$1" stamp=".venv/.installed-$1"
  shift
  local key
  key="$(sha256sum "$file" | cut -d' ' -f1) $*"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ]; then
    return
  fi
  .venv/bin/python -m pip install -q --disable-pip-version-check -r "$file"
  if [ $# -gt 0 ]; then .venv/bin/python -m pip install -q --disable-pip-version-check "$@"; fi
  echo "$key" > "$stamp"
}

install requirements.txt
if [ "${1:-}" = "--dev" ]; then
  # OpenAI's reference clip/model.py and simple_tokenizer.py, for parity tests only. --no-deps:
  # its declared torchvision does not import beside this torch, and the tests load the two files by path.
  install requirements-dev.txt --no-deps clip-anytorch==2.6.0
  # open_clip and its torchvision, for the openclip: backbone's tests only, in a folder of their own
  # that only those tests put on their path (fixtures/openclip_models.py): the torchvision wheels
  # reachable here link CUDA libraries, and installed beside transformers they break its imports.
  # --no-deps: their CUDA libraries and timm are not needed.
  OPENCLIP_EXTRA=.venv/openclip
  if [ ! -d "$OPENCLIP_EXTRA/open_clip_torch-3.3.0.dist-info" ] || [ ! -d "$OPENCLIP_EXTRA/torchvision-0.28.0.dist-info" ]; then
    rm -rf "$OPENCLIP_EXTRA"
    .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --target "$OPENCLIP_EXTRA" \
      open_clip_torch==3.3.0 torchvision==0.28.0
  fi
fi
.venv/bin/python -m clip_vendor.fetch_vocab
