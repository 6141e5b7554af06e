"""Train a retrieval head on the feature cache; the backbone (CLIP) stays frozen and is never run.

    python train_head.py --cache OUT --head seqTransf --seed 0 --out runs/seqTransf_seed0 --clip ViT-B-32.pt
    torchrun --nproc_per_node=2 train_head.py ...     (videos sharded, loss over the gathered batch)

Batches: each epoch shuffles the train videos with a generator seeded by (seed, epoch); a batch
holds --batch-size videos with ONE caption each, drawn at random from that video's captions, so
two captions of one video are never each other's negatives. With --reverse-negatives, each
reversible video also brings flip(V) with one of its reverse captions into the same batch. The
batches do not depend on the number of processes: under torchrun each rank holds the items of its
own videos, and the loss is computed over the gathered batch.
Loss: symmetric in-batch InfoNCE (CLIP4Clip's CrossEn, text->video and video->text). Validation
after every epoch on valid, on the setting the annotation format selects on (Hard for RTime, all
captions otherwise); the selection metric is the tie-aware expected text->video R@1. The run folder
(--out) holds best.pt, last.pt (for resume), log.jsonl and config.json (heads/checkpoints.py).
Exit codes: infra/cli.py.
"""

import argparse
import contextlib
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import backbones
from corpus.annotations import FORMATS
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
from heads.architectures import (
    HEADS,
    N_HEAD_LAYERS,
    TRAIN_PAIR_BATCH,
    HeadShape,
    build_head,
    clamp_log_scale_,
    clip_logit_scale,
    init_from_clip_text,
)
from heads.checkpoints import (
    BEST,
    CONFIG,
    LAST,
    LOG,
    CheckpointError,
    head_checkpoint,
    init_from,
    load_checkpoint,
    save_checkpoint,
    training_video_keys,
)
from heads.loaded_split import PLACEMENTS, HostSplit, frames_to_use, load_split_tensors
from heads.training import (
    add_optimisation_flags,
    average_gradients,
    batch_loss,
    batch_size_check,
    epoch_batches,
    lr_scale,
    param_groups,
    reverse_negatives_used,
    set_lr,
    train_items,
)
from infra import cli
from infra.cli import HelpFormatter, StageError, whole_number
from infra.file_io import atomic_write_bytes, atomic_write_json, exclusive_folder, file_sha256
from infra.records import first_difference
from infra.runtime import (
    Progress,
    code_version,
    device_name,
    fix_cpu_threads,
    flag_settings,
    process_seconds,
    setup_runtime,
)

PROGRESS_SECONDS = 10  # in-epoch progress lines at most this often
INTERRUPTED = "interrupted; the epochs finished so far are kept in last.pt; rerun the same command to resume"


parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
what = parser.add_argument_group("what is trained")
what.add_argument("--cache", required=True, type=Path, help="feature cache written by extract.py")
what.add_argument("--head", required=True, choices=sorted(HEADS), help="which head to train")
what.add_argument("--out", required=True, type=Path, help="run folder (resumed if it holds last.pt)")
what.add_argument("--seed", type=int, default=0, help="seeds initialisation, batches and dropout")
what.add_argument(
    "--clip", type=Path, help="the cache's CLIP checkpoint (heads that start from CLIP's text layers need it)"
)
what.add_argument(
    "--backbone",
    help="instead of --clip, for a cache of another backbone: KIND:PATH as extract.py was given (e.g. hf:FOLDER)",
)
what.add_argument(
    "--init-from", type=Path, help="start from this head: a train_head.py checkpoint of the same head, or CLIP4Clip's"
)
what.add_argument(
    "--frames",
    type=whole_number(2),
    help="frames per video: an even, evenly spaced subset of the cached ones (default: all, up to t_max)",
)
what.add_argument(
    "--select-frames",
    type=whole_number(0),
    default=0,
    help="K > 0: the head sees the K frames a learned scorer picks (docs/train_head.md)",
)
what.add_argument(
    "--text-input",
    default="pooled",
    choices=["pooled", "tokens"],
    help="what a cross-encoder reads of a caption: its pooled embedding, or every token's features",
)
what.add_argument(
    "--settings-note", default="given on the command line", help="how these settings were chosen, for the report"
)
add_optimisation_flags(parser.add_argument_group("optimisation (heads/training.py; tune.py searches some)"))
system = parser.add_argument_group("where and how fast (not part of what is computed)")
system.add_argument("--device", default="auto", help="where to train: auto (cuda if available), cuda or cpu")
system.add_argument(
    "--data-on",
    default="auto",
    choices=PLACEMENTS,
    help="where a split's frames live: the device, or the host, read batch by batch from the memory-mapped cache "
    "(same results); auto: the host when the split would take over half the free device memory",
)
system.add_argument(
    "--pair-batch",
    type=whole_number(1),
    default=TRAIN_PAIR_BATCH,
    help="tightTransf pairs per forward, each checkpointed in training: memory follows this, not the batch squared",
)
NOT_IN_CONFIG = ("out", "device", "pair_batch", "data_on")  # where and how fast, not what is computed
# may differ between the nodes of one job: paths each mounts where it likes (their contents are compared
# by digest) and how fast each computes
PER_NODE_FLAGS = ("cache", "clip", "backbone", "init_from", "out", "device", "pair_batch", "data_on")


@dataclass(frozen=True)
class Run:
    """What every epoch's bookkeeping needs: where the run lives, its settings, what it trains."""

    out: Path
    config: dict
    patience: int
    head: torch.nn.Module
    log_scale: torch.nn.Parameter
    optimizer: torch.optim.Optimizer | None
    seen_videos: dict  # {"train", "valid": content keys of the split's videos}: evaluate keeps test videos apart


@dataclass(frozen=True)
class Schedule:
    """How the epochs walk the train videos: every rank draws the same batches."""

    steps_per_epoch: int
    total_steps: int
    batch_size: int
    lr: float
    warmup: float
    seed: int


def main(argv=None):
    args = parser.parse_args(argv)
    check_arguments(args)
    runtime = setup_runtime(args.device)
    runtime.agree({"code version": code_version(), **flag_settings(args, PER_NODE_FLAGS)})
    with exclusive_folder(args.out) if runtime.master else contextlib.nullcontext():
        runtime.barrier()  # no rank starts before rank 0 holds the run folder
        train(args, runtime)
    runtime.finish()


def train(args, runtime):
    # ---- set-up: threads and seeds, the cache, the run's settings, the head and its optimiser
    device = runtime.device
    cpu_threads = fix_cpu_threads(device)
    seed_everything(args.seed, deterministic=not device.startswith("cuda"))
    meta, selection = open_cache(args.cache, runtime)
    pairs = read_pairs(args.cache, "train", "train")
    reverse_negatives = reverse_negatives_used(args.reverse_negatives, pairs, args.cache / "train")
    items = train_items(pairs, reverse_negatives)
    batch_size_check(args.batch_size, len(items), args.cache / "train")
    config = run_config(args, meta, selection, cpu_threads, reverse_negatives)
    # the digests of the cache and --init-from among the rest
    runtime.agree({"run config": {key: value for key, value in config.items() if key not in PER_NODE_FLAGS}})
    head = make_head(args, meta, config, runtime.log).to(device)
    log_scale = clip_logit_scale(args.learn_temp, args.logit_scale, device)
    trainable = [p for p in [*head.parameters(), log_scale] if p.requires_grad]
    runtime.log(
        f"{args.head}: {sum(p.numel() for p in trainable):,} trainable parameters; "
        f"{meta['contract']['backbone']['parameters']:,} frozen backbone parameters (never loaded: features come "
        "from the cache)"
    )
    optimizer = torch.optim.AdamW(param_groups(head, log_scale, args.weight_decay), lr=args.lr) if trainable else None
    run = Run(args.out, config, args.patience, head, log_scale, optimizer, training_video_keys(args.cache))

    # ---- data: this rank's train videos, every valid video, and the setting the epochs are selected on
    my_videos = sorted(items)[runtime.rank :: runtime.world_size]  # features sharded: this rank loads only its videos
    tokens = args.text_input == "tokens"
    train_data = load_split_tensors(args.cache, "train", config["frames"], device, tokens, my_videos, args.data_on)
    valid_data = load_split_tensors(args.cache, "valid", config["frames"], device, tokens, where=args.data_on)
    runtime.log(f"frames on the {placed(train_data)} (train) and the {placed(valid_data)} (valid)")
    valid_setting = read_setting(args.cache, "valid", selection)
    steps_per_epoch = len(items) // args.batch_size
    schedule = Schedule(
        steps_per_epoch, steps_per_epoch * args.epochs, args.batch_size, args.lr, args.warmup, args.seed
    )
    autocast = autocast_for(device)

    # ---- resume, then one epoch at a time: train, validate, checkpoint
    state = resume_or_start(run, runtime.log)
    runtime.log(
        f"selection metric: {config['selection_metric']}; {len(items)} train videos, {steps_per_epoch} steps/epoch "
        f"of {args.batch_size} videos" + (" (+ their reversals)" if reverse_negatives else "")
    )
    startup = process_seconds()  # this process's start-up: the report counts it with its first epoch
    if not trainable and not state["history"]:  # nothing to learn (meanP at a fixed temperature): one validation
        started = time.time()
        metrics = validate(head, valid_data, valid_setting, autocast)
        record = epoch_record(0, None, run, metrics, selection, (started, startup), device)
        state = end_epoch(run, state, record, runtime)
    while trainable and state["epoch"] < args.epochs and not state["stopped"]:
        epoch, started = state["epoch"] + 1, time.time()
        mean_loss = train_one_epoch(run, trainable, train_data, items, epoch, schedule, my_videos, autocast, runtime)
        metrics = validate(head, valid_data, valid_setting, autocast)
        record = epoch_record(epoch, mean_loss, run, metrics, selection, (started, startup), device)
        state = end_epoch(run, state, record, runtime)
        startup = 0.0

    # ---- done: the epoch best.pt holds
    best = max(state["history"], key=lambda record: record["selection"])
    runtime.log(
        f"done: best {config['selection_metric']} = {best['selection']:.2f} at epoch {best['epoch']} "
        f"-> {args.out / BEST}"
    )


def check_arguments(args):
    """Refuse values that would run on nonsense, or that the run would not honour, before any work,
    naming the flag (exit 2). Checks that need the cache come later, as StageErrors."""
    head = HEADS[args.head]
    if args.frames is not None and args.frames % 2:
        parser.error(
            f"--frames {args.frames}: use an even number >= 2 (an odd subset of an even count is not mirror-symmetric)"
        )
    if args.learn_temp and head.scores_are_logits:
        parser.error(
            f"--learn-temp: {args.head} scores with its own output layer (a logit), which no temperature "
            "scales; train it without --learn-temp"
        )
    if args.clip is not None and args.backbone is not None:
        parser.error("--clip and --backbone both name the backbone: give one (--clip FILE is openai:FILE)")
    if head.needs_clip_text and not args.init_from and args.clip is None and args.backbone is None:
        parser.error(
            f"--clip (or --backbone) is required for {args.head}: it starts from the backbone's text transformer"
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
    """The cache's meta and the setting training selects on (its valid split's format says which).
    Every rank must read the same cache (on several machines, a folder each mounts), or all stop."""
    advice = "training needs the train and valid splits extracted (extract.py --splits train valid ...)"
    try:
        meta = read_meta(cache_dir)
        selection = FORMATS[split_format(meta, "valid")].selection
        needed = [pairs_path(cache_dir, "train", "train"), pairs_path(cache_dir, "valid", selection)]
        problem = next((f"{path} not found" for path in needed if not path.exists()), None)
    except CacheError as err:
        meta, problem = None, str(err)
    runtime.agree({"the content of --cache": content_digest(meta) if meta else "unreadable"})  # a path may differ
    if problem:
        raise CacheError(f"{problem}; {advice}")
    return meta, selection


def placed(data):
    return "host" if isinstance(data, HostSplit) else "device"


def seed_everything(seed, deterministic):
    """Seed every generator; on CPU also insist on deterministic kernels (promised there only:
    on GPU, fused attention's backward is not deterministic and forcing it would only warn)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


def run_config(args, meta, selection, cpu_threads, reverse_negatives):
    """Every setting the run's numbers depend on; a resumed run must match it. `reverse_negatives`:
    whether batches bring reversals, as --reverse-negatives resolved on the train split."""
    config = {
        key: (str(value) if isinstance(value, Path) else value)
        for key, value in vars(args).items()
        if key not in NOT_IN_CONFIG
    }
    if args.text_input == "tokens" and not meta["contract"]["backbone"]["token_features"]:
        raise StageError(
            f"--text-input tokens: {args.cache} holds no token features ({meta.get('backbone_source')} has none in "
            "the shared embedding space, docs/backbones.md); train with --text-input pooled"
        )
    cached = frames_per_video(args.cache, "train")
    try:
        frames = frames_to_use(args.frames, cached, meta["contract"]["sampling"]["t_max"], args.cache / "train")
    except ValueError as err:
        raise StageError(str(err)) from None
    if args.select_frames and args.select_frames >= min(frames, int(cached.max())):
        raise StageError(
            f"--select-frames {args.select_frames}: the head reads {min(frames, int(cached.max()))} frames per video "
            "at most; select fewer, or train without selection"
        )
    config.update(
        reverse_negatives=reverse_negatives,
        frames=frames,
        frames_cached=spread(cached),
        cpu_threads=cpu_threads,
        cache_meta_sha256=file_sha256(args.cache / META_NAME),
        cache_content_sha256=content_digest(meta),
        feature_contract=feature_contract(meta),
        embed_dim=meta["contract"]["backbone"]["embed_dim"],
        context_length=meta["contract"]["backbone"]["context_length"],
        selection_metric=f"valid {selection} text->video R@1 (tie-aware expected)",
        init_from_sha256=file_sha256(args.init_from) if args.init_from else None,
        scores_are_logits=HEADS[args.head].scores_are_logits,  # the report says "no temperature" from this
    )
    return config


def make_head(args, meta, config, log):
    """The head, from a checkpoint (--init-from), from CLIP's text layers where it starts from them,
    or as initialised."""
    torch.manual_seed(args.seed)  # the same initial weights on every rank
    shape = HeadShape(config["embed_dim"], config["frames"], config["context_length"], args.text_input, args.pair_batch)
    try:
        head = build_head(args.head, shape, args.select_frames)
    except ValueError as err:
        raise StageError(f"--head {args.head}: {err}") from None
    if args.init_from:
        log(f"starting from {args.init_from}: {init_from(head, args.head, args.init_from, meta, args.cache)}")
    elif head.needs_clip_text:
        backbone = backbones.load_flagged(args, cache=(args.cache, meta["contract"]))
        try:
            init_from_clip_text(head, backbone.text_blocks_state())
        except ValueError as err:
            raise StageError(f"{'--backbone' if args.backbone else '--clip'}: {err}") from None
        log(f"starting from the first {N_HEAD_LAYERS} text layers of {backbone.source}")
    return head


def train_one_epoch(run, trainable, data, items, epoch, schedule, my_videos, autocast, runtime):
    """One pass over the train videos; returns the mean loss. A non-finite loss stops the run
    before anything of this epoch is saved."""
    head, log_scale, optimizer = run.head, run.log_scale, run.optimizer
    device = runtime.device
    # dropout's stream is a function of (seed, epoch, rank): a resumed run draws the same masks
    torch.manual_seed(int(np.random.SeedSequence([schedule.seed, epoch, runtime.rank]).generate_state(1)[0]))
    head.train()
    loss_sum = torch.zeros((), device=device)  # summed on the device: no sync per step
    first_bad_step = torch.full((), -1, device=device)  # the first non-finite loss, also without a sync
    progress = Progress(f"  epoch {epoch} steps", schedule.steps_per_epoch, runtime.log, PROGRESS_SECONDS)
    batches = list(epoch_batches(items, schedule.batch_size, schedule.steps_per_epoch, schedule.seed, epoch, my_videos))
    for step, batch in enumerate(batches):
        global_step = (epoch - 1) * schedule.steps_per_epoch + step
        set_lr(optimizer, schedule.lr * lr_scale(global_step, schedule.total_steps, schedule.warmup))
        with autocast:
            loss = batch_loss(head, log_scale, data, batch, runtime)
        if step + 1 < len(batches):
            data.prefetch(batches[step + 1][0])  # host frames: gathered while this step's backward runs
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
        raise StageError(
            f"training diverged: the loss is not finite at epoch {epoch}, step {int(first_bad_step.item())} "
            f"of {schedule.steps_per_epoch}; nothing of this epoch was saved (try a lower --lr)"
        )
    return loss_sum.item() / schedule.steps_per_epoch


def validate(head, data, setting, autocast):
    head.eval()
    with autocast:
        scores = score_matrix(head, data, setting).numpy()
    try:
        return {direction: retrieval_metrics(*pair)[0] for direction, pair in directions(scores, setting.gold).items()}
    except ValueError as err:  # non-finite scores: the head has diverged
        raise StageError(
            f"validation: {err}; the head has diverged, and this epoch was not saved (try a lower --lr)"
        ) from None


def epoch_record(epoch, mean_loss, run, metrics, selection, timing, device):
    """What log.jsonl and the checkpoints keep of an epoch (epoch 0: the one validation of a run
    with nothing to learn). timing: (when the epoch started, the start-up of the process before its
    first epoch, 0 for the others)."""
    started, startup = timing
    trained = {}
    if mean_loss is not None:
        trained = {"lr_end": run.optimizer.param_groups[0]["lr"], "logit_scale": run.log_scale.detach().exp().item()}
    return {
        "epoch": epoch,
        "train_loss": mean_loss,
        **trained,
        "seconds": round(time.time() - started, 3),
        "startup_seconds": round(startup, 3),
        "device": device_name(device),
        "selection": metrics["t2v"]["expected"]["R@1"],
        "valid_setting": selection,
        "valid": metrics,
    }


def resume_or_start(run, log):
    last_path = run.out / LAST
    if not last_path.exists():
        run.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run.out / CONFIG, run.config)
        return {"epoch": 0, "history": [], "stopped": False, "since_best": 0}
    try:
        saved = load_checkpoint(last_path)
    except CheckpointError as err:
        raise CheckpointError(f"cannot resume: {err}; use a new --out") from None
    changed = first_difference(saved["config"], run.config, ("it has", "this run has"))
    if changed:
        raise StageError(f"{last_path} was trained with other settings ({changed}); use a new --out")
    run.head.load_state_dict(saved["head"])
    with torch.no_grad():
        run.log_scale.copy_(saved["log_scale"])
    if run.optimizer is not None:
        run.optimizer.load_state_dict(saved["optimizer"])
    log(f"resuming {run.out} after epoch {saved['state']['epoch']}")
    return saved["state"]


def end_epoch(run, state, record, runtime):
    """Add an epoch to the history, decide early stopping, log it, and (rank 0) write best.pt when
    it improved, then last.pt and log.jsonl."""
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
        saved = head_checkpoint(run.head, run.log_scale, run.config, history, record["epoch"], run.seen_videos)
        if improved:
            save_checkpoint(run.out / BEST, saved)
        # written after best.pt: a resumed run never lacks it
        optimizer_state = run.optimizer.state_dict() if run.optimizer else {}
        save_checkpoint(run.out / LAST, {**saved, "optimizer": optimizer_state, "state": state})
        atomic_write_bytes(run.out / LOG, "".join(json.dumps(r) + "\n" for r in history).encode())
    return state


if __name__ == "__main__":
    cli.run(main, INTERRUPTED)
