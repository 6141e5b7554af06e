"""Build a small, deterministic RTime-format dataset and a tiny random-weight CLIP.

    python make_demo_data.py --out demo/

Writes OUT/annotations/{train,valid,test}.json in RTime's format, OUT/videos/{id}.avi (lossless
FFV1), OUT/videos_reversed/{id}.avi (the same frames in reverse order, for verify.py), and
OUT/clip_tiny.pt, a random CLIP of OpenAI's layout saved as a TorchScript archive like OpenAI's.

Each video shows one coloured shape that grows, fades in, or sits on a background that brightens;
its reversal shrinks, fades out, or darkens, and is captioned so. Only frame order tells a video
from its reversal. These changes move the whole frame, so even a random-weight CLIP's features
follow them (a small shape sliding across the frame barely moves them). Some train records have
"reverse": false.
"""

import argparse
import io
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch

import clip_vendor.model as clip_model
from infra.cli import HelpFormatter
from infra.file_io import atomic_output, atomic_write_bytes, atomic_write_json

COLOURS = {"red": (40, 40, 220), "green": (60, 190, 60), "blue": (220, 90, 40), "yellow": (40, 220, 230)}  # BGR
SHAPES = ("circle", "square")
MOTIONS = {  # name -> (forward caption templates, reverse caption templates); the first is the human caption
    "grow": (
        ("a {c} {s} grows bigger", "the {c} {s} expands", "a {s} in {c} gets larger", "a growing {c} {s}"),
        ("a {c} {s} shrinks smaller", "the {c} {s} contracts", "a {s} in {c} gets smaller", "a shrinking {c} {s}"),
    ),
    "fade": (
        ("a {c} {s} fades in", "the {c} {s} appears", "a {s} in {c} slowly shows up", "a {c} {s} emerges"),
        ("a {c} {s} fades out", "the {c} {s} disappears", "a {s} in {c} slowly vanishes", "a {c} {s} dissolves"),
    ),
    "light": (
        (
            "the background behind a {c} {s} brightens",
            "the scene around the {c} {s} gets lighter",
            "light comes up behind a {s} in {c}",
            "a {c} {s} as the lights go on",
        ),
        (
            "the background behind a {c} {s} darkens",
            "the scene around the {c} {s} gets darker",
            "light fades behind a {s} in {c}",
            "a {c} {s} as the lights go off",
        ),
    ),
}
SPLIT_SIZES = {"train": 144, "valid": 24, "test": 24}
FRAME_SIZE = (64, 48)  # width, height: not square, so the centre crop matters
N_FRAMES, NATIVE_FPS = 24, 8
MATRIX_STD = 0.15


parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
parser.add_argument("--out", type=Path, default=Path("demo"), help="folder to write the demo into")
parser.add_argument("--seed", type=int, default=0, help="seed for layouts, noise and CLIP weights")
for split, n_videos in SPLIT_SIZES.items():
    parser.add_argument(f"--{split}", type=int, default=n_videos, help=f"videos in {split}")


def render_video(colour, shape, motion, rng):
    """[N_FRAMES, H, W, 3] uint8 BGR of the forward video over a noisy background."""
    width, height = FRAME_SIZE
    noise = rng.integers(0, 30, size=(height, width, 3)).astype(np.float32)
    centre = (int(rng.integers(24, 40)), int(rng.integers(18, 30)))
    frames = []
    for t in np.linspace(0.0, 1.0, N_FRAMES):
        background = noise + (10 + 190 * t if motion == "light" else 20)
        radius = int(round(3 + 19 * t)) if motion == "grow" else 12
        shape_mask = np.zeros((height, width), np.uint8)
        if shape == "circle":
            cv2.circle(shape_mask, centre, radius, 1, thickness=-1)
        else:
            cv2.rectangle(
                shape_mask,
                (centre[0] - radius, centre[1] - radius),
                (centre[0] + radius, centre[1] + radius),
                1,
                thickness=-1,
            )
        opacity = t if motion == "fade" else 1.0
        shape_pixels = (1 - opacity) * background + opacity * np.array(COLOURS[colour], np.float32)
        frame = np.where(shape_mask[..., None] == 1, shape_pixels, background)
        frames.append(np.clip(frame, 0, 255).astype(np.uint8))
    return np.stack(frames)


def write_video(path, frames):
    """Lossless FFV1 in AVI, so a decode returns exactly these frames."""
    with atomic_output(path) as tmp_path:
        writer = cv2.VideoWriter(str(tmp_path), cv2.VideoWriter_fourcc(*"FFV1"), NATIVE_FPS, FRAME_SIZE)
        if not writer.isOpened():
            raise RuntimeError("this OpenCV build cannot write FFV1 video")
        for frame in frames:
            writer.write(frame)
        writer.release()


def make_record(video_id, colour, shape, motion, has_reverse):
    forward, reverse = ([template.format(c=colour, s=shape) for template in templates] for templates in MOTIONS[motion])
    return {
        "temporal": True,
        "reverse": has_reverse,
        "forward_captions": forward[:1],
        "reverse_captions": reverse[:1] if has_reverse else [],
        "forward_rewrites": forward[1:],
        "reverse_rewrites": reverse[1:] if has_reverse else [],
        "url": f"demo://{video_id}",
    }


def write_tiny_clip(path, seed, matrix_std=MATRIX_STD):
    """A random CLIP (32 px input, patch 8, 4 text layers for the heads' initialisation) saved as
    a TorchScript archive of OpenAI's layout, with no reference code needed."""
    torch.manual_seed(seed)
    config = clip_model.ClipConfig(
        embed_dim=64,
        image_resolution=32,
        vision_layers=2,
        vision_width=64,
        vision_patch_size=8,
        context_length=77,
        vocab_size=49408,
        text_width=64,
        text_layers=4,
    )
    model = clip_model.CLIP(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("weight") and "ln" in name:
                param.copy_(1.0 + 0.05 * torch.randn_like(param))
            elif param.ndim >= 2 and "embedding" not in name:
                # larger random matrices: at 0.05 every frame embeds within cosine 0.98 of the mean
                # frame and attention is nearly uniform; at 0.15 the embeddings follow the content
                # and the text blocks that seqTransf/tightTransf start from attend selectively
                param.copy_(matrix_std * torch.randn_like(param))
            else:
                param.copy_(0.05 * torch.randn_like(param))
        model.logit_scale.fill_(np.log(100.0))
    buffer = io.BytesIO()  # saved through a buffer: an archive written to a path is named after it
    with warnings.catch_warnings():  # OpenAI's format is TorchScript, deprecated or not
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(StateHolder(model.state_dict())), buffer)
    atomic_write_bytes(path, buffer.getvalue())


class StateHolder(torch.nn.Module):
    """A scriptable module whose state_dict is exactly the given tensors, names included."""

    def __init__(self, state_dict):
        super().__init__()
        for name, tensor in state_dict.items():
            module = self
            *parents, leaf = name.split(".")
            for part in parents:
                if not hasattr(module, part):
                    module.add_module(part, torch.nn.Module())
                module = getattr(module, part)
            module.register_buffer(leaf, tensor.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def main(argv=None):
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    for folder in ("annotations", "videos", "videos_reversed"):
        (args.out / folder).mkdir(parents=True, exist_ok=True)
    kinds = [(colour, shape, motion) for colour in COLOURS for shape in SHAPES for motion in MOTIONS]
    next_id = 1_000_000 + 1000 * args.seed
    for split in SPLIT_SIZES:
        n_videos = getattr(args, split)
        records = {}
        # valid/test show each kind at most once, so no two of their captions are the same text
        order = rng.permutation(len(kinds)) if split != "train" else rng.integers(len(kinds), size=n_videos)
        for i in range(n_videos):
            colour, shape, motion = kinds[int(order[i % len(kinds)])]
            video_id = str(next_id)
            next_id += 1
            has_reverse = not (split == "train" and i % 6 == 5)  # some train records are not reversible
            records[video_id] = make_record(video_id, colour, shape, motion, has_reverse)
            frames = render_video(colour, shape, motion, rng)
            write_video(args.out / "videos" / f"{video_id}.avi", frames)
            write_video(args.out / "videos_reversed" / f"{video_id}.avi", frames[::-1])
        atomic_write_json(args.out / "annotations" / f"{split}.json", records)
    write_tiny_clip(args.out / "clip_tiny.pt", args.seed)
    atomic_write_bytes(args.out / "README.txt", b"Demo data written by make_demo_data.py; safe to delete.\n")
    print(
        f"demo data in {args.out}: {args.train}/{args.valid}/{args.test} train/valid/test videos, "
        f"tiny CLIP at {args.out / 'clip_tiny.pt'}"
    )


if __name__ == "__main__":
    main()
