"""A feature cache written straight from arrays, where only frame order tells captions apart.

Video i drifts from a start vector A_i to an end vector B_i over its frames. Its forward caption
embeds as B_i ("where it ends up"), the caption of its reversal as A_i. Any order-blind head gives
V and flip(V) the same score for every caption, so on Hard it can do no better than a coin flip
between them; a head that reads frame order can tell them apart.
"""
import json

import numpy as np

from clip_vendor.tokenizer import file_sha256
from feature_cache import PAIR_COLUMNS, atomic_write_csv, atomic_write_json, atomic_write_lines, atomic_write_npy

TOKENS_PER_CAPTION = 4


def order_only_split(rng, n_videos, n_frames, dim, captions_per_direction=1, noise=0.05):
    starts, ends = rng.standard_normal((2, n_videos, dim)).astype(np.float32)
    progress = np.linspace(0.0, 1.0, n_frames, dtype=np.float32)[None, :, None]
    frames = (1 - progress) * starts[:, None] + progress * ends[:, None]
    frames += noise * rng.standard_normal(frames.shape).astype(np.float32)
    captions = []  # (video row, direction, text embedding); extra captions are noisy paraphrases
    for row in range(n_videos):
        for direction, target in (("forward", ends[row]), ("reverse", starts[row])):
            for index in range(captions_per_direction):
                captions.append((row, direction, target + (noise * rng.standard_normal(dim) if index else 0)))
    return frames, captions


def write_split(cache_dir, split, frames, captions, rng, pair_files):
    split_dir = cache_dir / split
    split_dir.mkdir(parents=True, exist_ok=True)
    n_videos, n_frames, dim = frames.shape
    video_ids = [f"{split}{row}" for row in range(n_videos)]
    atomic_write_npy(split_dir / "video_feats.npy", frames.reshape(-1, dim).astype(np.float16))
    atomic_write_npy(split_dir / "video_offsets.npy", np.arange(n_videos + 1, dtype=np.int64) * n_frames)
    atomic_write_json(split_dir / "video_ids.json", video_ids)
    text = np.stack([embedding for _, _, embedding in captions]).astype(np.float16)
    atomic_write_npy(split_dir / "text_feats.npy", text)
    # token features: a few noise tokens, then the pooled embedding at the end-of-text position
    tokens = rng.standard_normal((len(captions), TOKENS_PER_CAPTION, dim)).astype(np.float16)
    tokens[:, -1] = text
    atomic_write_npy(split_dir / "text_token_feats.npy", tokens.reshape(-1, dim))
    atomic_write_npy(split_dir / "text_token_offsets.npy",
                     np.arange(len(captions) + 1, dtype=np.int64) * TOKENS_PER_CAPTION)
    rows, lines, seen = [], [], {}
    for caption_row, (video_row, direction, _) in enumerate(captions):
        index = seen[(video_row, direction)] = seen.get((video_row, direction), -1) + 1
        caption_id = f"{video_ids[video_row]}#{direction}#human#{index}"
        lines.append(json.dumps({"caption_id": caption_id, "video_id": video_ids[video_row], "direction": direction,
                                 "kind": "human", "text": f"{direction} caption of {video_ids[video_row]}",
                                 "row": caption_row}))
        rows.append((caption_row, caption_id, video_row, video_ids[video_row], int(direction == "reverse")))
    atomic_write_lines(split_dir / "captions.jsonl", lines)
    for name, keep in pair_files.items():
        atomic_write_csv(split_dir / name, PAIR_COLUMNS, [row for row in rows if keep(row)])


def write_order_only_cache(cache_dir, clip_path, clip_config, n_train=256, n_valid=48, n_test=48, n_frames=8, seed=0,
                           train_captions_per_direction=1):
    """Train/valid/test splits (RTime layout) of order-only videos, with a cache_meta.json naming
    `clip_path` (whose text tower the heads start from) and the given CLIP config."""
    rng = np.random.default_rng(seed)
    dim = clip_config["embed_dim"]
    every = lambda row: True  # noqa: E731
    forward_only = lambda row: row[4] == 0  # noqa: E731
    for split, n_videos, pair_files in (("train", n_train, {"train_pairs.csv": every}),
                                        ("valid", n_valid, {"valid_pairs.csv": every}),
                                        ("test", n_test, {"test_pairs.csv": every, "test_origin_pairs.csv": forward_only})):
        per_direction = train_captions_per_direction if split == "train" else 1
        frames, captions = order_only_split(rng, n_videos, n_frames, dim, per_direction)
        write_split(cache_dir, split, frames, captions, rng, pair_files)
    contract = {"clip": {"file": clip_path.name, "sha256": file_sha256(clip_path), "config": clip_config},
                "sampling": {"fps": 1.0, "t_max": n_frames, "rule": "synthetic"},
                "tokenizer": {"context_length": 77}, "storage_dtype": "float16",
                "preprocessing": {"size": clip_config["image_resolution"]}, "compute": {"dtype": "fp32"}}
    counts = {"train": {"videos": n_train}, "valid": {"videos": n_valid}, "test": {"videos": n_test}}
    atomic_write_json(cache_dir / "cache_meta.json", {"contract": contract, "counts": counts, "complete": True,
                                                      "git_commit": "synthetic"})
