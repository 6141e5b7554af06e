"""The feature cache on disk: atomic writes, the metadata contract, and memory-mapped reading.

Layout (README "Cache layout"): OUT/cache_meta.json, OUT/failed_videos.json, and per split
OUT/{split}/ with video_feats.npy [total_frames, D] fp16, video_offsets.npy [n_videos+1] int64,
video_ids.json, text_feats.npy [n_captions, D] fp16, text_token_feats.npy [total_tokens, D] fp16,
text_token_offsets.npy [n_captions+1] int64, captions.jsonl and the pair lists (*_pairs.csv).
"""
import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np


META_NAME = "cache_meta.json"
PAIR_COLUMNS = ("caption_row", "caption_id", "video_row", "video_id", "reversed")


def temporary_path(path):
    """Where a write of `path` happens before its rename: hidden, and named after the writing process."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def remove_stale_temporaries(folder):
    """Delete what writes killed half-way (kill -9) left behind in `folder`; only our own names."""
    for stale in Path(folder).glob(".*.tmp*"):
        stale.unlink()


def atomic_write_bytes(path, data):
    """Write to a temporary name beside `path`, fsync, then rename: readers never see half a file."""
    path = Path(path)
    tmp_path = temporary_path(path)
    with open(tmp_path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp_path, path)


def atomic_write_json(path, value):
    atomic_write_bytes(path, (json.dumps(value, indent=1, sort_keys=True) + "\n").encode("utf-8"))


def atomic_write_npy_blocks(path, blocks, shape, dtype):
    """Write row blocks, in order, into one .npy of `shape` (it carries its own dtype and shape)
    through a memmap under a temporary name, so a large array never has to sit in memory whole."""
    path = Path(path)
    tmp_path = temporary_path(path)
    out = np.lib.format.open_memmap(tmp_path, mode="w+", dtype=dtype, shape=tuple(shape))
    row = 0
    for block in blocks:
        out[row : row + len(block)] = block
        row += len(block)
    if row != shape[0]:
        raise ValueError(f"{path}: blocks hold {row} rows, expected {shape[0]}")
    out.flush()
    del out
    os.replace(tmp_path, path)


def atomic_write_npy(path, array):
    atomic_write_npy_blocks(path, [array], array.shape, array.dtype)


def atomic_write_npz(path, **arrays):
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def atomic_write_lines(path, lines):
    atomic_write_bytes(path, "".join(line + "\n" for line in lines).encode("utf-8"))


def atomic_write_csv(path, header, rows):
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_bytes(path, text.getvalue().encode("utf-8"))


def contract_mismatch(existing, wanted, prefix=""):
    """The first field (dotted path) where two metadata contracts differ, or None."""
    for key in sorted(set(existing) | set(wanted)):
        name = f"{prefix}{key}"
        old, new = existing.get(key), wanted.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            found = contract_mismatch(old, new, name + ".")
            if found:
                return found
        elif old != new:
            return f"{name}: cache has {old!r}, this run has {new!r}"
    return None


def read_meta(cache_dir):
    path = Path(cache_dir) / META_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: is {cache_dir} a feature cache written by extract.py?")
    return json.loads(path.read_text())


@dataclass
class CacheSplit:
    """One split of a finished cache, memory-mapped (nothing is read until indexed)."""
    video_feats: np.ndarray         # [total_frames, D] fp16
    video_offsets: np.ndarray       # [n_videos + 1] int64: video v is rows offsets[v]:offsets[v+1]
    video_ids: list
    text_feats: np.ndarray          # [n_captions, D] fp16, pooled at the end-of-text token
    text_token_feats: np.ndarray    # [total_tokens, D] fp16, SOT..EOT of each caption
    text_token_offsets: np.ndarray  # [n_captions + 1] int64
    captions: list                  # dicts: caption_id, video_id, direction, kind, text, row

    def frames(self, video_row):
        return self.video_feats[self.video_offsets[video_row] : self.video_offsets[video_row + 1]]

    def tokens(self, caption_row):
        return self.text_token_feats[self.text_token_offsets[caption_row] : self.text_token_offsets[caption_row + 1]]


def open_split(cache_dir, split):
    split_dir = Path(cache_dir) / split
    if not (split_dir / "video_feats.npy").exists():
        raise FileNotFoundError(f"{split_dir} holds no finished split (no video_feats.npy): run extract.py")
    load = lambda name: np.load(split_dir / name, mmap_mode="r")  # noqa: E731
    return CacheSplit(
        video_feats=load("video_feats.npy"),
        video_offsets=load("video_offsets.npy"),
        video_ids=json.loads((split_dir / "video_ids.json").read_text()),
        text_feats=load("text_feats.npy"),
        text_token_feats=load("text_token_feats.npy"),
        text_token_offsets=load("text_token_offsets.npy"),
        captions=[json.loads(line) for line in (split_dir / "captions.jsonl").read_text().splitlines()],
    )


def read_pairs(cache_dir, split, name):
    """Rows of OUT/{split}/{name}: dicts with int caption_row, video_row, reversed."""
    path = Path(cache_dir) / split / name
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for column in ("caption_row", "video_row", "reversed"):
            row[column] = int(row[column])
    return rows
