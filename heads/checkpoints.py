"""Head checkpoints: what they hold, written atomically, read without running code.

A checkpoint is a dict of tensors and plain JSON-able values, never pickled objects: the head's
weights in CLIP4Clip's names, ln of the temperature, the run's settings, the feature contract and
content digest of the cache it was trained on, the selected epoch and metric, and the per-epoch
history; last.pt adds the optimizer state and the loop state for resume. Every read goes through
torch.load(weights_only=True), so a crafted file cannot run code: it is refused.
"""

import io
import math
import pickle
from pathlib import Path

import torch
from torch import nn

from heads.architectures import base_head, build_head, load_head_weights
from infra.file_io import atomic_write_bytes


class CheckpointError(Exception):
    """A file that is not a usable checkpoint; the message names it and says why."""


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


def head_from_checkpoint(checkpoint: dict, source: Path, pair_batch: int) -> nn.Module:
    """The trained head a checkpoint holds, built with the settings it was trained with."""
    config = checkpoint["config"]
    head = build_head(
        config["head"],
        config["embed_dim"],
        config["frames"],
        config["text_input"],
        config["context_length"],
        pair_batch,
        config.get("select_frames", 0),
    )
    load_head_weights(head, checkpoint["head"], str(source))
    return head


def init_from(head: nn.Module, head_name: str, path: Path) -> str:
    """Start `head` from the weights in `path`: a train_head.py checkpoint of the same kind of
    head, or a CLIP4Clip model's state dict. Returns what was loaded, for the log."""
    weights = read_weights_file(path)
    if isinstance(weights, dict) and "config" in weights and "head" in weights:
        trained = weights["config"]["head"]
        if trained != head_name:
            raise CheckpointError(f"--init-from {path} holds a {trained} head; this run trains {head_name}")
        load_head_weights(head, weights["head"], str(path))
        return f"{trained} checkpoint trained on {Path(weights['config']['cache']).name}"
    if not isinstance(weights, dict):
        raise CheckpointError(f"--init-from {path} holds a {type(weights).__name__}, not weights")
    load_head_weights(base_head(head), weights, str(path))  # CLIP4Clip has no frame selector: it starts afresh
    return "state dict in CLIP4Clip's names"


def head_checkpoint(head: nn.Module, log_scale: torch.Tensor, config: dict, history: list, epoch: int) -> dict:
    """What best.pt and last.pt hold for `epoch`: the weights, the settings and the history so far."""
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
    }
