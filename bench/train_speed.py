"""Training time per epoch and peak memory of each head on an RTime-sized synthetic cache.

    python -m bench.train_speed --device cuda             # 10k train videos x 24 frames x 512, 10 captions each
    python -m bench.train_speed --device cpu --videos 128 --valid-videos 8 --heads tightTransf --epochs 1
    python -m bench.train_speed --device cpu --videos 512 --dim 64 --heads seqTransf --epochs 1

For each head, trained with reverse negatives in its own process (so each peak is its own): seconds
per epoch (training + validation on --valid-videos videos, Hard), the peak memory (GPU: the most
torch allocated; CPU: the process's peak resident set) and the projection for 3 seeds x 5 epochs.
For tightTransf also the all-pairs scoring rate of validation. Targets: seqTransf and tightTransf
x 3 seeds x 5 epochs under 10 minutes on one H100; tightTransf's peak at batch 128 + reversals
within 24 GB with the default --pair-batch. Weights are random: speed and memory only.
"""

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

import train_head
from bench.isolated import measured
from clip_vendor.model import ClipConfig
from evaluation.scoring import autocast_for, read_setting, score_matrix
from fixtures.synthetic_cache import write_order_only_cache, write_random_clip
from heads.architectures import HeadShape, build_head, init_from_clip_text
from heads.loaded_split import load_split_tensors

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--device", default="cuda", help="cuda or cpu")
parser.add_argument("--videos", type=int, default=10000, help="train videos (RTime: about 10k)")
parser.add_argument("--valid-videos", type=int, default=500, help="valid videos (RTime: 500)")
parser.add_argument("--frames", type=int, default=24, help="frames per video")
parser.add_argument("--dim", type=int, default=512, help="embedding width (ViT-B: 512)")
parser.add_argument("--captions-per-direction", type=int, default=5, help="train captions per video and direction")
parser.add_argument(
    "--heads", nargs="+", default=["meanP", "seqTransf", "tightTransf", "mlpScore"], help="heads to time"
)
parser.add_argument("--epochs", type=int, default=2, help="epochs timed per head")
parser.add_argument("--batch-size", type=int, default=128, help="train_head.py --batch-size")
parser.add_argument("--pair-batch", type=int, default=None, help="train_head.py --pair-batch (default: its own)")


def main(argv=None):
    args = parser.parse_args(argv)
    config = ClipConfig(args.dim, 224, 1, 768, 32, 77, 49408, args.dim, 4)  # text tower: the heads' init
    projected = {}  # head: seconds for 3 seeds x 5 epochs
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clip_path = write_random_clip(tmp / "clip.pt", config)
        start = time.perf_counter()
        write_order_only_cache(
            tmp / "cache",
            clip_path,
            asdict(config),
            n_train=args.videos,
            n_valid=args.valid_videos,
            n_test=2,
            n_frames=args.frames,
            train_captions_per_direction=args.captions_per_direction,
            non_reversible_every=10,
        )
        print(f"synthetic cache written in {time.perf_counter() - start:.0f} s", flush=True)
        device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
        print(
            f"device: {device_name}, torch {torch.__version__}; {args.videos} train videos x {args.frames} frames x "
            f"{args.dim}, {args.videos * 2 * args.captions_per_direction} captions (every 10th video without "
            f"reversal), batch {args.batch_size} videos + reversals, --pair-batch {args.pair_batch or 'default'}"
        )
        print("| head | s/epoch (train + valid) | 3 seeds x 5 epochs | peak host memory | peak GPU memory |")
        print("|---|---|---|---|---|", flush=True)
        for head in args.heads:  # each row printed when measured: a run cut short keeps the heads before
            out = tmp / f"run_{head}"
            arguments = [
                "--cache",
                str(tmp / "cache"),
                "--head",
                head,
                "--out",
                str(out),
                "--clip",
                str(clip_path),
                "--device",
                args.device,
                "--epochs",
                str(args.epochs),
                "--batch-size",
                str(args.batch_size),
                "--reverse-negatives",
            ]
            if head != "tightTransf":  # its score is a logit, which no temperature scales: it refuses --learn-temp
                arguments.append("--learn-temp")
            if args.pair_batch:
                arguments += ["--pair-batch", str(args.pair_batch)]
            _, rss_peak, gpu_peak = measured(train_head.main, (arguments,), args.device)
            log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
            seconds = sum(record["seconds"] for record in log) / len(log)
            projected[head] = 15 * seconds
            gpu = f"{gpu_peak / 2**30:.2f} GiB" if gpu_peak is not None else "—"
            print(f"| {head} | {seconds:.1f} | {15 * seconds / 60:.1f} min | {rss_peak / 2**30:.2f} GiB | {gpu} |")
            sys.stdout.flush()
        both = sum(projected.get(head, 0) for head in ("seqTransf", "tightTransf"))
        print(f"seqTransf + tightTransf, 3 seeds x 5 epochs: {both / 60:.1f} min (target < 10 min)", flush=True)
        if "tightTransf" in args.heads:
            rate = tight_pairs_per_second(tmp / "cache", clip_path, args)
            print(f"tightTransf all-pairs scoring: {rate:,.0f} pairs/s")


def tight_pairs_per_second(cache, clip_path, args):
    head = build_head("tightTransf", HeadShape(args.dim, args.frames))
    init_from_clip_text(head, torch.load(clip_path, weights_only=True))
    head = head.to(args.device).eval()
    data = load_split_tensors(cache, "valid", args.frames, args.device)
    setting = read_setting(cache, "valid", "hard")
    with autocast_for(args.device):
        score_matrix(head, data, setting)  # warm-up
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        scores = score_matrix(head, data, setting)
    return scores.numel() / (time.perf_counter() - start)


if __name__ == "__main__":
    main()
