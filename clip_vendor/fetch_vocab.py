"""Install CLIP's BPE merges file from a pinned PyPI release (run once at set-up, never at run time).

    python -m clip_vendor.fetch_vocab

OpenAI's file ships inside the `clip-anytorch` wheel; we download only that wheel (no
dependencies), take the one file out, check its sha256 and move it into place atomically.
"""

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from .tokenizer import VOCAB_PATH, VOCAB_SHA256

WHEEL = "clip-anytorch==2.6.0"
MEMBER = "clip/bpe_simple_vocab_16e6.txt.gz"


def main():
    if VOCAB_PATH.exists() and hashlib.sha256(VOCAB_PATH.read_bytes()).hexdigest() == VOCAB_SHA256:
        print(f"{VOCAB_PATH} present, sha256 ok")
        return
    with tempfile.TemporaryDirectory() as download_dir:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--only-binary=:all:",
                "-d",
                download_dir,
                WHEEL,
            ],
            check=True,
        )
        wheel_path = next(Path(download_dir).glob("*.whl"))
        with zipfile.ZipFile(wheel_path) as wheel:
            data = wheel.read(MEMBER)
    digest = hashlib.sha256(data).hexdigest()
    if digest != VOCAB_SHA256:
        sys.exit(f"{MEMBER} from {WHEEL} has sha256 {digest}, expected {VOCAB_SHA256}; not installed")
    # clip_vendor stands alone (no project imports), so the one file it installs is written here:
    # a unique temporary name in the target folder, then an atomic rename
    fd, tmp_name = tempfile.mkstemp(dir=VOCAB_PATH.parent, prefix=f".{VOCAB_PATH.name}.")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp_name, VOCAB_PATH)
    print(f"installed {VOCAB_PATH} from {WHEEL}, sha256 ok")


if __name__ == "__main__":
    main()
