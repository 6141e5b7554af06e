"""Install CLIP's BPE merges file from a pinned PyPI release (run once at set-up, never at run time).

    python -m clip_vendor.fetch_vocab

OpenAI's file ships inside the `clip-anytorch` wheel; we download only that wheel (no
dependencies), take the one file out, check its sha256 and move it into place atomically.
"""
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .tokenizer import VOCAB_PATH, VOCAB_SHA256, file_sha256

WHEEL = "clip-anytorch==2.6.0"
MEMBER = "clip/bpe_simple_vocab_16e6.txt.gz"


def main():
    if VOCAB_PATH.exists() and file_sha256(VOCAB_PATH) == VOCAB_SHA256:
        print(f"{VOCAB_PATH} present, sha256 ok")
        return
    with tempfile.TemporaryDirectory() as download_dir:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "-d", download_dir, WHEEL], check=True)
        wheel_path = next(Path(download_dir).glob("*.whl"))
        tmp_path = VOCAB_PATH.with_suffix(".tmp")
        with zipfile.ZipFile(wheel_path) as wheel:
            tmp_path.write_bytes(wheel.read(MEMBER))
    digest = file_sha256(tmp_path)
    if digest != VOCAB_SHA256:
        tmp_path.unlink()
        sys.exit(f"{MEMBER} from {WHEEL} has sha256 {digest}, expected {VOCAB_SHA256}; not installed")
    os.replace(tmp_path, VOCAB_PATH)
    print(f"installed {VOCAB_PATH} from {WHEEL}, sha256 ok")


if __name__ == "__main__":
    main()
