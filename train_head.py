"""Train a retrieval head on the feature cache; CLIP stays frozen and is never run.

    python train_head.py --cache OUT --head seqTransf --seed 0 --out runs/seqTransf_seed0 --clip ViT-B-32.pt
    torchrun --nproc_per_node=2 train_head.py ...     (videos sharded, loss over the gathered batch)

Batches: each epoch shuffles the train videos with a generator seeded by (seed, epoch); a batch
holds --batch-size videos with ONE caption each, drawn at random from that video's captions, so
two captions of one video are never each other's negatives. With --reverse-negatives, each
reversible video also brings flip(V) with one of its reverse captions into the same batch. The
batches do not depend on the number of processes: under torchrun each rank holds the items of its
own videos, and the loss is computed over the gathered batch.
Loss: symmetric in-batch InfoNCE (CLIP4Clip's CrossEn, text->video and video->text). Validation
after every epoch on valid (Hard for RTime, all captions for generic data); the selection metric
is the tie-aware expected text->video R@1. Outputs in --out: best.pt, last.pt (for resume),
log.jsonl, config.json.
"""

import argparse
import contextlib
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import clip_vendor
from clip_vendor.model import CLIP, ClipConfig
from corpus.annotations import SELECTION_SETTING
from corpus.feature_cache import (
    META_NAME,
    CacheError,
    content_digest,
    feature_contract,
    frames_per_video,
    pairs_path,
    read_meta,
    read_pairs,
    split_format,
    spread,
)
from evaluation.retrieval_metrics import retrieval_metrics
from evaluation.scoring import autocast_for, directions, read_setting, score_matrix
from heads.architectures import HEADS, build_head, clamp_log_scale_, clip_logit_scale, init_from_clip_text
from heads.checkpoints import CheckpointError, head_checkpoint, init_from, load_checkpoint, save_checkpoint
from heads.contrastive import average_gradients, batch_loss, epoch_batches, lr_scale, param_groups, set_lr, train_items
from heads.split_tensors import PLACEMENTS, HostSplit, frames_to_use, load_split_tensors
from infra.file_io import atomic_write_bytes, atomic_write_json, exclusive_folder, file_sha256
from infra.runtime import HelpFormatter, Progress, device_name, fix_cpu_threads, setup_runtime, whole_number

PROGRESS_SECONDS = 10  # in-epoch progress lines at most this often


parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
add = parser.add_argument
add("--cache", required=True, type=Path, help="feature cache written by extract.py")
add("--head", required=True, choices=sorted(HEADS), help="which head to train")
add("--out", required=True, type=Path, help="run folder (resumed if it holds last.pt)")
add("--seed", type=int, default=0, help="seeds initialisation, batches and dropout")
add("--clip", type=Path, help="the cache's CLIP checkpoint (seqTransf/tightTransf start from its text transformer)")
add("--init-from", type=Path, help="start from this head: a train_head.py checkpoint of the same head, or CLIP4Clip's")
add(
    "--frames",
    type=whole_number(2),
    help="frames per video: an even, evenly spaced subset of the cached ones (default: all, up to t_max)",
)
add(
    "--select-frames",
    type=whole_number(0),
    default=0,
    help="K > 0: the head sees the K frames a learned scorer picks (README)",
)
add("--text-input", default="pooled", choices=["pooled", "tokens"], help="tightTransf's text: pooled or token features")
add("--epochs", type=whole_number(1), default=5, help="passes over the train videos")
add("--batch-size", type=whole_number(2), default=128, help="videos per step, over all ranks (at least 2)")
add("--lr", type=float, default=1e-4, help="peak AdamW learning rate")
add("--weight-decay", type=float, default=0.2, help="AdamW decay on weight matrices")
add("--warmup", type=float, default=0.1, help="share of all steps spent warming the rate up")
add(
    "--learn-temp",
    action="store_true",
    help="learn the temperature (ln kept in [0.1, ln 100]); not for tightTransf, whose score is its own logit",
)
add("--logit-scale", type=float, default=100.0, help="the temperature cosines are scaled by (or where learning starts)")
add("--settings-note", default="given on the command line", help="how these settings were chosen, for the report")
add("--reverse-negatives", action="store_true", help="add flip(V) of each reversible video with its reverse captions")
add("--patience", type=whole_number(0), default=0, help="stop after this many epochs without improvement (0: never)")
add("--device", default="auto", help="where to train: auto (cuda if available), cuda or cpu")
add(
    "--data-on",
    default="auto",
    choices=PLACEMENTS,
    help="where a split's frames live: the device, or the host, read batch by batch from the memory-mapped cache "
    "(same results); auto: the host when the split would take over half the free device memory",
)
add(
    "--pair-batch",
    type=whole_number(1),
    default=2048,
    help="tightTransf pairs per forward, each checkpointed in training: memory follows this, not the batch squared",
)


@dataclass(frozen=True)
class Run:
    """What every epoch's bookkeeping needs: where the run lives, its settings, what it trains."""

    out: Path
    config: dict
    patience: int
    head: torch.nn.Module
    log_scale: torch.nn.Parameter
    optimizer: torch.optim.Optimizer | None


def main(argv=None):
    args = parser.parse_args(argv)
    check_arguments(args)
    runtime = setup_runtime(args.device)
    with exclusive_folder(args.out) if runtime.master else contextlib.nullcontext():
        runtime.barrier()  # no rank starts before rank 0 holds the run folder
        try:
            train(args, runtime)
        except KeyboardInterrupt:
            print(
                "interrupted; the epochs finished so far are kept in last.pt; rerun the same command to resume",
                file=sys.stderr,
            )
            raise SystemExit(130) from None
        except CacheError as err:
            sys.exit(str(err))
    runtime.finish()


def train(args, runtime):
    device = runtime.device
    cpu_threads = fix_cpu_threads(device)
    seed_everything(args.seed, deterministic=not device.startswith("cuda"))
    meta, valid_setting_name = open_cache(args.cache, runtime)
    config = run_config(args, meta, valid_setting_name, cpu_threads)
    head = make_head(args, meta, config, runtime.log).to(device)
    log_scale = clip_logit_scale(args.learn_temp, args.logit_scale, device)
    trainable = [p for p in [*head.parameters(), log_scale] if p.requires_grad]
    runtime.log(
        f"{args.head}: {sum(p.numel() for p in trainable):,} trainable parameters; "
        f"{frozen_clip_parameters(meta):,} frozen CLIP parameters (never loaded: features come from the cache)"
    )
    optimizer = torch.optim.AdamW(param_groups(head, log_scale, args.weight_decay), lr=args.lr) if trainable else None
    run = Run(args.out, config, args.patience, head, log_scale, optimizer)

    items = train_items(read_pairs(args.cache, "train", "train"), args.reverse_negatives)
    my_videos = sorted(items)[runtime.rank :: runtime.world_size]  # features sharded: this rank loads only its videos
    tokens = args.text_input == "tokens"
    train = load_split_tensors(args.cache, "train", config["frames"], device, tokens, my_videos, args.data_on)
    valid = load_split_tensors(args.cache, "valid", config["frames"], device, tokens, where=args.data_on)
    runtime.log(f"frames on the {placed(train)} (train) and the {placed(valid)} (valid)")
    valid_setting = read_setting(args.cache, "valid", valid_setting_name)
    steps_per_epoch = len(items) // args.batch_size
    if steps_per_epoch == 0:
        sys.exit(f"--batch-size {args.batch_size}: the train split has only {len(items)} videos")
    total_steps = steps_per_epoch * args.epochs
    autocast = autocast_for(device)

    state = resume_or_start(run, runtime.log)
    runtime.log(
        f"selection metric: {config['selection_metric']}; {len(items)} train videos, {steps_per_epoch} steps/epoch "
        f"of {args.batch_size} videos" + (" (+ their reversals)" if args.reverse_negatives else "")
    )
    while state["epoch"] < args.epochs and not state["stopped"] and trainable:
        epoch = state["epoch"] + 1
        start_time = time.time()
        # dropout's stream is a function of (seed, epoch, rank): a resumed run draws the same masks
        torch.manual_seed(int(np.random.SeedSequence([args.seed, epoch, runtime.rank]).generate_state(1)[0]))
        head.train()
        loss_sum = torch.zeros((), device=device)  # summed on the device: no sync per step
        first_bad_step = torch.full((), -1, device=device)  # the first non-finite loss, also without a sync
        progress = Progress(f"  epoch {epoch} steps", steps_per_epoch, runtime.log, PROGRESS_SECONDS)
        batches = list(epoch_batches(items, args.batch_size, steps_per_epoch, args.seed, epoch, my_videos))
        for step, batch in enumerate(batches):
            set_lr(optimizer, args.lr * lr_scale((epoch - 1) * steps_per_epoch + step, total_steps, args.warmup))
            with autocast:
                loss = batch_loss(head, log_scale, train, batch, runtime)
            if step + 1 < len(batches):
                train.prefetch(batches[step + 1][0])  # host frames: gathered while this step's backward runs
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            average_gradients(trainable, runtime)
            optimizer.step()
            clamp_log_scale_(log_scale)
            with torch.no_grad():
                loss_sum += loss.detach().float()
                first_bad_step = torch.where(~torch.isfinite(loss) & (first_bad_step < 0), step + 1, first_bad_step)
            progress.update(detail=lambda steps=step + 1, total=loss_sum: f"mean loss {total.item() / steps:.4f}")
        if first_bad_step.item() >= 0:
            sys.exit(
                f"training diverged: the loss is not finite at epoch {epoch}, step {int(first_bad_step.item())} "
                f"of {steps_per_epoch}; nothing of this epoch was saved (try a lower --lr)"
            )
        metrics = validate(head, valid, valid_setting, autocast)
        record = {
            "epoch": epoch,
            "train_loss": loss_sum.item() / steps_per_epoch,
            "lr_end": optimizer.param_groups[0]["lr"],
            "logit_scale": log_scale.detach().exp().item(),
            "seconds": round(time.time() - start_time, 3),
            "device": device_name(device),
            "selection": metrics["t2v"]["expected"]["R@1"],
            "valid_setting": valid_setting_name,
            "valid": metrics,
        }
        state = end_epoch(run, state, record, runtime)
    if not trainable and not state["history"]:
        # nothing to learn (meanP with a fixed temperature): validate once and keep that as the run
        start_time = time.time()
        metrics = validate(head, valid, valid_setting, autocast)
        record = {
            "epoch": 0,
            "train_loss": None,
            "seconds": round(time.time() - start_time, 3),
            "device": device_name(device),
            "selection": metrics["t2v"]["expected"]["R@1"],
            "valid_setting": valid_setting_name,
            "valid": metrics,
        }
        state = end_epoch(run, state, record, runtime)
    best = max(state["history"], key=lambda record: record["selection"])
    runtime.log(
        f"done: best {config['selection_metric']} = {best['selection']:.2f} at epoch {best['epoch']} "
        f"-> {args.out / 'best.pt'}"
    )


def check_arguments(args):
    """Refuse values that would run on nonsense, or that the run would not honour, before any work,
    naming the flag."""
    if args.frames is not None and args.frames % 2:
        parser.error(
            f"--frames {args.frames}: use an even number >= 2 (an odd subset of an even count is not mirror-symmetric)"
        )
    if args.learn_temp and args.head == "tightTransf":
        parser.error(
            "--learn-temp: tightTransf scores with its own output layer (CLIP4Clip's logit), which no temperature "
            "scales; train it without --learn-temp"
        )
    try:
        clip_logit_scale(args.learn_temp, args.logit_scale)
    except ValueError as err:
        parser.error(f"--logit-scale {args.logit_scale}: {err}")
    for flag, value in (("--lr", args.lr), ("--weight-decay", args.weight_decay)):
        if not value >= 0:
            parser.error(f"{flag} {value}: must be a finite number >= 0")
    if not 0 <= args.warmup <= 1:
        parser.error(f"--warmup {args.warmup}: a share of the steps, between 0 and 1")


def open_cache(cache_dir, runtime):
    """The cache's meta and the setting training selects on; exits naming what is missing. Every
    rank must read the same cache (on several machines, a folder each mounts), or all stop."""
    advice = "training needs the train and valid splits extracted (extract.py --splits train valid ...)"
    try:
        meta = read_meta(cache_dir)
        valid_setting_name = SELECTION_SETTING[split_format(meta, "valid")]
    except CacheError as err:
        meta, problem = None, str(err)
    else:
        needed = [pairs_path(cache_dir, "train", "train"), pairs_path(cache_dir, "valid", valid_setting_name)]
        problem = next((f"{path} not found" for path in needed if not path.exists()), None)
    runtime.agree(content_digest(meta) if meta else "none", f"the content of the cache each reads ({cache_dir})")
    if problem:
        sys.exit(f"{problem}; {advice}")
    return meta, valid_setting_name


def placed(data):
    return "host" if isinstance(data, HostSplit) else "device"


def seed_everything(seed, deterministic):
    """Seed every generator; on CPU also insist on deterministic kernels (promised there only:
    on GPU, fused attention's backward is not deterministic and forcing it would only warn)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


def run_config(args, meta, valid_setting_name, cpu_threads):
    """Every setting the run's numbers depend on; a resumed run must match it."""
    config = {
        key: (str(value) if isinstance(value, Path) else value)
        for key, value in vars(args).items()
        if key not in ("out", "device", "pair_batch", "data_on")  # where and how fast, not what is computed
    }
    try:
        cached = frames_per_video(args.cache, "train")
        frames = frames_to_use(args.frames, cached, meta["contract"]["sampling"]["t_max"], args.cache / "train")
    except ValueError as err:
        parser.error(str(err))
    if args.select_frames and args.select_frames >= min(frames, int(cached.max())):
        parser.error(
            f"--select-frames {args.select_frames}: the head reads {min(frames, int(cached.max()))} frames per video "
            "at most; select fewer, or train without selection"
        )
    config.update(
        frames=frames,
        frames_cached=spread(cached),
        cpu_threads=cpu_threads,
        cache_meta_sha256=file_sha256(args.cache / META_NAME),
        cache_content_sha256=content_digest(meta),
        feature_contract=feature_contract(meta),
        embed_dim=meta["contract"]["clip"]["config"]["embed_dim"],
        context_length=meta["contract"]["clip"]["config"]["context_length"],
        selection_metric=f"valid {valid_setting_name} text->video R@1 (tie-aware expected)",
        init_from_sha256=file_sha256(args.init_from) if args.init_from else None,
    )
    return config


def make_head(args, meta, config, log):
    torch.manual_seed(args.seed)  # the same initial weights on every rank
    head = build_head(
        args.head,
        config["embed_dim"],
        config["frames"],
        args.text_input,
        config["context_length"],
        args.pair_batch,
        args.select_frames,
    )
    if args.init_from:
        try:
            log(f"starting from {args.init_from}: {init_from(head, args.head, args.init_from)}")
        except (CheckpointError, ValueError) as err:
            sys.exit(str(err))
    elif args.head in ("seqTransf", "tightTransf"):
        if args.clip is None:
            sys.exit(f"--clip is required for {args.head}: it starts from the checkpoint's text transformer")
        if file_sha256(args.clip) != meta["contract"]["clip"]["sha256"]:
            sys.exit(
                f"{args.clip} is not the checkpoint the cache was extracted with "
                f"({meta.get('clip_file')}, sha256 {meta['contract']['clip']['sha256'][:12]})"
            )
        try:
            init_from_clip_text(head, clip_vendor.read_state_dict(args.clip))
        except (ValueError, FileNotFoundError) as err:
            sys.exit(f"--clip: {err}")
    return head


def frozen_clip_parameters(meta):
    with torch.device("meta"):
        return sum(p.numel() for p in CLIP(ClipConfig(**meta["contract"]["clip"]["config"])).parameters())


def validate(head, data, setting, autocast):
    head.eval()
    with autocast:
        scores = score_matrix(head, data, setting).numpy()
    try:
        return {direction: retrieval_metrics(*pair)[0] for direction, pair in directions(scores, setting.gold).items()}
    except ValueError as err:  # non-finite scores: the head has diverged
        sys.exit(f"validation: {err}; the head has diverged, and this epoch was not saved (try a lower --lr)")


def resume_or_start(run, log):
    last_path = run.out / "last.pt"
    if not last_path.exists():
        run.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run.out / "config.json", run.config)
        return {"epoch": 0, "history": [], "stopped": False, "since_best": 0}
    try:
        saved = load_checkpoint(last_path)
    except CheckpointError as err:
        sys.exit(f"cannot resume: {err}; use a new --out")
    changed = sorted(
        key for key in set(saved["config"]) | set(run.config) if saved["config"].get(key) != run.config.get(key)
    )
    if changed:
        sys.exit(f"{last_path} was trained with other settings ({', '.join(changed)}); use a new --out")
    run.head.load_state_dict(saved["head"])
    with torch.no_grad():
        run.log_scale.copy_(saved["log_scale"])
    if run.optimizer is not None:
        run.optimizer.load_state_dict(saved["optimizer"])
    log(f"resuming {run.out} after epoch {saved['state']['epoch']}")
    return saved["state"]


def end_epoch(run, state, record, runtime):
    history = state["history"] + [record]
    improved = record["selection"] > max((r["selection"] for r in state["history"]), default=-1.0)
    since_best = 0 if improved else state["since_best"] + 1
    stopped = bool(run.patience) and since_best >= run.patience
    state = {"epoch": record["epoch"], "history": history, "stopped": stopped, "since_best": since_best}
    loss = (
        "no training (nothing to learn)" if record["train_loss"] is None else f"train loss {record['train_loss']:.4f}"
    )
    runtime.log(
        f"epoch {record['epoch']}: {loss}, {run.config['selection_metric']} "
        f"{record['selection']:.2f}{' (best)' if improved else ''}, {record['seconds']:.1f} s"
        + ("; early stop" if stopped else "")
    )
    if runtime.master:
        saved = head_checkpoint(run.head, run.log_scale, run.config, history, record["epoch"])
        if improved:
            save_checkpoint(run.out / "best.pt", saved)
        # written after best.pt: a resumed run never lacks it
        optimizer_state = run.optimizer.state_dict() if run.optimizer else {}
        save_checkpoint(run.out / "last.pt", {**saved, "optimizer": optimizer_state, "state": state})
        write_log(run.out, history)
    return state


def write_log(out_dir, history):
    atomic_write_bytes(out_dir / "log.jsonl", "".join(json.dumps(record) + "\n" for record in history).encode())


if __name__ == "__main__":
    main()
