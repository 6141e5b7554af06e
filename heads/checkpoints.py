"""Head checkpoints and run folders: what they hold, written atomically, read without running code,
and the one rule for which caches a trained head may score.

A run folder (train_head.py --out) holds CONFIG (the run's settings), LOG (one JSON line per epoch),
BEST (the selected epoch's checkpoint) and LAST (the newest, for resume); these names are spelled
here only. A checkpoint is a dict of tensors and plain JSON-able values, never pickled objects: the
head's weights in CLIP4Clip's names, ln of the temperature, the run's settings, the feature contract
and content digest of the cache it was trained on, the selected epoch and metric, and the per-epoch
history; LAST adds the optimizer state and the loop state for resume. Every read goes through
torch.load(weights_only=True), so a crafted file cannot run code: it is refused.
"""

import io
import math
import pickle
from pathlib import Path

import torch
from torch import nn

from corpus.feature_cache import (
    CacheError,
    content_digest,
    feature_contract,
    features_mismatch,
    read_meta,
    video_keys,
)
from heads.architectures import PAIR_BATCH, ZERO_SHOT_HEADS, HeadShape, base_head, build_head, load_head_weights
from infra.cli import StageError
from infra.file_io import atomic_write_bytes

CONFIG, LOG, BEST, LAST = "config.json", "log.jsonl", "best.pt", "last.pt"  # a run folder's files


class CheckpointError(StageError):
    """A file that is not a usable checkpoint, or one that may not score a cache; the message names it."""


def save_checkpoint(path: Path, value: dict) -> None:
    """Refuses non-finite weights: a diverged head is never saved as a result."""
    for name, tensor in value["head"].items():
        if not torch.isfinite(tensor).all():
            raise CheckpointError(f"not saving {path}: head weight {name} holds NaN or Inf")
    buffer = io.BytesIO()  # through a buffer: torch.save names the archive after a path, and ours are temporary
    torch.save(value, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def read_weights_file(path: Path) -> object:
    """torch.load with weights_only=True: tensors and plain values only; anything else is refused."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{path} is not a plain checkpoint (tensors and plain values only; it was not loaded, "
            f"and nothing in it ran): {first_line}"
        ) from None


def load_checkpoint(path: Path) -> dict:
    """A checkpoint written by train_head.py, read safely."""
    checkpoint = read_weights_file(path)
    if not (isinstance(checkpoint, dict) and {"head", "config", "log_scale"} <= checkpoint.keys()):
        raise CheckpointError(f"{path} is not a train_head.py checkpoint (no head, config and log_scale)")
    return checkpoint


def head_shape(config: dict, pair_batch: int = PAIR_BATCH) -> HeadShape:
    """The shape a trained head was built with, from its run config."""
    return HeadShape(config["embed_dim"], config["frames"], config["context_length"], config["text_input"], pair_batch)


def head_from_checkpoint(checkpoint: dict, source: Path, pair_batch: int = PAIR_BATCH) -> nn.Module:
    """The trained head a checkpoint holds, built with the settings it was trained with."""
    config = checkpoint["config"]
    head = build_head(config["head"], head_shape(config, pair_batch), config.get("select_frames", 0))
    try:
        load_head_weights(head, checkpoint["head"], str(source))
    except ValueError as err:
        raise CheckpointError(str(err)) from None
    return head


def check_features(trained_on: dict, meta: dict, ckpt: Path, cache_dir: Path) -> None:
    """The one rule for "may this checkpoint score this cache": the features it was trained on
    (CLIP checkpoint, tokenizer, preprocessing, sampling, storage dtype) must be the cache's; the
    annotations and batch sizes may differ. Refused naming the first field that differs."""
    labels = ("the checkpoint's training cache has", f"{cache_dir} has")
    mismatch = features_mismatch(trained_on, feature_contract(meta), labels)
    if mismatch:
        raise CheckpointError(f"{ckpt} cannot score {cache_dir}: its features differ in {mismatch}")


SEEN_SPLITS = ("train", "valid")  # trained on, and selected the epoch on


def training_video_keys(cache_dir: Path) -> dict[str, list[str]]:
    """{"train", "valid": the sorted content keys of the split's videos}: what a checkpoint records
    of the videos it has seen."""
    return {split: sorted(set(video_keys(cache_dir, split).values())) for split in SEEN_SPLITS}


def seen_videos(checkpoint: dict, ckpt: Path) -> dict[str, list[str]]:
    """The content keys of the videos a checkpoint has seen: recorded in it, or (a checkpoint from
    before they were recorded) read from its training cache, if that still holds the bytes it was
    trained on."""
    if "seen_videos" in checkpoint:
        return checkpoint["seen_videos"]
    config = checkpoint["config"]
    try:
        same = content_digest(read_meta(Path(config["cache"]))) == config["cache_content_sha256"]
    except CacheError:
        same = False
    if not same:
        raise CheckpointError(
            f"{ckpt} records no training videos (written before train_head.py recorded them), and its training "
            f"cache {config['cache']} is not there with the bytes it was trained on, so whether it saw these test "
            "videos cannot be checked: train it again, or pass --allow-overlap"
        )
    return training_video_keys(Path(config["cache"]))


def seen_test_videos(checkpoint: dict, ckpt: Path, test_keys: dict[str, str]) -> dict[str, list[str]]:
    """{"train": [...], "valid": [...]}: the ids of the evaluated videos whose content the head was
    trained on or selected on (by content key: a renamed or re-extracted file is the same video)."""
    seen = {split: set(keys) for split, keys in seen_videos(checkpoint, ckpt).items()}
    return {
        split: sorted(video_id for video_id, key in test_keys.items() if key in keys) for split, keys in seen.items()
    }


def head_for_cache(
    meta: dict,
    cache_dir: Path,
    frames: int,
    *,
    checkpoint: dict | None = None,
    ckpt: Path | None = None,
    name: str | None = None,
    pair_batch: int = PAIR_BATCH,
) -> tuple[nn.Module, dict]:
    """(head, its settings) ready to score a split of this cache: the trained head `checkpoint`
    holds (read from `ckpt`), refused on a cache of other features, or the parameter-free head
    `name` zero-shot, reading `frames` frames per video."""
    if checkpoint is None:
        if name not in ZERO_SHOT_HEADS:
            raise CheckpointError(f"--head {name} has parameters: train it with train_head.py and pass --ckpt")
        shape = HeadShape(meta["contract"]["backbone"]["embed_dim"], frames)
        settings = {"head": name, "frames": frames, "text_input": shape.text_input, "seed": None, "select_frames": 0}
        return build_head(name, shape), settings
    check_features(checkpoint["config"]["feature_contract"], meta, ckpt, cache_dir)
    return head_from_checkpoint(checkpoint, ckpt, pair_batch), checkpoint["config"]


def init_from(head: nn.Module, head_name: str, path: Path, meta: dict, cache_dir: Path) -> str:
    """Start `head` from the weights in `path`: a train_head.py checkpoint of the same kind of head
    trained on features like this cache's (`check_features`), or a CLIP4Clip model's state dict.
    Returns what was loaded, for the log."""
    weights = read_weights_file(path)
    if not isinstance(weights, dict):
        raise CheckpointError(f"--init-from {path} holds a {type(weights).__name__}, not weights")
    try:
        if "config" in weights and "head" in weights:
            trained = weights["config"]["head"]
            if trained != head_name:
                raise CheckpointError(f"--init-from {path} holds a {trained} head; this run trains {head_name}")
            check_features(weights["config"]["feature_contract"], meta, path, cache_dir)
            load_head_weights(head, weights["head"], str(path))
            return f"{trained} checkpoint trained on {Path(weights['config']['cache']).name}"
        load_head_weights(base_head(head), weights, str(path))  # CLIP4Clip has no frame selector: it starts afresh
    except ValueError as err:
        raise CheckpointError(f"--init-from {err}") from None
    return "state dict in CLIP4Clip's names"


def head_checkpoint(
    head: nn.Module, log_scale: torch.Tensor, config: dict, history: list, epoch: int, seen_videos: dict
) -> dict:
    """What best.pt and last.pt hold for `epoch`: the weights, the settings, the history so far, and
    the content keys of the videos the head has seen ({"train": [...], "valid": [...]}: trained on,
    and selected on), so evaluation can refuse to score them as test videos."""
    record = next(r for r in history if r["epoch"] == epoch)
    if not math.isfinite(log_scale.detach().item()):
        raise CheckpointError("the temperature is not finite; nothing saved")
    return {
        "head": {key: value.detach().cpu() for key, value in head.state_dict().items()},
        "log_scale": log_scale.detach().cpu().float(),
        "config": config,
        "epoch": epoch,
        "selection": record["selection"],
        "history": history,
        "seen_videos": seen_videos,
    }
