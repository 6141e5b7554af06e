"""In-batch contrastive training of a head on cached features: the optimisation flags, which items a
batch holds, the symmetric InfoNCE loss over a batch gathered across ranks, and the optimiser's
groups and schedule.

Batches hold one caption per video (two captions of one video are never each other's negatives)
and, with reverse negatives, each reversible video's time reversal with one of its reverse
captions. They are a function of (seed, epoch) alone, so any number of ranks computes the
one-process loss: a rank holds the items of its own videos, and embeddings and scores are gathered.
"""

import argparse
import math

import numpy as np
import torch
import torch.nn.functional as F

from heads.architectures import CLIP_TEMPERATURE
from heads.loaded_split import HostSplit, SplitTensors
from infra.cli import StageError, whole_number
from infra.runtime import Runtime

REVERSE_NEGATIVES = ("yes", "if-any")  # --reverse-negatives alone means yes
# The settings tune.py may search (its search space names them), of those add_optimisation_flags adds.
TUNABLE = ("lr", "weight_decay", "warmup", "logit_scale")


def add_optimisation_flags(group: argparse._ArgumentGroup) -> None:
    """train_head.py's optimisation flags; tune.py reads the flag of each TUNABLE setting from them."""
    add = group.add_argument
    add("--epochs", type=whole_number(1), default=5, help="passes over the train videos")
    add("--batch-size", type=whole_number(2), default=128, help="videos per step, over all ranks (at least 2)")
    add("--lr", type=float, default=1e-4, help="peak AdamW learning rate")
    add("--weight-decay", type=float, default=0.2, help="AdamW decay on weight matrices")
    add("--warmup", type=float, default=0.1, help="share of all steps spent warming the rate up")
    add(
        "--learn-temp",
        action="store_true",
        help="learn the temperature (ln kept in [0.1, ln 100]); not for a head whose score is its own logit",
    )
    add(
        "--logit-scale",
        type=float,
        default=CLIP_TEMPERATURE,
        help="the temperature cosines are scaled by (or where learning starts)",
    )
    add(
        "--reverse-negatives",
        nargs="?",
        const="yes",
        choices=REVERSE_NEGATIVES,
        help="add flip(V) of each reversible video with its reverse captions; refused where the train split "
        "has no reversal, unless given as `--reverse-negatives if-any` (run_all.sh: any dataset)",
    )
    add(
        "--patience", type=whole_number(0), default=0, help="stop after this many epochs without improvement (0: never)"
    )


def tunable_flags() -> dict[str, str]:
    """{setting: its train_head.py flag} of each TUNABLE setting, read off the flags themselves."""
    group = argparse.ArgumentParser(add_help=False).add_argument_group()
    add_optimisation_flags(group)
    return {action.dest: action.option_strings[0] for action in group._group_actions if action.dest in TUNABLE}


def param_groups(head: torch.nn.Module, log_scale: torch.nn.Parameter, weight_decay: float) -> list[dict]:
    """Decay weight matrices only, not biases, LayerNorm gains, embeddings or the temperature."""
    decay, no_decay = [], []
    for name, param in head.named_parameters():
        (decay if param.ndim >= 2 and "embeddings" not in name else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if log_scale.requires_grad:
        groups[1]["params"].append(log_scale)
    return [group for group in groups if group["params"]]


def lr_scale(step: int, total_steps: int, warmup_share: float) -> float:
    """Linear warm-up over the first `warmup_share` of steps, then cosine decay to zero."""
    warmup_steps = max(1, int(warmup_share * total_steps))
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / max(1, total_steps - warmup_steps)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def reverse_negatives_used(requested: str | None, pairs: list[dict], where) -> bool:
    """Whether batches bring reversals: as --reverse-negatives asks, where the train split (`where`)
    has any. Asked for with none to use, it is refused: a run must not claim negatives it never had."""
    has_reversals = any(pair["reversed"] for pair in pairs)
    if requested == "yes" and not has_reversals:
        raise StageError(
            f"--reverse-negatives: {where} has no reversed video to use as a negative (its annotations list "
            "none); train without the flag, or give --reverse-negatives if-any to use them only where they exist"
        )
    return requested is not None and has_reversals


def batch_size_check(batch_size: int, n_videos: int, where) -> None:
    """Refuse a batch larger than the train split, suggesting one that fits (a step takes a whole
    batch of videos; the remainder of an epoch is left out)."""
    if n_videos < 2:
        raise StageError(f"{where} has {n_videos} video(s): in-batch training needs at least 2")
    if batch_size > n_videos:
        suggested = max(2, n_videos // 4)
        raise StageError(
            f"--batch-size {batch_size}: {where} has only {n_videos} videos, so no step of {batch_size} fits; "
            f"give --batch-size {n_videos} or less (e.g. --batch-size {suggested}: "
            f"{n_videos // suggested} steps per epoch)"
        )


def train_items(pairs: list[dict], reverse_negatives: bool) -> dict[int, dict[int, list[int]]]:
    """{video_row: {reversed flag: [caption rows]}} of the train pairs used."""
    items = {}
    for pair in pairs:
        if pair["reversed"] and not reverse_negatives:
            continue
        items.setdefault(pair["video_row"], {}).setdefault(pair["reversed"], []).append(pair["caption_row"])
    return {video: captions for video, captions in items.items() if 0 in captions}


def epoch_batches(items: dict, batch_size: int, steps: int, seed: int, epoch: int, my_videos: list[int]):
    """This rank's share of each batch: (video_rows, reversed_flags, caption_rows) int64 arrays,
    one caption per item. The batches and caption draws are a function of (seed, epoch) alone,
    the same for any number of ranks; a rank keeps the items of its own videos, so shares differ
    in size (some videos bring a reversal, some do not). The shuffled remainder is left out."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(sorted(items))
    mine = set(my_videos)
    for step in range(steps):
        videos = order[step * batch_size : (step + 1) * batch_size]
        batch = [
            (video, flag, captions[int(rng.integers(len(captions)))])
            for video in videos
            for flag, captions in sorted(items[video].items())
        ]
        local = np.array([item for item in batch if item[0] in mine], dtype=np.int64).reshape(-1, 3)
        yield local[:, 0], local[:, 1], local[:, 2]


def batch_loss(
    head: torch.nn.Module, log_scale: torch.Tensor, data: SplitTensors | HostSplit, batch: tuple, runtime: Runtime
) -> torch.Tensor:
    """Symmetric InfoNCE over the (gathered) batch; item i's caption is item i's positive. Each
    rank scores its own captions against every video of the gathered batch."""
    video_rows, reversed_flags, caption_rows = (torch.from_numpy(column).to(data.device) for column in batch)
    video_index = [
        runtime.gather_with_grad(part) for part in head.video_index(*data.video_batch(video_rows, reversed_flags))
    ]
    text, text_mask = data.text_input(caption_rows, head.text_input)
    logits = runtime.gather_with_grad(head.score_matrix(text, text_mask, *video_index, logit_scale=log_scale.exp()))
    targets = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def average_gradients(params: list[torch.nn.Parameter], runtime: Runtime) -> None:
    """Every rank computes the same full-batch loss, and the gather's backward sums each rank's
    share, so the summed gradients are world_size times dL/dθ: sum, then divide."""
    if runtime.world_size == 1:
        return
    for param in params:
        if param.grad is not None:
            runtime.all_reduce_sum_(param.grad)
            param.grad /= runtime.world_size
