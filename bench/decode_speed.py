"""Decoding speed of three ways to get a video's kept frames, on real footage, in one process.

    python -m bench.decode_speed                  # the real clips, their codec variants, a 3-minute video
    python -m bench.decode_speed --long-seconds 60 --repeat 1

(a) decode every frame, convert and resize every frame, then keep the sampled ones (the way
    clip-video-encode works; with PyAV, which decodes every codec here); (b) our default path:
    OpenCV front to back, grab every frame and convert only the kept ones (--decoder opencv);
    (c) seek to the keyframe before each kept frame and decode forward to it only
    (--decoder pyav-seek); and PyAV front to back (--decoder pyav).
Each row: the video's frames, seconds per video and source frames/s of each path, and whether
(c) gave the same pixels as (b) and as PyAV front to back (frame-exact seeking). Test-only media:
bash setup_env.sh --dev.
"""

import argparse
import time

import av
import cv2
import numpy as np
import torch

from clip_vendor.preprocess import resize_crop
from corpus.video_frames import DecodeSpec, decode_sampled_frames, probe
from fixtures.real_videos import long_video, variants

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--fps", type=float, default=1.0, help="extract.py --fps")
parser.add_argument("--t-max", type=int, default=24, help="extract.py --t-max")
parser.add_argument("--size", type=int, default=224, help="crop size (ViT-B)")
parser.add_argument("--long-seconds", type=int, default=180, help="length of the long video (ActivityNet: minutes)")
parser.add_argument("--repeat", type=int, default=2, help="timed runs per path (the best is kept)")


def every_frame(path, spec):
    """(a): decode, convert and resize every frame (PyAV, which decodes every codec here), keep
    the sampled ones afterwards."""
    crops = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1
        for frame in container.decode(stream):
            crops.append(resize_crop(frame.to_ndarray(format="bgr24")[None], spec.size)[0])
    return len(crops)


def kept_frames(path, spec):
    frames, _ = decode_sampled_frames(path, spec)
    return frames, resize_crop(frames, spec.size)


def best_seconds(run, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None):
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # one decode worker's view: one thread, as extract.py runs them
    cv2.setNumThreads(1)
    videos = {**variants(), f"long {args.long_seconds} s, 640 px": long_video(args.long_seconds)}
    print(
        f"OpenCV {cv2.__version__}; {args.fps} fps, t_max {args.t_max}, crop {args.size}; one thread; best of "
        f"{args.repeat}"
    )
    print(
        "| video | codec | frames | (a) every frame | (b) opencv grab/retrieve | (c) pyav-seek | pyav front to back "
        "| (c) = (b) | (c) = pyav |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, path in videos.items():
        specs = {
            decoder: DecodeSpec(args.fps, args.t_max, args.size, decoder) for decoder in ("opencv", "pyav-seek", "pyav")
        }
        n_frames = every_frame(path, specs["opencv"])
        seconds = {"every": best_seconds(lambda path=path, spec=specs["opencv"]: every_frame(path, spec), args.repeat)}
        pixels = {}
        for decoder, spec in specs.items():
            seconds[decoder] = best_seconds(lambda path=path, spec=spec: kept_frames(path, spec), args.repeat)
            pixels[decoder] = kept_frames(path, spec)[0]
        same_as_b = np.array_equal(pixels["pyav-seek"], pixels["opencv"])
        same_as_pyav = np.array_equal(pixels["pyav-seek"], pixels["pyav"])
        cells = [
            f"{seconds[key]:.3f} s ({n_frames / seconds[key]:,.0f}/s)"
            for key in ("every", "opencv", "pyav-seek", "pyav")
        ]
        print(
            f"| {name} | {probe(path).codec} | {n_frames} | "
            + " | ".join(cells)
            + f" | {'yes' if same_as_b else 'no'} | {'yes' if same_as_pyav else 'no'} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
