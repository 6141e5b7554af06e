"""Images/s of our encode_image against OpenAI's reference CLIP, same random weights, one process.

    python -m bench.encoder_speed --device cuda                 # ViT-B/32 and B/16, batch 256..1024
    python -m bench.encoder_speed --device cpu --shapes tiny --batch-sizes 8 --dtypes fp32 --ref-dtype fp32

Prints one row per (shape, implementation, dtype, batch): images/s, the ratio to the reference at
the same batch size, and the minimum cosine similarity to our fp32 output on the same images. Then,
at the largest batch, ours in the first of --dtypes with each of --levers: channels-last (the patch
embedding's convolution and its input in channels-last memory), compile (torch.compile, its
compile time stated) and compile+cudagraphs (torch.compile's "reduce-overhead" mode, which replays
CUDA graphs for the fixed batch shape). A lever that fails says why in its row.
Needs the test-only reference (`bash setup_env.sh --dev`). Target (issue 2): >= 1.5x the
reference's fp16 at cosine >= 0.999.
"""

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch

import clip_vendor
from fixtures.reference_clip import load_reference_module, random_reference_clip

SHAPES = {  # OpenAI's released image towers (text towers shrunk: only encode_image is timed)
    "B32": dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=32),
    "B16": dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=16),
    "tiny": dict(embed_dim=64, image_resolution=64, vision_layers=2, vision_width=128, vision_patch_size=16),
}

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--device", default="cuda", help="cuda or cpu")
parser.add_argument("--shapes", nargs="+", default=["B32", "B16"], choices=sorted(SHAPES), help="image towers to time")
parser.add_argument("--batch-sizes", nargs="+", type=int, default=[256, 512, 1024], help="images per forward")
parser.add_argument(
    "--dtypes", nargs="+", default=["fp16", "bf16"], choices=sorted(clip_vendor.DTYPES), help="our dtypes to time"
)
parser.add_argument("--ref-dtype", default="fp16", choices=["fp16", "fp32"], help="reference precision")
parser.add_argument("--iters", type=int, default=20, help="timed forwards per row (after 3 warm-up ones)")
LEVERS = ("channels-last", "compile", "compile+cudagraphs")
parser.add_argument("--levers", nargs="*", default=list(LEVERS), choices=LEVERS, help="levers to time (see above)")


def synchronize(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def images_per_second(encode, images, iters, device):
    for _ in range(3):
        encode(images)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        encode(images)
    synchronize(device)
    return iters * len(images) / (time.perf_counter() - start)


@torch.no_grad()
def min_cosine(encode, images, fp32_feats):
    return torch.nn.functional.cosine_similarity(encode(images).float(), fp32_feats).min().item()


def bench_shape(name, args):
    reference = random_reference_clip(seed=0, text_width=64, text_layers=1, **SHAPES[name])
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "random.pt"
        torch.save(reference.state_dict(), checkpoint)
        ours = {
            dtype: clip_vendor.load(checkpoint, args.device, clip_vendor.DTYPES[dtype])[0]
            for dtype in {"fp32", *args.dtypes}
        }
    if args.ref_dtype == "fp16":
        load_reference_module("model").convert_weights(reference)  # OpenAI's own fp16 conversion
    reference = reference.to(args.device).eval()
    resolution = SHAPES[name]["image_resolution"]
    rows = []
    for batch in args.batch_sizes:
        images = torch.randn(
            batch,
            3,
            resolution,
            resolution,
            device=args.device,
            generator=torch.Generator(args.device).manual_seed(batch),
        )
        with torch.no_grad():
            fp32_feats = ours["fp32"].encode_image(images).float()

        def ref_encode(x, dtype=clip_vendor.DTYPES[args.ref_dtype]):
            return reference.encode_image(x.to(dtype))

        ref_rate = images_per_second(ref_encode, images, args.iters, args.device)
        rows.append((name, "openai", args.ref_dtype, batch, ref_rate, 1.0, min_cosine(ref_encode, images, fp32_feats)))
        for dtype in args.dtypes:
            encode = ours[dtype].encode_image
            rate = images_per_second(encode, images, args.iters, args.device)
            rows.append((name, "ours", dtype, batch, rate, rate / ref_rate, min_cosine(encode, images, fp32_feats)))
    for lever in args.levers:  # at the last (largest) batch
        try:
            encode, note = with_lever(lever, ours[args.dtypes[0]], images, args.device)
            rate = images_per_second(encode, images, args.iters, args.device)
            cosine = min_cosine(encode, images, fp32_feats)
            rows.append((name, f"ours + {lever}{note}", args.dtypes[0], batch, rate, rate / ref_rate, cosine))
        except Exception as err:  # a lever this machine cannot pull is a finding, not the end of the run
            rows.append((name, f"ours + {lever}: failed ({type(err).__name__}: {str(err)[:120]})", "", batch, 0, 0, 0))
    return rows


def with_lever(lever, model, images, device):
    """(encode function for `images` with the lever pulled on a copy of `model`, a note for its row)."""
    model = copy.deepcopy(model)
    if lever == "channels-last":
        model.visual.conv1.to(memory_format=torch.channels_last)
        return lambda x: model.encode_image(x.contiguous(memory_format=torch.channels_last)), ""
    compiled = torch.compile(model.encode_image, mode="reduce-overhead" if lever.endswith("cudagraphs") else None)
    start = time.perf_counter()
    with torch.no_grad():
        compiled(images)
    synchronize(device)
    return compiled, f" (compiled in {time.perf_counter() - start:.0f} s)"


def main(argv=None):
    args = parser.parse_args(argv)
    device_name = torch.cuda.get_device_name() if torch.device(args.device).type == "cuda" else "cpu"
    print(f"device: {device_name}, torch {torch.__version__}")
    print("| shape | impl | dtype | batch | images/s | vs reference | min cosine to fp32 |")
    print("|---|---|---|---|---|---|---|")
    for name in args.shapes:
        for shape, impl, dtype, batch, rate, ratio, cosine in bench_shape(name, args):
            print(f"| {shape} | {impl} | {dtype} | {batch} | {rate:,.0f} | {ratio:.2f}x | {cosine:.5f} |", flush=True)


if __name__ == "__main__":
    main()
