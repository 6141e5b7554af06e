"""Files on disk: every result is written under a temporary name and renamed into place, an
output folder has one writer at a time, and files are identified by their sha256.

A temporary name is `.{stem}.tmp{pid}{suffix}` beside the target: hidden, owned by the writing
process, and keeping the suffix for writers that choose a format by it (OpenCV, np.save). A full
disk ends the run with a message naming the path, and the temporary file is removed.
"""

import contextlib
import csv
import errno
import fcntl
import hashlib
import io
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from infra.cli import StageError

STALE_TEMPORARY_GLOB = ".*.tmp*"
LOCK_NAME = ".lock"
MANIFEST = ".written_by.json"  # in every folder atomic_folder writes: its writer and every file it holds
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class OutOfSpace(StageError):
    """No room left for a write: the message names the path, the bytes needed where known, and what to do."""

    def __init__(self, path: Path, needed: int | None = None):
        needed_text = f" ({needed:,} bytes needed)" if needed else ""
        super().__init__(
            f"no space left on the device writing {path}{needed_text}; nothing half-written was "
            "kept: free some space and rerun, finished work is reused"
        )


def check_free_space(folder: Path, needed: int) -> None:
    """Refuse to start a write of `needed` bytes into `folder` that cannot fit."""
    stats = os.statvfs(folder)
    if stats.f_bavail * stats.f_frsize < needed:
        raise OutOfSpace(folder, needed)


class FolderLocked(StageError):
    """Another run is writing into the same output folder."""


class NotWritable(StageError):
    """An output folder this process may not create or write into."""

    def __init__(self, folder: Path, err: OSError):
        super().__init__(f"cannot write into {folder} ({err.strerror or err}); choose a writable output folder")


@contextlib.contextmanager
def exclusive_folder(folder: Path, lock_name: str = LOCK_NAME) -> Iterator[None]:
    """Hold an exclusive lock on `folder` (created if needed) while writing into it; `lock_name`
    gives one output of a shared folder its own lock (evaluate.py's result files). A second run
    on the same output stops at once, naming it and the holder's pid; a folder that cannot be
    written stops the run naming it. The kernel releases the lock when its holder dies, even by
    kill -9; the lock file goes when the holder finishes, and the folder with it if this run made
    it and left nothing there (a run refused on its inputs leaves no empty folder behind)."""
    folder = Path(folder)
    lock_path = folder / lock_name
    made = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(lock_path, "a+")
    except OSError as err:
        raise NotWritable(folder, err) from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        what = folder if lock_name == LOCK_NAME else folder / lock_name.removeprefix(".").removesuffix(".lock")
        raise FolderLocked(
            f"{what} is in use by another run (pid {holder}); wait for it to finish, or use another output"
        ) from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        lock_path.unlink(missing_ok=True)
        handle.close()
        if made:
            with contextlib.suppress(OSError):  # not empty: the run's outputs stay
                folder.rmdir()


class ForeignFiles(StageError):
    """An output that would replace or delete something this project did not write there."""


def folder_files(folder: Path) -> list[str]:
    """Every file under `folder`, as paths relative to it, sorted."""
    return sorted(str(item.relative_to(folder)) for item in Path(folder).rglob("*") if not item.is_dir())


def check_replaceable(path: Path) -> None:
    """Refuse to replace `path` unless it is absent, an empty folder, or a folder this project wrote
    whose manifest lists every file in it now: what a user put there is never deleted."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if path.is_symlink() or not path.is_dir():
        raise ForeignFiles(f"{path} exists and is not a folder this project wrote: move it, or choose another output")
    files = folder_files(path)
    if not files:
        return
    try:
        listed = set(json.loads((path / MANIFEST).read_text(encoding="utf-8"))["files"])
    except (OSError, ValueError, KeyError, TypeError):
        raise ForeignFiles(
            f"{path} holds {files[0]!r} and was not written by this project (it has no {MANIFEST}): writing there "
            "would delete it; move it, or choose another output"
        ) from None
    foreign = [name for name in files if name != MANIFEST and name not in listed]
    if foreign:
        raise ForeignFiles(
            f"{path} holds {foreign[0]!r}, which this project did not write there: writing there would delete it; "
            "move it, or choose another output"
        )


@contextlib.contextmanager
def atomic_folder(path: Path, writer: str) -> Iterator[Path]:
    """Yield a temporary folder beside `path` to fill; when the block ends, a manifest naming
    `writer` and every file is added, its files are fsynced, and it replaces `path` whole (an old
    `path` is moved aside, then deleted), so `path` never holds the files of two writes. An existing
    `path` is replaced only if this project wrote all of it (`check_replaceable`, before the work and
    again before the swap). On any error the temporary folder is removed."""
    path = Path(path)
    check_replaceable(path)
    tmp_path, old_path = temporary_path(path), path.with_name(f".{path.name}.old{os.getpid()}")
    shutil.rmtree(tmp_path, ignore_errors=True)
    try:
        tmp_path.mkdir(parents=True)
        yield tmp_path
        manifest = {"writer": writer, "files": folder_files(tmp_path)}
        (tmp_path / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        for item in folder_files(tmp_path):
            fsync_file(tmp_path / item)
        check_replaceable(path)
        if path.exists():
            os.replace(path, old_path)
        os.replace(tmp_path, path)
        shutil.rmtree(old_path, ignore_errors=True)
    except OSError as err:
        shutil.rmtree(tmp_path, ignore_errors=True)
        if err.errno in NO_SPACE:
            raise OutOfSpace(path) from None
        raise
    except BaseException:
        shutil.rmtree(tmp_path, ignore_errors=True)
        raise


def remove_stale_outputs(path: Path) -> None:
    """Delete what a killed `atomic_folder` or `atomic_output` of `path` left beside it."""
    path = Path(path)
    for stale in path.parent.glob(f".{path.stem}.tmp*"):
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink(missing_ok=True)
    for stale in path.parent.glob(f".{path.name}.old*"):
        shutil.rmtree(stale, ignore_errors=True)


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
    except OSError as err:
        tmp_path.unlink(missing_ok=True)
        if err.errno in NO_SPACE:
            raise OutOfSpace(path) from None
        raise
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
    """Write row blocks, in order, into one .npy of `shape` (it carries its own dtype and shape),
    appending each block to the file: neither the array nor its pages are ever held whole (a
    memory map would keep every page it wrote resident: 2.7 GB for a 100k-video merge)."""
    dtype = np.dtype(dtype)
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": tuple(shape)}
    with atomic_output(path) as tmp_path, open(tmp_path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        f.flush()
        size = f.tell() + int(np.prod(shape)) * dtype.itemsize
        try:  # reserve the whole file now: a full disk shows before any block is written, with the bytes
            os.posix_fallocate(f.fileno(), 0, size)
        except OSError as err:
            if err.errno in NO_SPACE:
                raise OutOfSpace(path, size) from None
            if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # a file system that cannot reserve
                raise
        rows = 0
        for block in blocks:
            block = np.ascontiguousarray(block, dtype=dtype)
            if block.shape[1:] != tuple(shape[1:]):
                raise ValueError(f"{path}: a block of shape {block.shape} in an array of shape {tuple(shape)}")
            f.write(block.data)
            rows += len(block)
        if rows != shape[0]:
            raise ValueError(f"{path}: blocks hold {rows} rows, expected {shape[0]}")


def atomic_write_npy(path: Path, array: np.ndarray) -> None:
    atomic_write_npy_blocks(path, [array], array.shape, array.dtype)


def atomic_write_npz(path: Path, **arrays: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


FINGERPRINT_BYTES = 1 << 20  # a video is known by its size and the hash of its first and last MiB


def file_fingerprint(path: Path) -> dict:
    """{"size", "head_tail_sha256"}: the file's size and the sha256 of its first and last MiB (the
    whole file when it is under 2 MiB). Cheap for large videos, and any change to a file's length,
    header, index or ending shows; a same-size change confined to the middle of a large file does not."""
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        digest.update(f.read(FINGERPRINT_BYTES))
        if size > FINGERPRINT_BYTES:
            f.seek(max(FINGERPRINT_BYTES, size - FINGERPRINT_BYTES))
            digest.update(f.read())
    return {"size": size, "head_tail_sha256": digest.hexdigest()}
