"""Files on disk: every result is written under a temporary name and renamed into place, and
files are identified by their sha256.

A temporary name is `.{stem}.tmp{pid}{suffix}` beside the target: hidden, owned by the writing
process, and keeping the suffix for writers that choose a format by it (OpenCV, np.save).
"""

import contextlib
import csv
import hashlib
import io
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

STALE_TEMPORARY_GLOB = ".*.tmp*"


def temporary_path(path: Path) -> Path:
    """Where a write of `path` happens before its rename."""
    path = Path(path)
    return path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")


def remove_stale_temporaries(folder: Path) -> None:
    """Delete what writes killed half-way (kill -9) left behind in `folder`; only our own names."""
    for stale in Path(folder).glob(STALE_TEMPORARY_GLOB):
        stale.unlink(missing_ok=True)


def fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write; when the block ends, fsync it and rename it
    into place, so readers never see half a file. On any error the temporary file is removed."""
    path = Path(path)
    tmp_path = temporary_path(path)
    try:
        yield tmp_path
        fsync_file(tmp_path)
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_output(path) as tmp_path:
        tmp_path.write_bytes(data)


def atomic_write_json(path: Path, value) -> None:
    atomic_write_bytes(path, (json.dumps(value, indent=1, sort_keys=True) + "\n").encode("utf-8"))


def atomic_write_lines(path: Path, lines: Iterable[str]) -> None:
    atomic_write_bytes(path, "".join(line + "\n" for line in lines).encode("utf-8"))


def atomic_write_csv(path: Path, header: Iterable[str], rows: Iterable[Iterable]) -> None:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_bytes(path, text.getvalue().encode("utf-8"))


def atomic_write_npy_blocks(path: Path, blocks: Iterable[np.ndarray], shape: tuple, dtype) -> None:
    """Write row blocks, in order, into one .npy of `shape` (it carries its own dtype and shape)
    through a memmap, so a large array never has to sit in memory whole."""
    with atomic_output(path) as tmp_path:
        out = np.lib.format.open_memmap(tmp_path, mode="w+", dtype=dtype, shape=tuple(shape))
        row = 0
        for block in blocks:
            out[row : row + len(block)] = block
            row += len(block)
        if row != shape[0]:
            raise ValueError(f"{path}: blocks hold {row} rows, expected {shape[0]}")
        out.flush()
        del out


def atomic_write_npy(path: Path, array: np.ndarray) -> None:
    atomic_write_npy_blocks(path, [array], array.shape, array.dtype)


def atomic_write_npz(path: Path, **arrays: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
