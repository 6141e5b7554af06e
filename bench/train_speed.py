"""Training time per epoch of each head on an RTime-sized synthetic cache, and tightTransf pairs/s.

    python -m bench.train_speed --device cuda                  # 18k videos x 24 frames x 512, 180k captions
    python -m bench.train_speed --device cpu --videos 512 --dim 64 --heads seqTransf --epochs 1

For each head: seconds per epoch (training + validation on 500 valid videos, Hard: 1000 x 1000),
measured over --epochs epochs of train_head.py, and the projection for 3 seeds x 5 epochs. For
tightTransf also the all-pairs scoring rate of validation. Target (issue 4): seqTransf and
tightTransf x 3 seeds x 5 epochs in under 10 minutes on one H100.
"""

import argparse
import json
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

import train_head
from clip_vendor.model import CLIP, ClipConfig
from fixtures.synthetic_cache import write_order_only_cache
from heads import build_head, init_from_clip_text
from scoring import autocast_for, read_setting, score_matrix
from split_tensors import load_split_tensors

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--device", default="cuda", help="cuda or cpu")
parser.add_argument("--videos", type=int, default=18000, help="train videos (RTime: about 18k)")
parser.add_argument("--valid-videos", type=int, default=500, help="valid videos (RTime: 500)")
parser.add_argument("--frames", type=int, default=24, help="frames per video")
parser.add_argument("--dim", type=int, default=512, help="embedding width (ViT-B: 512)")
parser.add_argument("--captions-per-direction", type=int, default=5, help="train captions per video and direction")
parser.add_argument(
    "--heads", nargs="+", default=["meanP", "seqTransf", "tightTransf", "mlpScore"], help="heads to time"
)
parser.add_argument("--epochs", type=int, default=2, help="epochs timed per head")
parser.add_argument("--batch-size", type=int, default=128, help="train_head.py --batch-size")


def main(argv=None):
    args = parser.parse_args(argv)
    config = ClipConfig(args.dim, 224, 1, 768, 32, 77, 49408, args.dim, 4)  # text tower: the heads' init
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clip_path = tmp / "clip.pt"
        torch.save(CLIP(config).state_dict(), clip_path)
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
        )
        print(f"synthetic cache written in {time.perf_counter() - start:.0f} s", flush=True)
        for head in args.heads:
            out = tmp / f"run_{head}"
            train_head.main(
                [
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
                    "--learn-temp",
                ]
            )
            log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
            seconds = sum(record["seconds"] for record in log) / len(log)
            rows.append((head, seconds, 15 * seconds))
        pairs_rate = tight_pairs_per_second(tmp / "cache", clip_path, args) if "tightTransf" in args.heads else None
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(
        f"device: {device_name}; {args.videos} train videos x {args.frames} frames x {args.dim}, "
        f"{args.videos * 2 * args.captions_per_direction} captions, batch {args.batch_size} videos + reversals"
    )
    print("| head | s/epoch (train + valid) | 3 seeds x 5 epochs |")
    print("|---|---|---|")
    for head, seconds, projected in rows:
        print(f"| {head} | {seconds:.1f} | {projected / 60:.1f} min |")
    both = sum(projected for head, _, projected in rows if head in ("seqTransf", "tightTransf"))
    print(f"seqTransf + tightTransf, 3 seeds x 5 epochs: {both / 60:.1f} min (target < 10 min)")
    if pairs_rate:
        print(f"tightTransf all-pairs scoring: {pairs_rate:,.0f} pairs/s")


def tight_pairs_per_second(cache, clip_path, args):
    head = build_head("tightTransf", args.dim, args.frames)
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
