"""End-to-end extraction frames/s against its two bounds, measured in one run.

    python -m bench.extract_speed --device cuda                   # ViT-B/32 shapes, 720p synthetic videos
    python -m bench.extract_speed --device cpu --shape tiny --videos 8 --seconds 2 --height 240

1. decode-only bound: the same decode workers (decode, sample, resize+crop) with no model;
2. model-only bound: CLIP's image tower on the same number of frames per forward, no decoding;
3. end-to-end: extract.py over the same videos (kept frames encoded per second, wall clock).
Target (issue 3): end-to-end >= 0.8 x the smaller bound. Weights are random: speed only.
"""

import argparse
import json
import multiprocessing
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

import clip_vendor
import extract
from clip_vendor.model import ClipConfig
from fixtures.synthetic_cache import write_random_clip
from video_frames import DecodeSpec, decode_and_crop, init_decode_worker

SHAPES = {
    "B32": ClipConfig(512, 224, 12, 768, 32, 77, 49408, 512, 12),
    "tiny": ClipConfig(64, 32, 2, 64, 8, 77, 49408, 64, 1),
}

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--device", default="cuda", help="cuda or cpu")
parser.add_argument("--shape", default="B32", choices=sorted(SHAPES), help="CLIP shape (random weights)")
parser.add_argument("--videos", type=int, default=480, help="synthetic videos (4 distinct, the rest hard links)")
parser.add_argument("--seconds", type=float, default=30, help="length of each video")
parser.add_argument("--height", type=int, default=720, help="frame height (width is 16:9)")
parser.add_argument("--native-fps", type=int, default=30, help="frame rate of the synthetic videos")
parser.add_argument("--fps", type=float, default=1.0, help="extract.py --fps")
parser.add_argument("--t-max", type=int, default=24, help="extract.py --t-max")
parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1), help="decode processes")
parser.add_argument("--batch-videos", type=int, default=32, help="extract.py --batch-videos")
parser.add_argument("--dtype", default="fp16", help="extract.py --dtype")


def write_videos(folder, args, n_distinct=4):
    """A few moving-noise mp4v videos, hard-linked to --videos names: as costly to decode as real
    footage of that size, without spending the benchmark's time encoding hundreds of them."""
    width = args.height * 16 // 9 // 2 * 2
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 255, size=(args.height, width * 2, 3), dtype=np.uint8)
    n_frames = int(args.seconds * args.native_fps)
    for index in range(min(n_distinct, args.videos)):
        writer = cv2.VideoWriter(
            str(folder / f"{index}.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), args.native_fps, (width, args.height)
        )
        for t in range(n_frames):
            shift = (t * 4 + index * 7) % width
            writer.write(texture[:, shift : shift + width])
        writer.release()
    for index in range(n_distinct, args.videos):
        os.link(folder / f"{index % n_distinct}.mp4", folder / f"{index}.mp4")
    return {str(index): {"sentences": [f"video number {index}"]} for index in range(args.videos)}


def decode_only(video_dir, args, size):
    spec = DecodeSpec(args.fps, args.t_max, size)
    tasks = [(str(i), str(video_dir / f"{i}.mp4"), spec) for i in range(args.videos)]
    with multiprocessing.get_context("spawn").Pool(args.workers, init_decode_worker) as pool:
        pool.map(decode_and_crop, tasks[: args.workers])  # warm the workers up
        start = time.perf_counter()
        frames = sum(len(crops) for _, crops, _ in pool.imap(decode_and_crop, tasks, chunksize=1))
    return frames, time.perf_counter() - start


def model_only(checkpoint, args, frames_per_forward, n_forwards=10):
    model, preprocess = clip_vendor.load(checkpoint, args.device, clip_vendor.DTYPES[args.dtype])
    crops = [
        np.random.default_rng(0).integers(
            0, 255, (frames_per_forward, 3, preprocess.size, preprocess.size), dtype=np.uint8
        )
    ]
    clip_vendor.encode_crops(model, crops)
    start = time.perf_counter()
    for _ in range(n_forwards):
        clip_vendor.encode_crops(model, crops)  # includes the host->device copy and fp16 readback
    return n_forwards * frames_per_forward, time.perf_counter() - start


def main(argv=None):
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "videos").mkdir()
        (tmp / "annotations").mkdir()
        annotations = write_videos(tmp / "videos", args)
        (tmp / "annotations" / "test.json").write_text(json.dumps(annotations))
        checkpoint = tmp / "clip.pt"
        write_random_clip(checkpoint, SHAPES[args.shape])
        size = SHAPES[args.shape].image_resolution

        decoded_frames, decode_seconds = decode_only(tmp / "videos", args, size)
        per_video = decoded_frames // args.videos
        model_frames, model_seconds = model_only(checkpoint, args, per_video * args.batch_videos)
        start = time.perf_counter()
        extract.main(
            [
                "--annotations",
                str(tmp / "annotations"),
                "--videos",
                str(tmp / "videos"),
                "--clip",
                str(checkpoint),
                "--out",
                str(tmp / "cache"),
                "--device",
                args.device,
                "--dtype",
                args.dtype,
                "--fps",
                str(args.fps),
                "--t-max",
                str(args.t_max),
                "--workers",
                str(args.workers),
                "--batch-videos",
                str(args.batch_videos),
            ]
        )
        end_to_end_seconds = time.perf_counter() - start
        cached_frames = json.loads((tmp / "cache" / "cache_meta.json").read_text())["counts"]["test"]["frames"]

    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    decode_rate, model_rate = decoded_frames / decode_seconds, model_frames / model_seconds
    end_to_end_rate = cached_frames / end_to_end_seconds
    bound = min(decode_rate, model_rate)
    print(
        f"device: {device_name}, {os.cpu_count()} cores, {args.workers} decode workers; {args.videos} videos of "
        f"{args.seconds:g} s at {args.height}p{args.native_fps}, {per_video} frames kept per video; "
        f"CLIP {args.shape} {args.dtype}"
    )
    print("| measurement | kept frames/s | vs smaller bound |")
    print("|---|---|---|")
    print(f"| decode-only bound | {decode_rate:,.0f} | {decode_rate / bound:.2f}x |")
    print(f"| model-only bound | {model_rate:,.0f} | {model_rate / bound:.2f}x |")
    print(
        f"| end-to-end extract.py (wall clock, start-up included) | {end_to_end_rate:,.0f} | "
        f"{end_to_end_rate / bound:.2f}x (target >= 0.80x) |"
    )


if __name__ == "__main__":
    main()
