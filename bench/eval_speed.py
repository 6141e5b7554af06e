"""Evaluation speed: tightTransf all-pairs scoring, and per-query search latency of the
query-independent heads against tightTransf, on each device given.

    python -m bench.eval_speed --devices cuda cpu            # 2000 x 2000, 24 frames x 512
    python -m bench.eval_speed --devices cpu --videos 200 --dim 64 --skip-all-pairs-on-cpu

Per-query latency: one caption against --videos videos. Query-independent heads (meanP,
seqTransf, mlpScore) embed the videos once, offline; a query is then a normalised matmul and a
top-10. tightTransf must run its cross-encoder on every (query, video) pair. AdaCLIP reports the
ratio as 142x on GPU and 822x on CPU. Weights are random: speed only.
"""

import argparse
import time

import numpy as np
import torch

from heads import build_head
from scoring import Setting, autocast_for, score_matrix
from split_tensors import SplitTensors

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--devices", nargs="+", default=["cuda", "cpu"], help="devices to measure on")
parser.add_argument("--videos", type=int, default=2000, help="videos (and captions) in the all-pairs matrix")
parser.add_argument("--frames", type=int, default=24, help="frames per video")
parser.add_argument("--dim", type=int, default=512, help="embedding width")
parser.add_argument("--queries", type=int, default=20, help="single queries timed per head")
parser.add_argument("--pair-batch", type=int, default=16384, help="tightTransf pairs per forward")
parser.add_argument("--skip-all-pairs-on-cpu", action="store_true", help="time the full matrix on GPUs only")


def synchronize(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def random_split(n, args, device):
    generator = torch.Generator().manual_seed(0)
    frames = torch.randn(n, args.frames, args.dim, generator=generator).half()
    return SplitTensors(
        frames.to(device),
        torch.ones(n, args.frames, dtype=torch.bool, device=device),
        torch.arange(n, device=device),
        torch.randn(n, args.dim, generator=generator).half().to(device),
        torch.zeros(1, args.dim, dtype=torch.float16, device=device),
        torch.zeros(n, 1, dtype=torch.long, device=device),
        torch.zeros(n, 1, dtype=torch.bool, device=device),
    )


def all_pairs_seconds(head, data, n, args, device):
    ids = [{"video_id": str(row), "reversed": 0} for row in range(n)]
    setting = Setting(np.arange(n), [(row, 0) for row in range(n)], np.eye(n, dtype=bool), list(range(n)), ids)
    with autocast_for(device):
        score_matrix(head, data, Setting(np.arange(8), setting.candidates[:8], setting.gold[:8, :8], ids[:8], ids[:8]))
        synchronize(device)
        start = time.perf_counter()
        score_matrix(head, data, setting)
        synchronize(device)
    return time.perf_counter() - start


@torch.no_grad()
def query_latency(head, data, n, args, device):
    """Seconds per single-caption search over n videos: the video index is built once, offline
    (unit vectors for query-independent heads; the frames themselves for the cross-encoder)."""
    all_videos = torch.arange(n, device=device)
    with autocast_for(device):
        index = head.video_index(*data.video_batch(all_videos, torch.zeros(n, dtype=torch.bool, device=device)))

        def search(query_row):
            text, text_mask = data.text_input(torch.tensor([query_row], device=device), head.text_input)
            return head.score_matrix(text, text_mask, *index).topk(10)

        search(0)
        synchronize(device)
        start = time.perf_counter()
        for query in range(args.queries):
            search(query)
        synchronize(device)
    return (time.perf_counter() - start) / args.queries


def main(argv=None):
    args = parser.parse_args(argv)
    print(f"{args.videos} videos x {args.frames} frames x {args.dim}; random weights")
    print("| device | head | per-query latency (ms) | tightTransf / this head | all-pairs matrix |")
    print("|---|---|---|---|---|")
    for device in args.devices:
        if device.startswith("cuda") and not torch.cuda.is_available():
            print(f"| {device} | (no CUDA device here) | | | |")
            continue
        data = random_split(args.videos, args, device)
        heads = {
            name: build_head(name, args.dim, args.frames, pair_batch=args.pair_batch).to(device).eval()
            for name in ("meanP", "seqTransf", "mlpScore", "tightTransf")
        }
        latency = {name: query_latency(head, data, args.videos, args, device) for name, head in heads.items()}
        name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"
        matrix = "skipped"
        if device.startswith("cuda") or not args.skip_all_pairs_on_cpu:
            seconds = all_pairs_seconds(heads["tightTransf"], data, args.videos, args, device)
            matrix = f"{args.videos} x {args.videos} in {seconds:.2f} s ({args.videos**2 / seconds:,.0f} pairs/s)"
        for head_name, seconds in latency.items():
            ratio = latency["tightTransf"] / seconds
            print(
                f"| {name} | {head_name} | {1000 * seconds:.3f} | {ratio:,.0f}x | "
                f"{matrix if head_name == 'tightTransf' else ''} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
