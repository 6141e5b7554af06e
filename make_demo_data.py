"""Build a small, deterministic RTime-format dataset and a tiny random-weight CLIP.

    python make_demo_data.py --out demo/

Writes OUT/annotations/{train,valid,test}.json in RTime's format, OUT/videos/{id}.avi (lossless
FFV1), OUT/videos_reversed/{id}.avi (the same frames in reverse order, for verify.py), and
OUT/clip_tiny.pt, a random CLIP of OpenAI's layout saved as a TorchScript archive like OpenAI's.

Each video shows one coloured shape moving across a plain background; its captions say which
shape moves in which direction, so the reversed video needs the opposite caption and only frame
order tells a video from its reversal. Some train records have "reverse": false.
"""
import argparse
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch

import clip_vendor.model as clip_model
from feature_cache import atomic_write_bytes, atomic_write_json

COLOURS = {"red": (40, 40, 220), "green": (60, 190, 60), "blue": (220, 90, 40), "yellow": (40, 220, 230)}  # BGR
SHAPES = ("circle", "square")
MOTIONS = {  # name -> (start, end) of the shape's centre, as fractions of width and height
    ("left", "right"): ((0.15, 0.5), (0.85, 0.5)),
    ("top", "bottom"): ((0.5, 0.15), (0.5, 0.85)),
    ("bottom left", "top right"): ((0.15, 0.85), (0.85, 0.15)),
}
SPLIT_SIZES = {"train": 144, "valid": 24, "test": 24}
FRAME_SIZE = (64, 48)  # width, height: not square, so the centre crop matters
N_FRAMES, NATIVE_FPS = 24, 8
PARAPHRASES = ("a {c} {s} moves from the {a} to the {b}", "the {c} {s} travels from {a} to {b}",
               "from the {a} a {c} {s} goes to the {b}", "a {s} in {c} slides {a} to {b}")

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--out", type=Path, default=Path("demo"), help="folder to write the demo into")
parser.add_argument("--seed", type=int, default=0, help="seed for layouts, noise and CLIP weights")
for split, n_videos in SPLIT_SIZES.items():
    parser.add_argument(f"--{split}", type=int, default=n_videos, help=f"videos in {split}")


def render_video(colour, shape, start, end, rng):
    """[N_FRAMES, H, W, 3] uint8 BGR: the shape moves from `start` to `end` over a noisy background."""
    width, height = FRAME_SIZE
    background = rng.integers(0, 40, size=(height, width, 3), dtype=np.uint8)
    radius = int(rng.integers(6, 10))
    frames = []
    for t in np.linspace(0.0, 1.0, N_FRAMES):
        frame = background.copy()
        x = int(round((start[0] + t * (end[0] - start[0])) * width))
        y = int(round((start[1] + t * (end[1] - start[1])) * height))
        if shape == "circle":
            cv2.circle(frame, (x, y), radius, COLOURS[colour], thickness=-1)
        else:
            cv2.rectangle(frame, (x - radius, y - radius), (x + radius, y + radius), COLOURS[colour], thickness=-1)
        frames.append(frame)
    return np.stack(frames)


def write_video(path, frames):
    """Lossless FFV1 in AVI, so a decode returns exactly these frames."""
    tmp_path = path.with_name(f".{path.stem}.tmp{path.suffix}")
    writer = cv2.VideoWriter(str(tmp_path), cv2.VideoWriter_fourcc(*"FFV1"), NATIVE_FPS, FRAME_SIZE)
    if not writer.isOpened():
        raise RuntimeError("this OpenCV build cannot write FFV1 video")
    for frame in frames:
        writer.write(frame)
    writer.release()
    tmp_path.replace(path)


def captions_for(colour, shape, origin, target):
    texts = [p.format(c=colour, s=shape, a=origin, b=target) for p in PARAPHRASES]
    return texts[0], texts[1:]


def make_record(video_id, colour, shape, motion, has_reverse):
    (origin, target), _ = motion
    forward, forward_rewrites = captions_for(colour, shape, origin, target)
    reverse, reverse_rewrites = captions_for(colour, shape, target, origin)
    return {"temporal": True, "reverse": has_reverse, "forward_captions": [forward],
            "reverse_captions": [reverse] if has_reverse else [], "forward_rewrites": forward_rewrites,
            "reverse_rewrites": reverse_rewrites if has_reverse else [], "url": f"demo://{video_id}"}


def write_tiny_clip(path, seed):
    """A random CLIP (32 px input, patch 8, 4 text layers for the heads' initialisation) saved as
    a TorchScript archive of OpenAI's layout, with no reference code needed."""
    torch.manual_seed(seed)
    config = clip_model.ClipConfig(embed_dim=64, image_resolution=32, vision_layers=2, vision_width=64,
                                   vision_patch_size=8, context_length=77, vocab_size=49408, text_width=64,
                                   text_layers=4)
    model = clip_model.CLIP(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("weight") and "ln" in name:
                param.copy_(1.0 + 0.05 * torch.randn_like(param))
            else:
                param.copy_(0.05 * torch.randn_like(param))
        model.logit_scale.fill_(np.log(100.0))
    tmp_path = path.with_name(f".{path.name}.tmp")
    with warnings.catch_warnings():  # OpenAI's format is TorchScript, deprecated or not
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(StateHolder(model.state_dict())), str(tmp_path))
    tmp_path.replace(path)


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
    kinds = [(colour, shape, motion) for colour in COLOURS for shape in SHAPES for motion in MOTIONS.items()]
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
            frames = render_video(colour, shape, *motion[1], rng)
            write_video(args.out / "videos" / f"{video_id}.avi", frames)
            write_video(args.out / "videos_reversed" / f"{video_id}.avi", frames[::-1])
        atomic_write_json(args.out / "annotations" / f"{split}.json", records)
    write_tiny_clip(args.out / "clip_tiny.pt", args.seed)
    atomic_write_bytes(args.out / "README.txt", b"Demo data written by make_demo_data.py; safe to delete.\n")
    print(f"demo data in {args.out}: {args.train}/{args.valid}/{args.test} train/valid/test videos, "
          f"tiny CLIP at {args.out / 'clip_tiny.pt'}")


if __name__ == "__main__":
    main()
