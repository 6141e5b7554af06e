"""Order sensitivity from the cache: how a head scores each query against its own video when the
video's frames are changed in controlled ways, with no new extraction.

Each Hard query is scored against its own candidate (an original, or for a reverse caption the
reversal) as cached, and again with that candidate's real frames (padding untouched):
- `reversed`: in reverse order (for a reverse caption this is the original: the real Hard case);
- `shuffled`: in a fixed random order (a permutation seeded by the video row);
- `halves_swapped`: the second half first (the first n // 2 frames moved to the end);
- `repeated_frame`: the middle frame (index (n - 1) // 2) in every position.

The margin of a query is its score as cached minus its score changed. The first three are
permutations: an order-free head (its `order_free` says so: a sum in sorted order) must give margins
of exactly 0 there, which evaluate.py checks. The repeated frame also changes what is shown, so every head's
score moves under it: it is the reference for a change of content.
"""

import numpy as np
import torch

from evaluation.results import PERTURBATIONS
from evaluation.scoring import Setting
from heads.loaded_split import HostSplit, SplitTensors, flip_frames

SHUFFLE_SEED = 20240501


def frame_order(name: str, n_real: int, video_row: int, width: int) -> list[int]:
    """The source position of each of `width` positions: the first n_real are real frames, the rest padding."""
    real = list(range(n_real))
    if name == "reversed":
        real = real[::-1]
    elif name == "shuffled":
        real = np.random.default_rng([SHUFFLE_SEED, video_row]).permutation(n_real).tolist()
    elif name == "halves_swapped":
        real = real[n_real // 2 :] + real[: n_real // 2]
    elif name == "repeated_frame":
        real = [(n_real - 1) // 2] * n_real
    else:
        raise ValueError(f"unknown change {name!r}: one of {', '.join(PERTURBATIONS)}")
    return real + list(range(n_real, width))


def changed(frames: torch.Tensor, mask: torch.Tensor, video_rows: torch.Tensor, name: str) -> torch.Tensor:
    """[B, T, D] frames of each row rearranged by `name` (padding stays where it is)."""
    if name == "reversed":
        return flip_frames(frames, mask, torch.ones(len(frames), dtype=torch.bool, device=frames.device))
    order = [
        frame_order(name, int(n_real), int(row), frames.shape[1])
        for n_real, row in zip(mask.sum(dim=1).tolist(), video_rows.tolist(), strict=True)
    ]
    index = torch.tensor(order, device=frames.device)[:, :, None].expand_as(frames)
    return frames.gather(1, index)


@torch.no_grad()
def own_scores(
    head: torch.nn.Module, data: SplitTensors | HostSplit, setting: Setting, change: str | None, batch: int = 1024
) -> np.ndarray:
    """[n_queries] float64: each query's score against its own candidate, frames changed by
    `change` (None: as cached)."""
    gold = setting.gold.argmax(axis=1)
    scores = []
    for start in range(0, len(gold), batch):
        items = [setting.candidates[column] for column in gold[start : start + batch]]
        rows = torch.tensor([row for row, _ in items], device=data.device)
        flags = torch.tensor([flag for _, flag in items], device=data.device)
        frames, mask = data.video_batch(rows, flags)
        if change is not None:
            frames = changed(frames, mask, rows, change)
        captions = torch.from_numpy(setting.caption_rows[start : start + batch]).to(data.device)
        text, text_mask = data.text_input(captions, head.text_input)
        scores.append(head.pair_scores(text, text_mask, *head.video_index(frames, mask)).float().cpu())
    return torch.cat(scores).numpy().astype(np.float64)


def order_margins(head: torch.nn.Module, data: SplitTensors | HostSplit, setting: Setting) -> dict[str, np.ndarray]:
    """{change: [n_queries] score as cached minus score changed}."""
    cached = own_scores(head, data, setting, None)
    return {name: cached - own_scores(head, data, setting, name) for name in PERTURBATIONS}
