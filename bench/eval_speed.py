"""Evaluation speed: tightTransf all-pairs scoring against a CLIP4Clip-style loop, and per-query search latency of the
query-independent heads against tightTransf, on each device given; each head with all frames and
with --select-frames K frames picked by a learned scorer (heads/frame_selection.py).

    python -m bench.eval_speed --devices cuda cpu            # 2000 x 2000, 24 frames x 512
    python -m bench.eval_speed --devices cpu --videos 200 --dim 64 --skip-all-pairs-on-cpu

Per-query latency: one caption against --videos videos. Query-independent heads (meanP,
seqTransf, mlpScore) embed the videos once, offline; a query is then a normalised matmul and a
top-10. tightTransf must run its cross-encoder on every (query, video) pair. AdaCLIP reports the
ratio as 142x on GPU and 822x on CPU. For each head also the offline index: the seconds to build
it over all videos and its size per video (what search reads, in fp16): one vector for a
query-independent head, the frames themselves for the cross-encoder. The CLIP4Clip-style loop
scores one batch of --loop-text-batch captions against all videos per forward, every token through
every layer, under the same autocast; its scores must equal ours (printed: the largest difference).
Weights are random: speed only.
"""

import argparse
import time

import numpy as np
import torch

from bench.gpu_profile import print_gpu_profile
from evaluation.scoring import Setting, autocast_for, score_matrix
from heads.architectures import HeadShape, build_head, key_padding_mask
from heads.loaded_split import SplitTensors

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--devices", nargs="+", default=["cuda", "cpu"], help="devices to measure on")
parser.add_argument("--videos", type=int, default=2000, help="videos (and captions) in the all-pairs matrix")
parser.add_argument("--frames", type=int, default=24, help="frames per video")
parser.add_argument("--dim", type=int, default=512, help="embedding width")
parser.add_argument("--queries", type=int, default=20, help="single queries timed per head")
parser.add_argument("--pair-batch", type=int, default=16384, help="tightTransf pairs per forward")
parser.add_argument("--loop-text-batch", type=int, default=16, help="captions per forward of the CLIP4Clip-style loop")
parser.add_argument("--skip-all-pairs-on-cpu", action="store_true", help="time the full matrix on GPUs only")
parser.add_argument("--select-frames", type=int, default=6, help="K frames kept by the learned selector (0: skip)")
parser.add_argument("--profile", action="store_true", help="GPU time by kernel kind of one tightTransf forward (CUDA)")


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


@torch.no_grad()
def score_all_pairs(head, data, n, device):
    """(seconds, scores [n, n]) of scoring.score_matrix: every caption against every video."""
    ids = [{"video_id": str(row), "reversed": 0} for row in range(n)]
    setting = Setting(np.arange(n), [(row, 0) for row in range(n)], np.eye(n, dtype=bool), list(range(n)), ids)
    with autocast_for(device):
        score_matrix(head, data, Setting(np.arange(8), setting.candidates[:8], setting.gold[:8, :8], ids[:8], ids[:8]))
        synchronize(device)
        start = time.perf_counter()
        scores = score_matrix(head, data, setting)
        synchronize(device)
    return time.perf_counter() - start, scores


@torch.no_grad()
def clip4clip_loop(head, data, n, text_batch, device):
    """(seconds, scores [n, n]) the way CLIP4Clip evaluates a cross-encoder: for each batch of
    captions, every (caption, video) pair through the whole cross model, all tokens in all layers."""
    frame_feats, frame_mask = data.video_batch(
        torch.arange(n, device=device), torch.zeros(n, dtype=torch.bool, device=device)
    )
    cross = head.cross

    def text_batch_scores(start):
        text, text_mask = data.text_input(torch.arange(start, min(start + text_batch, n), device=device), "pooled")
        tokens = torch.cat([text.repeat_interleave(n, 0), frame_feats.repeat(len(text), 1, 1)], dim=1)
        mask = torch.cat([text_mask.repeat_interleave(n, 0), frame_mask.repeat(len(text), 1)], dim=1)
        hidden = cross.embeddings(tokens)
        for block in cross.transformer.resblocks:
            hidden = block(hidden, attn_mask=key_padding_mask(mask))
        return head.similarity_dense(cross.pooler(hidden)).view(len(text), n)

    with autocast_for(device):
        text_batch_scores(0)
        synchronize(device)
        start = time.perf_counter()
        scores = torch.cat([text_batch_scores(first).float().cpu() for first in range(0, n, text_batch)])
        synchronize(device)
    return time.perf_counter() - start, scores


@torch.no_grad()
def index_and_latency(head, data, n, args, device):
    """(seconds to build the video index of n videos, its bytes per video in fp16, seconds per
    single-caption search over it)."""
    all_videos = torch.arange(n, device=device)
    with autocast_for(device):
        synchronize(device)
        start = time.perf_counter()
        index = head.video_index(*data.video_batch(all_videos, torch.zeros(n, dtype=torch.bool, device=device)))
        synchronize(device)
        build_seconds = time.perf_counter() - start
        bytes_per_video = sum(part[0].numel() * (1 if part.dtype == torch.bool else 2) for part in index)

        def search(query_row):
            text, text_mask = data.text_input(torch.tensor([query_row], device=device), head.text_input)
            return head.score_matrix(text, text_mask, *index).topk(10)

        search(0)
        synchronize(device)
        start = time.perf_counter()
        for query in range(args.queries):
            search(query)
        synchronize(device)
    return build_seconds, bytes_per_video, (time.perf_counter() - start) / args.queries


@torch.no_grad()
def profile_tight_forward(head, data, args, device):
    """Where one forward of the all-pairs matrix spends its GPU time (as many captions as fit in
    --pair-batch, against every video)."""
    n_texts = max(1, args.pair_batch // args.videos)
    text, text_mask = data.text_input(torch.arange(n_texts, device=device), "pooled")
    videos = torch.arange(args.videos, device=device)
    frames, mask = data.video_batch(videos, torch.zeros_like(videos, dtype=torch.bool))
    title = f"tightTransf, one forward of {n_texts * args.videos:,} pairs"
    with autocast_for(device):
        print_gpu_profile(title, head.chunk_scores, text, text_mask, frames, mask)


def main(argv=None):
    args = parser.parse_args(argv)
    print(f"{args.videos} videos x {args.frames} frames x {args.dim}; random weights")
    print(
        "| device | head | frames seen | index build | index per video | per-query latency (ms) "
        "| tightTransf (all frames) / this | all-pairs matrix |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for device in args.devices:
        if device.startswith("cuda") and not torch.cuda.is_available():
            print(f"| {device} | (no CUDA device here) | | | | | | |")
            continue
        data = random_split(args.videos, args, device)
        heads = {}
        for select in sorted({0, args.select_frames}):
            for name in ("meanP", "seqTransf", "mlpScore", "tightTransf"):
                head = build_head(name, HeadShape(args.dim, args.frames, pair_batch=args.pair_batch), select)
                heads[(name, select or args.frames)] = head.to(device).eval()
        measured = {key: index_and_latency(head, data, args.videos, args, device) for key, head in heads.items()}
        name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"
        matrix = "skipped"
        if device.startswith("cuda") or not args.skip_all_pairs_on_cpu:
            tight = heads[("tightTransf", args.frames)]
            seconds, scores = score_all_pairs(tight, data, args.videos, device)
            loop_seconds, loop_scores = clip4clip_loop(tight, data, args.videos, args.loop_text_batch, device)
            matrix = (
                f"{args.videos} x {args.videos} in {seconds:.2f} s ({args.videos**2 / seconds:,.0f} pairs/s); "
                f"CLIP4Clip-style loop {loop_seconds:.2f} s ({loop_seconds / seconds:.2f}x ours; largest score "
                f"difference {(scores - loop_scores).abs().max().item():.2g}, scores' sd {scores.std().item():.2g})"
            )
        if args.profile and device.startswith("cuda"):
            profile_tight_forward(heads[("tightTransf", args.frames)], data, args, device)
        slowest = measured[("tightTransf", args.frames)][2]
        for (head_name, frames), (build, size, latency) in measured.items():
            all_pairs = matrix if (head_name, frames) == ("tightTransf", args.frames) else ""
            print(
                f"| {name} | {head_name} | {frames} | {build:.3f} s | {size:,} B | {1000 * latency:.3f} | "
                f"{slowest / latency:,.0f}x | {all_pairs} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
