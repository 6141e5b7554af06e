"""The feature cache on disk: its file names, the metadata contract, and memory-mapped reading.

Layout (README "Cache layout"): OUT/cache_meta.json, OUT/failed_videos.json, and per split
OUT/{split}/ with video_feats.npy [total_frames, D] fp16, video_offsets.npy [n_videos+1] int64,
video_ids.json, text_feats.npy [n_captions, D] fp16, text_token_feats.npy [total_tokens, D] fp16,
text_token_offsets.npy [n_captions+1] int64, captions.jsonl and the pair lists (*_pairs.csv).
This module is the only place those names are spelled.
"""

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

META_NAME = "cache_meta.json"
FAILED_VIDEOS_NAME = "failed_videos.json"
PARTS_DIR = "parts"
VIDEO_FEATS = "video_feats.npy"
VIDEO_OFFSETS = "video_offsets.npy"
VIDEO_IDS = "video_ids.json"
TEXT_FEATS = "text_feats.npy"
TEXT_TOKEN_FEATS = "text_token_feats.npy"
TEXT_TOKEN_OFFSETS = "text_token_offsets.npy"
CAPTIONS = "captions.jsonl"
PAIR_COLUMNS = ("caption_row", "caption_id", "video_row", "video_id", "reversed")


def pair_file(split: str, setting: str) -> str:
    """File name of a split's pair list for `setting` (annotations.pair_lists names the settings):
    Origin has its own file; the split's main list (train, hard or all) is `{split}_pairs.csv`."""
    return f"{split}_origin_pairs.csv" if setting == "origin" else f"{split}_pairs.csv"


# The contract fields a trained head depends on: what the features mean, not which annotations or
# batch sizes produced them. A head may be evaluated on any cache that agrees on these.
FEATURE_FIELDS = ("clip", "tokenizer", "preprocessing", "sampling", "storage_dtype")


def feature_contract(meta: dict) -> dict:
    """The FEATURE_FIELDS of a cache's contract; the CLIP file is known by its sha256, not its name."""
    contract = meta["contract"]
    fields = {field: contract.get(field) for field in FEATURE_FIELDS}
    fields["clip"] = {key: value for key, value in contract["clip"].items() if key != "file"}
    return fields


def contract_mismatch(
    existing: dict, wanted: dict, labels: tuple[str, str] = ("cache", "this run"), prefix: str = ""
) -> str | None:
    """The first field (dotted path) where two metadata contracts differ, with both values, or None."""
    for key in sorted(set(existing) | set(wanted)):
        name = f"{prefix}{key}"
        old, new = existing.get(key), wanted.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            found = contract_mismatch(old, new, labels, name + ".")
            if found:
                return found
        elif old != new:
            return f"{name}: {labels[0]} has {old!r}, {labels[1]} has {new!r}"
    return None


class CacheError(Exception):
    """A cache that is missing, incomplete or unreadable; the message names the file and what to run."""


def read_meta(cache_dir: Path) -> dict:
    path = Path(cache_dir) / META_NAME
    if not path.exists():
        raise CacheError(f"{path} not found: is {cache_dir} a feature cache written by extract.py?")
    return json.loads(path.read_text())


def split_format(meta: dict, split: str) -> str:
    """The annotation format ("rtime" or "generic") a split of the cache was extracted from."""
    entry = meta["contract"]["annotations"].get(split)
    if entry is None:
        raise CacheError(f"the cache holds no split {split!r} (it has {sorted(meta['contract']['annotations'])})")
    return entry["format"]


@dataclass
class CacheSplit:
    """One split of a finished cache, memory-mapped (nothing is read until indexed)."""

    video_feats: np.ndarray  # [total_frames, D] fp16
    video_offsets: np.ndarray  # [n_videos + 1] int64: video v is rows offsets[v]:offsets[v+1]
    video_ids: list
    text_feats: np.ndarray  # [n_captions, D] fp16, pooled at the end-of-text token
    text_token_feats: np.ndarray  # [total_tokens, D] fp16, SOT..EOT of each caption
    text_token_offsets: np.ndarray  # [n_captions + 1] int64
    captions: list  # dicts: caption_id, video_id, direction, kind, text, row

    def frames(self, video_row: int) -> np.ndarray:
        return self.video_feats[self.video_offsets[video_row] : self.video_offsets[video_row + 1]]

    def tokens(self, caption_row: int) -> np.ndarray:
        return self.text_token_feats[self.text_token_offsets[caption_row] : self.text_token_offsets[caption_row + 1]]


def open_split(cache_dir: Path, split: str) -> CacheSplit:
    split_dir = Path(cache_dir) / split
    if not (split_dir / VIDEO_FEATS).exists():
        raise CacheError(f"{split_dir} holds no finished split (no {VIDEO_FEATS}): run extract.py")

    def load(name):
        return np.load(split_dir / name, mmap_mode="r")

    return CacheSplit(
        video_feats=load(VIDEO_FEATS),
        video_offsets=load(VIDEO_OFFSETS),
        video_ids=json.loads((split_dir / VIDEO_IDS).read_text()),
        text_feats=load(TEXT_FEATS),
        text_token_feats=load(TEXT_TOKEN_FEATS),
        text_token_offsets=load(TEXT_TOKEN_OFFSETS),
        captions=[json.loads(line) for line in (split_dir / CAPTIONS).read_text().splitlines()],
    )


def pairs_path(cache_dir: Path, split: str, setting: str) -> Path:
    return Path(cache_dir) / split / pair_file(split, setting)


def read_pairs(cache_dir: Path, split: str, setting: str) -> list[dict]:
    """Rows of a split's pair list for `setting`: dicts with int caption_row, video_row, reversed."""
    with open(pairs_path(cache_dir, split, setting), newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for column in ("caption_row", "video_row", "reversed"):
            row[column] = int(row[column])
    return rows
