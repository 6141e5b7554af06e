"""End-to-end extraction against its two bounds and against decoding every frame, in one run.

    python -m bench.extract_speed --device cuda --videos-from .gpu_kit/media    # real H.264 clips, repeated
    python -m bench.extract_speed --device cuda                   # ViT-B/32 shapes, 720p synthetic videos
    python -m bench.extract_speed --device cpu --shape tiny --videos 8 --seconds 2 --height 240

1. decode-only bound: the same decode workers (decode, sample, resize+crop) with no model, at
   each of --worker-counts, to find the knee (the fewest workers within 10% of the best rate);
2. every-frame baseline: the same workers decoding, converting and resizing EVERY frame and keeping
   the sampled ones afterwards (the way clip-video-encode works), no model;
3. model-only bound: CLIP's image tower on the same number of frames per forward, no decoding;
4. end-to-end: extract.py over the same videos with --workers (wall clock, start-up included).
Target (issue 3): end-to-end >= 0.8 x the smaller bound, and more videos/s than (2).
Weights are random: speed only.
"""

import argparse
import json
import multiprocessing
import os
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import torch

import clip_vendor
import extract
from clip_vendor.preprocess import resize_crop
from corpus.sampling import sample_frame_indices
from corpus.video_frames import DecodeSpec, decode_and_crop, init_decode_worker
from fixtures.synthetic_cache import CLIP_SHAPES, write_random_clip

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--device", default="cuda", help="cuda or cpu")
parser.add_argument("--shape", default="B32", choices=sorted(CLIP_SHAPES), help="CLIP shape (random weights)")
parser.add_argument(
    "--videos", type=int, default=480, help="video files to extract (hard links to a few distinct ones)"
)
parser.add_argument(
    "--videos-from", type=Path, default=None, help="repeat the video files of this folder (default: synthetic videos)"
)
parser.add_argument("--seconds", type=float, default=30, help="synthetic videos: length")
parser.add_argument("--height", type=int, default=720, help="synthetic videos: frame height (width is 16:9)")
parser.add_argument("--native-fps", type=int, default=30, help="synthetic videos: frame rate")
parser.add_argument("--fps", type=float, default=1.0, help="extract.py --fps")
parser.add_argument("--t-max", type=int, default=24, help="extract.py --t-max")
parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1), help="decode processes")
parser.add_argument(
    "--worker-counts", type=int, nargs="*", default=[1, 2, 4, 8], help="also time the decode-only bound at these"
)
parser.add_argument("--batch-videos", type=int, default=32, help="extract.py --batch-videos")
parser.add_argument("--dtype", default="fp16", help="extract.py --dtype")


def write_synthetic_videos(folder, args, n_distinct=4):
    """A few moving-noise mp4v videos: as costly to decode as real footage of that size."""
    width = args.height * 16 // 9 // 2 * 2
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 255, size=(args.height, width * 2, 3), dtype=np.uint8)
    n_frames = int(args.seconds * args.native_fps)
    paths = []
    for index in range(n_distinct):
        paths.append(folder / f"distinct_{index}.mp4")
        writer = cv2.VideoWriter(str(paths[-1]), cv2.VideoWriter_fourcc(*"mp4v"), args.native_fps, (width, args.height))
        for t in range(n_frames):
            shift = (t * 4 + index * 7) % width
            writer.write(texture[:, shift : shift + width])
        writer.release()
    return paths


def link_videos(sources, folder, n_videos):
    """--videos names, each a hard link to one of `sources` in turn (its suffix kept): hundreds of
    files without spending the benchmark's time encoding them. Returns {video_id: annotation}."""
    for index in range(n_videos):
        source = sources[index % len(sources)]
        os.link(source, folder / f"{index}{source.suffix}")
    return {str(index): {"sentences": [f"video number {index}"]} for index in range(n_videos)}


def every_frame_and_crop(task):
    """(2), one video: read, convert and resize every frame, then keep the sampled ones."""
    _, path, spec = task
    capture = cv2.VideoCapture(path)
    native_fps = Fraction(capture.get(cv2.CAP_PROP_FPS)).limit_denominator(1001)
    crops = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        crops.append(resize_crop(frame[None], spec.size)[0])
    capture.release()
    kept = sample_frame_indices(len(crops), Fraction(len(crops)) / native_fps, spec.fps, spec.t_max)
    return [crops[index] for index in kept]


def decode_rate(job, video_paths, spec, workers):
    """(kept frames, seconds) of `job` over every video with `workers` processes, warmed up first."""
    tasks = [(str(index), str(path), spec) for index, path in enumerate(video_paths)]
    with multiprocessing.get_context("spawn").Pool(workers, init_decode_worker) as pool:
        pool.map(job, tasks[:workers])
        start = time.perf_counter()
        frames = sum(len(crops) for crops in pool.imap(job, tasks, chunksize=1))
    return frames, time.perf_counter() - start


def kept_crops(task):
    decoded = decode_and_crop(task)
    if decoded.failure:
        raise RuntimeError(f"video {decoded.video_id}: {decoded.failure}")
    return decoded.crops


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


def run_extract(tmp, checkpoint, args):
    start = time.perf_counter()
    extract.main(
        [
            *("--annotations", str(tmp / "annotations"), "--videos", str(tmp / "videos")),
            *("--clip", str(checkpoint), "--out", str(tmp / "cache"), "--device", args.device),
            *("--dtype", args.dtype, "--fps", str(args.fps), "--t-max", str(args.t_max)),
            *("--workers", str(args.workers), "--batch-videos", str(args.batch_videos)),
        ]
    )
    seconds = time.perf_counter() - start
    counts = json.loads((tmp / "cache" / "cache_meta.json").read_text())["counts"]["test"]
    return counts["frames"], seconds


def main(argv=None):
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for folder in ("videos", "annotations", "distinct"):
            (tmp / folder).mkdir()
        if args.videos_from:
            sources = sorted(path for path in args.videos_from.iterdir() if path.is_file())
            footage = f"{len(sources)} real clips from {args.videos_from}"
        else:
            sources = write_synthetic_videos(tmp / "distinct", args)
            footage = f"{len(sources)} synthetic mp4v videos of {args.seconds:g} s at {args.height}p{args.native_fps}"
        annotations = link_videos(sources, tmp / "videos", args.videos)
        (tmp / "annotations" / "test.json").write_text(json.dumps(annotations))
        video_paths = sorted((tmp / "videos").iterdir(), key=lambda path: int(path.stem))
        checkpoint = write_random_clip(tmp / "clip.pt", CLIP_SHAPES[args.shape])
        spec = DecodeSpec(args.fps, args.t_max, CLIP_SHAPES[args.shape].image_resolution)
        for source in sources:  # the baseline does the same work: same kept crops, pixel for pixel
            ours, baseline = kept_crops(("", str(source), spec)), every_frame_and_crop(("", str(source), spec))
            if not np.array_equal(ours, np.stack(baseline)):
                raise SystemExit(f"{source}: the every-frame baseline keeps other frames than our decoder")

        decode_rows = {}
        for workers in sorted({*args.worker_counts, args.workers}):
            decode_rows[workers] = decode_rate(kept_crops, video_paths, spec, workers)
            rate = decode_rows[workers][0] / decode_rows[workers][1]
            print(f"decode-only, {workers} workers: {rate:,.0f} kept frames/s", flush=True)
        every_frames, every_seconds = decode_rate(every_frame_and_crop, video_paths, spec, args.workers)
        print(f"every frame decoded, {args.workers} workers: {every_frames / every_seconds:,.0f} kept frames/s")
        kept_frames, decode_seconds = decode_rows[args.workers]
        per_video = max(1, kept_frames // args.videos)
        model_frames, model_seconds = model_only(checkpoint, args, per_video * args.batch_videos)
        print(f"model-only: {model_frames / model_seconds:,.0f} frames/s", flush=True)
        cached_frames, end_to_end_seconds = run_extract(tmp, checkpoint, args)

    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    best_decode = max(frames / seconds for frames, seconds in decode_rows.values())
    knee = min(w for w, (frames, seconds) in decode_rows.items() if frames / seconds >= 0.9 * best_decode)
    decode = kept_frames / decode_seconds
    model = model_frames / model_seconds
    bound = min(decode, model)
    print(
        f"device: {device_name}, torch {torch.__version__}, OpenCV {cv2.__version__}, {os.cpu_count()} cores; "
        f"{args.videos} videos repeating {footage}; {per_video} frames kept per video; CLIP {args.shape} {args.dtype}"
    )
    print(f"decode knee: {knee} workers reach >= 90% of the best decode-only rate ({best_decode:,.0f} frames/s)")
    print("| measurement | workers | kept frames/s | videos/s | vs smaller bound |")
    print("|---|---|---|---|---|")
    for workers, (frames, seconds) in decode_rows.items():
        print(
            f"| decode-only bound | {workers} | {frames / seconds:,.0f} | {args.videos / seconds:,.1f} | "
            f"{frames / seconds / bound:.2f}x |"
        )
    rows = [  # (measurement, workers, kept frames/s, videos/s)
        (
            "every frame decoded and resized, then sampled (clip-video-encode's way)",
            args.workers,
            every_frames / every_seconds,
            args.videos / every_seconds,
        ),
        ("model-only bound", "-", model, model / per_video),
        (
            "end-to-end extract.py (wall clock, start-up included)",
            args.workers,
            cached_frames / end_to_end_seconds,
            args.videos / end_to_end_seconds,
        ),
    ]
    for name, workers, rate, videos_per_second in rows:
        note = " (target >= 0.80x)" if name.startswith("end-to-end") else ""
        print(f"| {name} | {workers} | {rate:,.0f} | {videos_per_second:,.1f} | {rate / bound:.2f}x{note} |")


if __name__ == "__main__":
    main()
