"""Frames/s of a Hugging Face backbone in our extraction against the library's own pipeline, on the
same frames, same model, one process.

    python -m bench.backbone_speed --device cpu --shape small --frames 64 --batch 32
    python -m bench.backbone_speed --device cuda --dtype fp16 --shape base --frames 4096 --batch 512

Both start from the same decoded frames (OpenCV BGR uint8, 640x360, as a decoder hands them over):
  ours     what extract.py runs per chunk: resize and crop with the folder's pixel rule (uint8, as a
           decode worker does it), then HuggingFaceBackbone.encode_crops (normalise on the device,
           get_image_features, fp16 to the host);
  library  the folder's own image processor (AutoImageProcessor, its Pillow backend, on the CPU) on
           the RGB frames, then get_image_features on the device, fp16 to the host.
Each row: family, implementation, frames/s end to end, the ratio to the library's, frames/s of the
preprocessing and of the encoding alone (each timed on its own), and the largest difference between
the two features relative to the largest feature (the preprocessing bound, docs/backbones.md).
extract.py runs our preprocessing in its decode workers, beside the encoding: here it runs inline,
as the library's does.
The models are random, in the published layouts at --shape (fixtures/hf_models.py); speed does
not depend on the weights. Needs transformers (`bash setup_env.sh --dev`).
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import backbones
import clip_vendor
from clip_vendor.preprocess import resize_crop
from fixtures.hf_models import SHAPES, clip_folder, siglip_folder
from infra.cli import HelpFormatter

FOLDERS = {"clip": clip_folder, "siglip": siglip_folder}

parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
parser.add_argument("--device", default="cpu")
parser.add_argument("--dtype", default="fp32", choices=sorted(clip_vendor.DTYPES))
parser.add_argument("--families", nargs="+", default=list(FOLDERS), choices=list(FOLDERS))
parser.add_argument("--shape", default="small", choices=list(SHAPES), help="model size (fixtures/hf_models.py)")
parser.add_argument("--frames", type=int, default=64, help="frames timed per implementation")
parser.add_argument("--batch", type=int, default=32, help="frames per forward (extract.py: --batch-videos x frames)")
parser.add_argument("--repeats", type=int, default=2, help="timed passes; the best is kept (the first warms up)")


def frames_of(n_frames):
    """Smooth random frames, 640x360 BGR uint8 (noise would be the worst case for no resize)."""
    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (n_frames, 9, 16, 3), dtype=np.uint8)
    return np.stack([np.kron(frame, np.ones((40, 40, 1), dtype=np.uint8)) for frame in small])


def best_seconds(run, repeats, device):
    """Seconds of the fastest of `repeats` passes of run(), and its last output."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        output = run()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return best, output


def bench_family(family, folder, frames, args):
    import transformers

    from backbones.huggingface import pooled

    dtype = clip_vendor.DTYPES[args.dtype]
    backbone = backbones.load(backbones.parse_spec(f"hf:{folder}"), args.device, dtype)
    processor = transformers.AutoImageProcessor.from_pretrained(folder, local_files_only=True, backend="pil")
    batches = [frames[start : start + args.batch] for start in range(0, len(frames), args.batch)]

    def our_pixels():
        return [resize_crop(batch, backbone.size, rule=backbone.pixels).numpy() for batch in batches]

    def library_pixels():
        rgb = [[np.ascontiguousarray(frame[..., ::-1]) for frame in batch] for batch in batches]
        return [processor(images=frames, return_tensors="pt")["pixel_values"] for frames in rgb]

    @torch.no_grad()
    def library_features(pixels):
        features = [backbone.model.get_image_features(pixel_values=batch.to(args.device, dtype)) for batch in pixels]
        return np.concatenate([pooled(batch).to(torch.float16).cpu().numpy() for batch in features])

    rows = {}
    for name, preprocess, encode in (
        ("library", library_pixels, library_features),
        ("ours", our_pixels, lambda crops: np.concatenate([backbone.encode_crops([crop]) for crop in crops])),
    ):
        preprocess_seconds, pixels = best_seconds(preprocess, args.repeats, args.device)
        encode_seconds, feats = best_seconds(lambda: encode(pixels), args.repeats, args.device)  # noqa: B023
        rows[name] = (preprocess_seconds, encode_seconds, feats)
    library_total = sum(rows["library"][:2])
    difference = np.abs(rows["ours"][2].astype(np.float32) - rows["library"][2].astype(np.float32)).max()
    relative = difference / np.abs(rows["library"][2].astype(np.float32)).max()
    for name, (preprocess_seconds, encode_seconds, _) in rows.items():
        total = preprocess_seconds + encode_seconds
        print(
            f"| {family} | {name} | {len(frames) / total:,.0f} | {library_total / total:.2f}x | "
            f"{len(frames) / preprocess_seconds:,.0f} | {len(frames) / encode_seconds:,.0f} | {relative:.2e} |",
            flush=True,
        )


def main(argv=None):
    args = parser.parse_args(argv)
    frames = frames_of(args.frames)
    print(
        f"device {args.device} ({args.dtype}), shape {args.shape}, {args.frames} frames of 640x360, batch {args.batch}"
    )
    print(
        "| family | implementation | frames/s | vs library | preprocessing frames/s | encoding frames/s "
        "| max feature difference / max feature |"
    )
    print("|---|---|---|---|---|---|---|", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        for family in args.families:
            path = FOLDERS[family](Path(folder) / family, shape=args.shape)
            bench_family(family, path, frames, args)


if __name__ == "__main__":
    main()
