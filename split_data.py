"""A cache split on the device, and score matrices over it (shared by training and evaluation).

The whole split goes to the device once: frames padded to [n_videos, T, D] fp16 with a mask,
pooled text [n_captions, D] fp16, and the flat token features with a padded index. Batches are
index gathers. A reversed video is `flip_frames` of its row: the real frames in reverse order,
padding left at the end.
"""
import contextlib
from dataclasses import dataclass

import numpy as np
import torch

from feature_cache import open_split, read_pairs
from heads import unit
from video_frames import segment_centres


@dataclass
class SplitTensors:
    frames: torch.Tensor        # [n_loaded_videos, T, D] fp16, zero-padded
    frame_mask: torch.Tensor    # [n_loaded_videos, T] bool
    local_row: torch.Tensor     # [n_videos] int64: video row -> row of `frames` (-1: not loaded here)
    text: torch.Tensor          # [n_captions, D] fp16, pooled
    token_feats: torch.Tensor   # [total_tokens + 1, D] fp16; the last row is zeros, for padding
    token_index: torch.Tensor   # [n_captions, L] int64 rows of token_feats (padding -> last row)
    token_mask: torch.Tensor    # [n_captions, L] bool

    def video_batch(self, video_rows, reversed_flags):
        """Frames of the given video rows, each flipped in time where its flag is set."""
        local_rows = self.local_row[video_rows]
        frames, mask = self.frames[local_rows], self.frame_mask[local_rows]
        return flip_frames(frames, mask, reversed_flags), mask

    def text_input(self, caption_rows, mode):
        """What tightTransf reads for these captions: ([B, L, D], [B, L]) pooled (L = 1) or tokens."""
        if mode == "pooled":
            text = self.text[caption_rows].unsqueeze(1)
            return text, torch.ones(text.shape[:2], dtype=torch.bool, device=text.device)
        return self.token_feats[self.token_index[caption_rows]], self.token_mask[caption_rows]


def frame_subset(n_cached, n_wanted):
    """Evenly spaced, mirror-symmetric subset of a video's cached frames (all of them if fewer)."""
    if n_cached <= n_wanted:
        return list(range(n_cached))
    return segment_centres(n_cached, n_wanted)


def load_split_tensors(cache_dir, split, n_frames, device, with_tokens=False, video_rows=None):
    """Load `split` to `device`: every video, or only `video_rows` (a rank's shard)."""
    cache = open_split(cache_dir, split)
    rows = list(range(len(cache.video_ids)) if video_rows is None else video_rows)
    dim = cache.video_feats.shape[1]
    frames = np.zeros((len(rows), n_frames, dim), dtype=np.float16)
    frame_mask = np.zeros((len(rows), n_frames), dtype=bool)
    local_row = np.full(len(cache.video_ids), -1, dtype=np.int64)
    for local, row in enumerate(rows):
        video = cache.frames(row)
        keep = frame_subset(len(video), n_frames)
        frames[local, : len(keep)] = video[keep]
        frame_mask[local, : len(keep)] = True
        local_row[row] = local
    token_lengths = np.diff(cache.text_token_offsets)
    if with_tokens:
        token_feats = np.concatenate([cache.text_token_feats, np.zeros((1, dim), np.float16)])
        positions = np.arange(token_lengths.max())
        token_mask = positions[None, :] < token_lengths[:, None]
        token_index = np.where(token_mask, cache.text_token_offsets[:-1, None] + positions[None, :], len(token_feats) - 1)
    else:  # not needed: keep a one-row placeholder rather than gigabytes of tokens
        token_feats = np.zeros((1, dim), np.float16)
        token_index = np.zeros((len(token_lengths), 1), dtype=np.int64)
        token_mask = np.zeros((len(token_lengths), 1), dtype=bool)
    to = lambda array: torch.from_numpy(np.array(array)).to(device)  # noqa: E731  (a writable copy of the memmap)
    return SplitTensors(to(frames), to(frame_mask), to(local_row), to(np.asarray(cache.text_feats)), to(token_feats),
                        to(token_index), to(token_mask))


def flip_frames(frames, mask, reversed_flags):
    """Reverse the real frames of the rows whose flag is set; padding stays at the end."""
    n_real = mask.sum(dim=1, keepdim=True)
    positions = torch.arange(frames.shape[1], device=frames.device)[None, :]
    flipped = torch.where(positions < n_real, n_real - 1 - positions, positions)
    order = torch.where(reversed_flags[:, None].bool(), flipped, positions.expand_as(flipped))
    return frames.gather(1, order[:, :, None].expand_as(frames))


@dataclass
class Setting:
    """Queries and candidates of one evaluation setting, read from a pair list.

    Candidates are (video_row, reversed) items in this order: originals by video row, then
    reversed videos by video row; queries are captions in caption-row order. These orders are
    the stable-sort tie order of the metrics.
    """
    caption_rows: np.ndarray    # [n_queries]
    candidates: list            # [(video_row, reversed)]
    gold: np.ndarray            # [n_queries, n_candidates] bool: caption -> its video item


def setting_from_pairs(pairs):
    candidates = sorted({(p["video_row"], p["reversed"]) for p in pairs}, key=lambda item: (item[1], item[0]))
    column_of = {item: column for column, item in enumerate(candidates)}
    pairs = sorted(pairs, key=lambda p: p["caption_row"])
    gold = np.zeros((len(pairs), len(candidates)), dtype=bool)
    for query, pair in enumerate(pairs):
        gold[query, column_of[(pair["video_row"], pair["reversed"])]] = True
    return Setting(np.array([p["caption_row"] for p in pairs], dtype=np.int64), candidates, gold)


def read_setting(cache_dir, split, pair_file):
    return setting_from_pairs(read_pairs(cache_dir, split, pair_file))


@torch.no_grad()
def score_matrix(head, data, setting, text_input="pooled", pair_batch=8192, video_batch=1024):
    """Scores [n_queries, n_candidates] (float32 on the CPU) of `head` over a setting.

    Query-independent heads: cosine of unit text and video vectors. tightTransf: every pair
    through the cross-encoder, `pair_batch` pairs per forward.
    """
    device = data.frames.device
    video_rows = torch.tensor([row for row, _ in setting.candidates], device=device)
    reversed_flags = torch.tensor([flag for _, flag in setting.candidates], device=device)
    caption_rows = torch.from_numpy(setting.caption_rows).to(device)
    if head.query_independent:
        video_emb = torch.cat([head.encode_video(*to_float(data.video_batch(video_rows[i : i + video_batch],
                                                                              reversed_flags[i : i + video_batch])))
                               for i in range(0, len(video_rows), video_batch)])
        return (unit(data.text[caption_rows].float()) @ video_emb.T).float().cpu()
    texts_per_forward = max(1, pair_batch // len(video_rows))
    frames, frame_mask = to_float(data.video_batch(video_rows, reversed_flags))
    rows = []
    for start in range(0, len(caption_rows), texts_per_forward):
        text, text_mask = data.text_input(caption_rows[start : start + texts_per_forward], text_input)
        rows.append(head.score_matrix(text.float(), text_mask, frames, frame_mask).float().cpu())
    return torch.cat(rows)


def autocast_for(device):
    """bf16 autocast on CUDA; on the CPU everything stays fp32."""
    if str(device).startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_float(batch):
    frames, mask = batch
    return frames.float(), mask
