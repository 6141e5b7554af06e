"""A cache split on the device, as the heads read it (shared by training and evaluation).

The whole split goes to the device once: frames padded to [n_videos, T, D] fp16 with a mask,
pooled text [n_captions, D] fp16, and the flat token features with a padded index. Batches are
index gathers, handed to the heads in fp32. A reversed video is `flip_frames` of its row: the
real frames in reverse order, padding left at the end.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from corpus.feature_cache import open_split
from corpus.sampling import frame_subset


@dataclass
class SplitTensors:
    frames: torch.Tensor  # [n_loaded_videos, T, D] fp16, zero-padded
    frame_mask: torch.Tensor  # [n_loaded_videos, T] bool
    local_row: torch.Tensor  # [n_videos] int64: video row -> row of `frames` (-1: not loaded here)
    text: torch.Tensor  # [n_captions, D] fp16, pooled
    token_feats: torch.Tensor  # [total_tokens + 1, D] fp16; the last row is zeros, for padding
    token_index: torch.Tensor  # [n_captions, L] int64 rows of token_feats (padding -> last row)
    token_mask: torch.Tensor  # [n_captions, L] bool

    def video_batch(self, video_rows: torch.Tensor, reversed_flags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames [B, T, D] fp32 of the given video rows, each flipped in time where its flag is set, and the mask."""
        local_rows = self.local_row[video_rows]
        frames, mask = self.frames[local_rows], self.frame_mask[local_rows]
        return flip_frames(frames, mask, reversed_flags).float(), mask

    def text_input(self, caption_rows: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        """What a head reads for these captions, fp32: ([B, L, D], [B, L]), pooled (L = 1) or tokens."""
        if mode == "pooled":
            text = self.text[caption_rows].unsqueeze(1).float()
            return text, torch.ones(text.shape[:2], dtype=torch.bool, device=text.device)
        return self.token_feats[self.token_index[caption_rows]].float(), self.token_mask[caption_rows]


def frames_to_use(requested: int | None, cached_counts: np.ndarray, t_max: int, where: str) -> int:
    """How many frames per video a head reads: `requested` (--frames), refused when the videos of
    `where` hold fewer (a setting the run could not honour is never recorded), else every frame
    the cache holds, up to its t_max."""
    most = int(cached_counts.max())
    if requested is None:
        return min(t_max, most)
    if requested > most:
        raise ValueError(
            f"--frames {requested}: the videos of {where} hold at most {most} frames (per video: "
            f"{int(cached_counts.min())} to {most}); use at most {most}"
        )
    return requested


def load_split_tensors(
    cache_dir: Path,
    split: str,
    n_frames: int,
    device: str,
    with_tokens: bool = False,
    video_rows: Sequence | None = None,
) -> SplitTensors:
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
        token_index = np.where(
            token_mask, cache.text_token_offsets[:-1, None] + positions[None, :], len(token_feats) - 1
        )
    else:  # not needed: keep a one-row placeholder rather than gigabytes of tokens
        token_feats = np.zeros((1, dim), np.float16)
        token_index = np.zeros((len(token_lengths), 1), dtype=np.int64)
        token_mask = np.zeros((len(token_lengths), 1), dtype=bool)

    def to_device(array):
        return torch.from_numpy(np.array(array)).to(device)  # a writable copy of the memmap

    return SplitTensors(
        to_device(frames),
        to_device(frame_mask),
        to_device(local_row),
        to_device(cache.text_feats),
        to_device(token_feats),
        to_device(token_index),
        to_device(token_mask),
    )


def flip_frames(frames: torch.Tensor, mask: torch.Tensor, reversed_flags: torch.Tensor) -> torch.Tensor:
    """Reverse the real frames of the rows whose flag is set; padding stays at the end."""
    n_real = mask.sum(dim=1, keepdim=True)
    positions = torch.arange(frames.shape[1], device=frames.device)[None, :]
    flipped = torch.where(positions < n_real, n_real - 1 - positions, positions)
    order = torch.where(reversed_flags[:, None].bool(), flipped, positions.expand_as(flipped))
    return frames.gather(1, order[:, :, None].expand_as(frames))
