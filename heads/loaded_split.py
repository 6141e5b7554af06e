"""A cache split as the heads read it (shared by training and evaluation), on the device or on the host.

`SplitTensors`: the whole split goes to the device once: frames padded to [n_videos, T, D] fp16
with a mask, pooled text [n_captions, D] fp16, and the flat token features with a padded index.
Batches are index gathers, handed to the heads in fp32.

`HostSplit`: for a split larger than the device (or than the process's memory), nothing is loaded
whole: each batch's rows are gathered from the cache's memory-mapped files on the host, into
pinned memory on a GPU, the next batch while the current one computes (`prefetch`). It answers
the same calls with the same values to the bit: the same fp16 rows, padded to the same widths.

A reversed video is `flip_frames` of its row: the real frames in reverse order, padding at the end.
"""

import resource
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from corpus.feature_cache import CacheSplit, open_split
from corpus.sampling import frame_subset

PLACEMENTS = ("auto", "device", "host")
DEVICE_SHARE = 0.5  # auto: a split goes to the device when its padded frames take at most this share of what is free


@dataclass
class SplitTensors:
    frames: torch.Tensor  # [n_loaded_videos, T, D] fp16, zero-padded
    frame_mask: torch.Tensor  # [n_loaded_videos, T] bool
    local_row: torch.Tensor  # [n_videos] int64: video row -> row of `frames` (-1: not loaded here)
    text: torch.Tensor  # [n_captions, D] fp16, pooled
    token_feats: torch.Tensor  # [total_tokens + 1, D] fp16; the last row is zeros, for padding
    token_index: torch.Tensor  # [n_captions, L] int64 rows of token_feats (padding -> last row)
    token_mask: torch.Tensor  # [n_captions, L] bool

    @property
    def device(self) -> torch.device:
        return self.frames.device

    def prefetch(self, video_rows: np.ndarray) -> None:
        """Nothing to fetch: the split is on the device already."""

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


@dataclass
class HostSplit:
    cache: CacheSplit  # memory-mapped: only the rows a batch asks for are read
    n_frames: int
    device: torch.device
    token_width: int  # the split's longest caption in tokens: every batch is padded to it, as on the device
    fetcher: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1))
    pending: tuple | None = None  # (video rows, future of their gathered frames)

    def prefetch(self, video_rows: np.ndarray) -> None:
        """Start gathering the next batch's frames while the current one computes."""
        rows = np.array(video_rows)  # a copy: the caller's array may change before the fetch ends
        self.pending = (rows, self.fetcher.submit(self.gathered_frames, rows))

    def gathered_frames(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # the files are read all run long: one that was edited or cut since it was checked stops the run
        # here, before a memory map reads its new bytes or faults past its end
        self.cache.assert_unchanged()
        return padded_frames(self.cache, rows, self.n_frames)

    def to_device(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(array)
        if self.device.type == "cuda":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor

    def video_batch(self, video_rows: torch.Tensor, reversed_flags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows = video_rows.cpu().numpy()
        if self.pending is not None and np.array_equal(self.pending[0], rows):
            frames, mask = self.pending[1].result()
        else:
            frames, mask = self.gathered_frames(rows)
        self.pending = None
        frames, mask = self.to_device(frames), self.to_device(mask)
        return flip_frames(frames, mask, reversed_flags.to(self.device)).float(), mask

    def text_input(self, caption_rows: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
        rows = caption_rows.cpu().numpy()
        self.cache.assert_unchanged()
        if mode == "pooled":
            text = self.to_device(np.asarray(self.cache.text_feats[rows])).unsqueeze(1).float()
            return text, torch.ones(text.shape[:2], dtype=torch.bool, device=text.device)
        dim = self.cache.text_feats.shape[1]
        tokens, mask = padded_tokens([np.asarray(self.cache.tokens(row)) for row in rows], self.token_width, dim)
        return self.to_device(tokens).float(), self.to_device(mask)


def padded_tokens(token_feats: list[np.ndarray], width: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Each caption's token features [n_i, D] (fp16, as the cache stores them), zero-padded at the end
    to [B, width, D], and the [B, width] mask of the real ones: how a head reads token input."""
    tokens = np.zeros((len(token_feats), width, dim), dtype=np.float16)
    mask = np.zeros((len(token_feats), width), dtype=bool)
    for index, features in enumerate(token_feats):
        tokens[index, : len(features)] = features
        mask[index, : len(features)] = True
    return tokens, mask


def padded_frames(cache: CacheSplit, video_rows: Sequence, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """[B, T, D] fp16 frames of the given rows (each video's evenly spaced subset, zero-padded at
    the end) and their [B, T] mask: one rule for a split loaded whole and a batch read from the host."""
    frames = np.zeros((len(video_rows), n_frames, cache.video_feats.shape[1]), dtype=np.float16)
    mask = np.zeros((len(video_rows), n_frames), dtype=bool)
    for index, row in enumerate(video_rows):
        video = cache.frames(row)
        keep = frame_subset(len(video), n_frames)
        frames[index, : len(keep)] = video[keep]
        mask[index, : len(keep)] = True
    return frames, mask


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


def free_memory(device: torch.device) -> int:
    """Bytes this process can still fill on `device`: the GPU's free memory, or on the CPU the
    least of the machine's available memory, its cgroup's limit and its address-space limit."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    limits = [int(meminfo["MemAvailable"].split()[0]) * 1024]
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        limits.append(soft)
    return min(limits + cgroup_memory_limits())


def cgroup_memory_limits() -> list[int]:
    """The memory limit of this process's cgroup (v2 memory.max or v1 memory.limit_in_bytes), if set."""
    limits = []
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, group = line.split(":", 2)
        if controllers == "":
            path = Path("/sys/fs/cgroup") / group.lstrip("/") / "memory.max"
        elif "memory" in controllers.split(","):
            path = Path("/sys/fs/cgroup/memory") / group.lstrip("/") / "memory.limit_in_bytes"
        else:
            continue
        try:
            value = path.read_text().strip()
        except OSError:
            continue
        if value.isdigit():  # v2 says "max" when there is no limit
            limits.append(int(value))
    return limits


def placement(requested: str, cache: CacheSplit, n_videos: int, n_frames: int, device: torch.device) -> str:
    """Where a split's frames live: `requested`, or for auto the device when its padded frames
    ([videos, T, D] fp16) take at most DEVICE_SHARE of the free memory, else the host."""
    if requested != "auto":
        return requested
    padded_bytes = n_videos * n_frames * cache.video_feats.shape[1] * 2
    return "device" if padded_bytes <= DEVICE_SHARE * free_memory(device) else "host"


def load_split_tensors(
    cache_dir: Path,
    split: str,
    n_frames: int,
    device: str,
    with_tokens: bool = False,
    video_rows: Sequence | None = None,
    where: str = "device",
) -> SplitTensors | HostSplit:
    """`split` as the heads read it: every video, or only `video_rows` (a rank's shard), on the
    device, or read batch by batch from the host (`where`: device, host or auto)."""
    cache = open_split(cache_dir, split)
    rows = list(range(len(cache.video_ids)) if video_rows is None else video_rows)
    if placement(where, cache, len(rows), n_frames, torch.device(device)) == "host":
        token_lengths = np.diff(cache.text_token_offsets)
        return HostSplit(cache, n_frames, torch.device(device), int(token_lengths.max()) if with_tokens else 1)
    dim = cache.video_feats.shape[1]
    frames, frame_mask = padded_frames(cache, rows, n_frames)
    local_row = np.full(len(cache.video_ids), -1, dtype=np.int64)
    local_row[rows] = np.arange(len(rows))
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
        # a memmap is copied (torch wants writable memory); arrays built here are handed over as they are
        return torch.from_numpy(
            array if isinstance(array, np.ndarray) and array.flags.writeable else np.array(array)
        ).to(device)

    loaded = SplitTensors(
        to_device(frames),
        to_device(frame_mask),
        to_device(local_row),
        to_device(cache.text_feats),
        to_device(token_feats),
        to_device(token_index),
        to_device(token_mask),
    )
    cache.assert_unchanged()  # what was read is what was checked
    return loaded


def flip_frames(frames: torch.Tensor, mask: torch.Tensor, reversed_flags: torch.Tensor) -> torch.Tensor:
    """Reverse the real frames of the rows whose flag is set; padding stays at the end."""
    n_real = mask.sum(dim=1, keepdim=True)
    positions = torch.arange(frames.shape[1], device=frames.device)[None, :]
    flipped = torch.where(positions < n_real, n_real - 1 - positions, positions)
    order = torch.where(reversed_flags[:, None].bool(), flipped, positions.expand_as(flipped))
    return frames.gather(1, order[:, :, None].expand_as(frames))
