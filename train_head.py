"""Train a retrieval head on the feature cache; CLIP stays frozen and is never run.

    python train_head.py --cache OUT --head seqTransf --seed 0 --out runs/seqTransf_seed0 --clip ViT-B-32.pt
    torchrun --nproc_per_node=2 train_head.py ...     (videos sharded, loss over the gathered batch)

Batches: each epoch shuffles the train videos with a generator seeded by (seed, epoch); a batch
holds --batch-size videos with ONE caption each, drawn at random from that video's captions, so
two captions of one video are never each other's negatives. With --reverse-negatives, each
reversible video also brings flip(V) with one of its reverse captions into the same batch.
Loss: symmetric in-batch InfoNCE (CLIP4Clip's CrossEn, text->video and video->text). Validation
after every epoch on valid (Hard for RTime, all captions for generic data); the selection metric
is the tie-aware expected text->video R@1. Outputs in --out: best.pt, last.pt (for resume),
log.jsonl, config.json.
"""

import argparse
import io
import json
import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import clip_vendor
from annotations import SELECTION_SETTING
from clip_vendor.model import CLIP, ClipConfig
from feature_cache import META_NAME, CacheError, pairs_path, read_meta, read_pairs, split_format
from file_io import atomic_write_bytes, atomic_write_json, file_sha256
from heads import HEADS, MAX_LOGIT_SCALE, build_head, clip_logit_scale, init_from_clip_text
from retrieval_metrics import retrieval_metrics
from runtime import Progress, setup_runtime
from scoring import autocast_for, read_setting, score_matrix
from split_tensors import load_split_tensors

PROGRESS_SECONDS = 10  # in-epoch progress lines at most this often


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help keeps the docstring's layout and shows every default."""


parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
parser.add_argument("--cache", required=True, type=Path, help="feature cache written by extract.py")
parser.add_argument("--head", required=True, choices=sorted(HEADS), help="which head to train")
parser.add_argument("--out", required=True, type=Path, help="run folder (resumed if it holds last.pt)")
parser.add_argument("--seed", type=int, default=0, help="seeds initialisation, batches and dropout")
parser.add_argument(
    "--clip",
    type=Path,
    default=None,
    help="the cache's CLIP checkpoint (seqTransf/tightTransf start from its text transformer)",
)
parser.add_argument(
    "--frames",
    type=int,
    default=None,
    help="frames per video: an even, evenly spaced subset of the cached ones (default: the cache's t_max)",
)
parser.add_argument(
    "--text-input",
    default="pooled",
    choices=["pooled", "tokens"],
    help="tightTransf's text side: the pooled embedding (CLIP4Clip) or the cached token features",
)
parser.add_argument("--epochs", type=int, default=5, help="passes over the train videos")
parser.add_argument("--batch-size", type=int, default=128, help="videos per step, over all ranks")
parser.add_argument("--lr", type=float, default=1e-4, help="peak AdamW learning rate")
parser.add_argument("--weight-decay", type=float, default=0.2, help="AdamW decay on weight matrices")
parser.add_argument("--warmup", type=float, default=0.1, help="share of all steps spent warming the rate up")
parser.add_argument("--learn-temp", action="store_true", help="learn the logit scale (clamped to <= ln 100)")
parser.add_argument(
    "--reverse-negatives",
    action="store_true",
    help="add flip(V) of each reversible train video with its reverse captions",
)
parser.add_argument(
    "--patience", type=int, default=0, help="stop after this many epochs without improvement (0: never)"
)
parser.add_argument("--device", default="auto", help="where to train: auto (cuda if available), cuda or cpu")
parser.add_argument("--pair-batch", type=int, default=8192, help="tightTransf (text, video) pairs per forward")


@dataclass(frozen=True)
class Run:
    """What every epoch's bookkeeping needs: where the run lives, its settings, what it trains."""

    out: Path
    config: dict
    selection_metric: str
    patience: int
    head: torch.nn.Module
    logit_scale: torch.nn.Parameter
    optimizer: torch.optim.Optimizer | None
    clip_config: dict


def main(argv=None):
    args = parser.parse_args(argv)
    runtime = setup_runtime(args.device)
    device = runtime.device
    seed_everything(args.seed, deterministic=not device.startswith("cuda"))

    try:
        meta = read_meta(args.cache)
        valid_setting_name = SELECTION_SETTING[split_format(meta, "valid")]
    except CacheError as err:
        sys.exit(f"{err}; training needs the train and valid splits extracted (extract.py --splits train valid ...)")
    for split, setting in (("train", "train"), ("valid", valid_setting_name)):
        if not pairs_path(args.cache, split, setting).exists():
            sys.exit(
                f"{pairs_path(args.cache, split, setting)} not found: training needs the train and valid splits "
                "extracted (extract.py --splits train valid ...)"
            )
    selection_metric = f"valid {valid_setting_name} text->video R@1 (tie-aware expected)"
    config = run_config(args, meta)
    head = make_head(args, meta, config).to(device)
    logit_scale = clip_logit_scale(args.learn_temp).to(device)
    trainable = [p for p in [*head.parameters(), logit_scale] if p.requires_grad]
    runtime.log(
        f"{args.head}: {sum(p.numel() for p in trainable):,} trainable parameters; "
        f"{frozen_clip_parameters(meta):,} frozen CLIP parameters (never loaded: features come from the cache)"
    )
    optimizer = torch.optim.AdamW(param_groups(head, logit_scale, args.weight_decay), lr=args.lr) if trainable else None
    run = Run(
        args.out,
        config,
        selection_metric,
        args.patience,
        head,
        logit_scale,
        optimizer,
        meta["contract"]["clip"]["config"],
    )

    items = train_items(read_pairs(args.cache, "train", "train"), args.reverse_negatives)
    my_videos = sorted(items)[runtime.rank :: runtime.world_size]  # features sharded: this rank loads only its videos
    train = load_split_tensors(args.cache, "train", config["frames"], device, args.text_input == "tokens", my_videos)
    valid = load_split_tensors(args.cache, "valid", config["frames"], device, args.text_input == "tokens")
    valid_setting = read_setting(args.cache, "valid", valid_setting_name)
    local_batch = max(1, args.batch_size // runtime.world_size)
    steps_per_epoch = runtime.min_over_ranks(max(1, len(my_videos) // local_batch))
    total_steps = steps_per_epoch * args.epochs
    autocast = autocast_for(device)

    state = resume_or_start(run, runtime.log)
    runtime.log(
        f"selection metric: {selection_metric}; {len(items)} train videos, {steps_per_epoch} steps/epoch of "
        f"{local_batch * runtime.world_size} videos" + (" (+ their reversals)" if args.reverse_negatives else "")
    )
    while state["epoch"] < args.epochs and not state["stopped"] and trainable:
        epoch = state["epoch"] + 1
        start_time = time.time()
        # dropout's stream is a function of (seed, epoch, rank): a resumed run draws the same masks
        torch.manual_seed(int(np.random.SeedSequence([args.seed, epoch, runtime.rank]).generate_state(1)[0]))
        head.train()
        loss_sum = torch.zeros((), device=device)  # summed on the device: no sync per step
        progress = Progress(f"  epoch {epoch} steps", steps_per_epoch, runtime.log, PROGRESS_SECONDS)
        batches = epoch_batches(items, my_videos, local_batch, steps_per_epoch, args.seed, epoch, runtime.rank)
        for step, batch in enumerate(batches):
            set_lr(optimizer, args.lr * lr_scale((epoch - 1) * steps_per_epoch + step, total_steps, args.warmup))
            with autocast:
                loss = batch_loss(head, logit_scale, train, batch, runtime)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            average_gradients(trainable, runtime)
            optimizer.step()
            with torch.no_grad():
                logit_scale.clamp_(max=math.log(MAX_LOGIT_SCALE))
                loss_sum += loss.detach().float()
            progress.update(detail=lambda steps=step + 1, total=loss_sum: f"mean loss {total.item() / steps:.4f}")
        metrics = validate(head, valid, valid_setting, autocast)
        record = {
            "epoch": epoch,
            "train_loss": loss_sum.item() / steps_per_epoch,
            "lr_end": optimizer.param_groups[0]["lr"],
            "logit_scale": float(logit_scale.exp()),
            "seconds": round(time.time() - start_time, 3),
            "selection": metrics["t2v"]["expected"]["R@1"],
            "valid_hard": metrics,
        }
        state = end_epoch(run, state, record, runtime)
    if not trainable and runtime.master and not (args.out / "best.pt").exists():
        # nothing to learn (meanP with a fixed temperature): validate once and keep that as the run
        metrics = validate(head, valid, valid_setting, autocast)
        record = {"epoch": 0, "train_loss": None, "selection": metrics["t2v"]["expected"]["R@1"], "valid_hard": metrics}
        state["history"].append(record)
        save_checkpoint(args.out / "best.pt", checkpoint(run, state, record))
        write_log(args.out, state["history"])
    runtime.log(f"done: best {selection_metric} = {best_of(state['history']):.2f} -> {args.out / 'best.pt'}")
    runtime.finish()


def seed_everything(seed, deterministic):
    """Seed every generator; on CPU also insist on deterministic kernels (promised there only:
    on GPU, fused attention's backward is not deterministic and forcing it would only warn)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


def run_config(args, meta):
    t_max = meta["contract"]["sampling"]["t_max"]
    frames = args.frames or t_max
    if frames < 2 or frames % 2:
        sys.exit(f"--frames {frames}: use an even number (an odd subset of an even count is not mirror-symmetric)")
    config = {
        key: (str(value) if isinstance(value, Path) else value)
        for key, value in vars(args).items()
        if key not in ("out", "device", "pair_batch")
    }
    config.update(
        frames=frames,
        cache_meta_sha256=file_sha256(args.cache / META_NAME),
        embed_dim=meta["contract"]["clip"]["config"]["embed_dim"],
        context_length=meta["contract"]["tokenizer"]["context_length"],
    )
    return config


def make_head(args, meta, config):
    torch.manual_seed(args.seed)  # the same initial weights on every rank
    head = build_head(
        args.head, config["embed_dim"], config["frames"], args.text_input, config["context_length"], args.pair_batch
    )
    if args.head in ("seqTransf", "tightTransf"):
        if args.clip is None:
            sys.exit(f"--clip is required for {args.head}: it starts from the checkpoint's text transformer")
        if file_sha256(args.clip) != meta["contract"]["clip"]["sha256"]:
            sys.exit(
                f"{args.clip} is not the checkpoint the cache was extracted with "
                f"({meta['contract']['clip']['file']}, sha256 {meta['contract']['clip']['sha256'][:12]})"
            )
        init_from_clip_text(head, clip_vendor.read_state_dict(args.clip))
    return head


def frozen_clip_parameters(meta):
    with torch.device("meta"):
        return sum(p.numel() for p in CLIP(ClipConfig(**meta["contract"]["clip"]["config"])).parameters())


def param_groups(head, logit_scale, weight_decay):
    """Decay weight matrices only, not biases, LayerNorm gains, embeddings or the temperature."""
    decay, no_decay = [], []
    for name, param in head.named_parameters():
        (decay if param.ndim >= 2 and "embeddings" not in name else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if logit_scale.requires_grad:
        groups[1]["params"].append(logit_scale)
    return [group for group in groups if group["params"]]


def lr_scale(step, total_steps, warmup_share):
    """Linear warm-up over the first `warmup_share` of steps, then cosine decay to zero."""
    warmup_steps = max(1, int(warmup_share * total_steps))
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return 0.5 * (1 + math.cos(math.pi * (step - warmup_steps) / max(1, total_steps - warmup_steps)))


def set_lr(optimizer, lr):
    for group in optimizer.param_groups:
        group["lr"] = lr


def train_items(pairs, reverse_negatives):
    """{video_row: {reversed flag: [caption rows]}} of the train pairs used."""
    items = {}
    for pair in pairs:
        if pair["reversed"] and not reverse_negatives:
            continue
        items.setdefault(pair["video_row"], {}).setdefault(pair["reversed"], []).append(pair["caption_row"])
    return {video: captions for video, captions in items.items() if 0 in captions}


def epoch_batches(items, my_videos, local_batch, steps, seed, epoch, rank):
    """Batches of (video_rows, reversed_flags, caption_rows) as int64 arrays, one caption per item.
    The remainder of the shuffled videos is left out (each epoch reshuffles)."""
    rng = np.random.default_rng([seed, epoch, rank])
    order = rng.permutation(my_videos)
    for step in range(steps):
        videos = order[step * local_batch : (step + 1) * local_batch]
        batch = [
            (video, flag, captions[int(rng.integers(len(captions)))])
            for video in videos
            for flag, captions in sorted(items[video].items())
        ]
        yield tuple(np.array(column, dtype=np.int64) for column in zip(*batch, strict=True))


def batch_loss(head, logit_scale, data, batch, runtime):
    """Symmetric InfoNCE over the (gathered) batch; item i's caption is item i's positive. Each
    rank scores its own captions against every video of the gathered batch."""
    video_rows, reversed_flags, caption_rows = (torch.from_numpy(column).to(data.frames.device) for column in batch)
    video_index = [
        runtime.gather_with_grad(part) for part in head.video_index(*data.video_batch(video_rows, reversed_flags))
    ]
    text, text_mask = data.text_input(caption_rows, head.text_input)
    logits = runtime.gather_with_grad(head.score_matrix(text, text_mask, *video_index, logit_scale=logit_scale.exp()))
    targets = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


def average_gradients(params, runtime):
    """Every rank computes the same full-batch loss, and the gather's backward sums each rank's
    share, so the summed gradients are world_size times dL/dθ: sum, then divide."""
    if runtime.world_size == 1:
        return
    for param in params:
        if param.grad is not None:
            runtime.all_reduce_sum_(param.grad)
            param.grad /= runtime.world_size


def validate(head, data, setting, autocast):
    head.eval()
    with autocast:
        scores = score_matrix(head, data, setting).numpy()
    t2v, _ = retrieval_metrics(scores, setting.gold)
    v2t, _ = retrieval_metrics(scores.T, setting.gold.T)
    return {"t2v": t2v, "v2t": v2t}


def resume_or_start(run, log):
    last_path = run.out / "last.pt"
    if not last_path.exists():
        run.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run.out / "config.json", run.config)
        return {"epoch": 0, "history": [], "stopped": False, "since_best": 0}
    saved = torch.load(last_path, map_location="cpu", weights_only=False)
    changed = sorted(
        key for key in set(saved["config"]) | set(run.config) if saved["config"].get(key) != run.config.get(key)
    )
    if changed:
        sys.exit(f"{last_path} was trained with other settings ({', '.join(changed)}); use a new --out")
    run.head.load_state_dict(saved["head"])
    with torch.no_grad():
        run.logit_scale.copy_(saved["logit_scale"])
    if run.optimizer is not None:
        run.optimizer.load_state_dict(saved["optimizer"])
    log(f"resuming {run.out} after epoch {saved['state']['epoch']}")
    return saved["state"]


def end_epoch(run, state, record, runtime):
    history = state["history"] + [record]
    improved = record["selection"] > best_of(state["history"])
    since_best = 0 if improved else state["since_best"] + 1
    stopped = bool(run.patience) and since_best >= run.patience
    state = {"epoch": record["epoch"], "history": history, "stopped": stopped, "since_best": since_best}
    runtime.log(
        f"epoch {record['epoch']}: train loss {record['train_loss']:.4f}, {run.selection_metric} "
        f"{record['selection']:.2f}{' (best)' if improved else ''}, {record['seconds']:.1f} s"
        + ("; early stop" if stopped else "")
    )
    if runtime.master:
        saved = checkpoint(run, state, record)
        if improved:
            save_checkpoint(run.out / "best.pt", saved)
        # written after best.pt: a resumed run never lacks it
        save_checkpoint(run.out / "last.pt", {**saved, "optimizer": run.optimizer.state_dict(), "state": state})
        write_log(run.out, history)
    return state


def best_of(history):
    return max((record["selection"] for record in history), default=-1.0)


def checkpoint(run, state, record):
    return {
        "head": {k: v.detach().cpu() for k, v in run.head.state_dict().items()},
        "logit_scale": run.logit_scale.detach().cpu(),
        "config": run.config,
        "seed": run.config["seed"],
        "head_name": run.config["head"],
        "epoch": record["epoch"],
        "metric": {run.selection_metric: record["selection"]},
        "cache_meta_sha256": run.config["cache_meta_sha256"],
        "history": state["history"],
        "clip_config": run.clip_config,
    }


def save_checkpoint(path, value):
    buffer = io.BytesIO()  # through a buffer: torch.save names the archive after a path, and ours are temporary
    torch.save(value, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def write_log(out_dir, history):
    atomic_write_bytes(out_dir / "log.jsonl", "".join(json.dumps(record) + "\n" for record in history).encode())


if __name__ == "__main__":
    main()
