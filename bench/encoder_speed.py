"""Images/s of our encode_image against OpenAI's reference CLIP, same random weights, one process.

    python -m bench.encoder_speed --device cuda --profile       # ViT-B/32 and B/16, batch 256..1024
    python -m bench.encoder_speed --device cpu --shapes tiny --batch-sizes 8 --dtypes fp32 --ref-dtype fp32

Prints one row per (shape, implementation, dtype, batch) as soon as it is measured: images/s, the
ratio to the reference at the same batch size, and the minimum cosine similarity to our fp32 output
on the same images. Then, at the largest batch of each shape of --lever-shapes, ours in the first of
--dtypes with each lever of --levers pulled on a copy:
  fp32-layernorm     LayerNorm as OpenAI runs it (cast up to fp32, normalise, cast back): what our
                     one-pass LayerNorm saves;
  conv-patches       the patch embedding as OpenAI runs it, a convolution: what our one matrix
                     product over the flattened patches saves;
  sdpa-BACKEND       attention forced to one of SDPA's kernels (flash, efficient, cudnn, math);
                     unforced, SDPA picks one itself;
  channels-last      conv-patches, with the convolution and its input in channels-last memory;
  cudagraphs         the whole forward captured once in a CUDA graph and replayed (no compiler);
  compile            torch.compile (default mode), its compile time stated;
  compile+cudagraphs torch.compile's "reduce-overhead" mode, which replays CUDA graphs.
A lever that fails says why in its row. --profile prints, for the reference and ours at the largest
batch of the first shape, where the GPU time of one forward goes (bench/gpu_profile.py).
Needs the test-only reference (`bash setup_env.sh --dev`). Target (issue 2): >= 1.5x the
reference's fp16 at cosine >= 0.999.
"""

import argparse
import copy
import tempfile
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import clip_vendor
from bench.gpu_profile import print_gpu_profile
from clip_vendor.model import LayerNorm
from fixtures.reference_clip import load_reference_module, random_reference_clip

SHAPES = {  # OpenAI's released image towers (text towers shrunk: only encode_image is timed)
    "B32": dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=32),
    "B16": dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=16),
    "tiny": dict(embed_dim=64, image_resolution=64, vision_layers=2, vision_width=128, vision_patch_size=16),
}
SDPA_BACKENDS = {
    "sdpa-flash": SDPBackend.FLASH_ATTENTION,
    "sdpa-efficient": SDPBackend.EFFICIENT_ATTENTION,
    "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION,
    "sdpa-math": SDPBackend.MATH,
}
LEVERS = (
    "fp32-layernorm",
    "conv-patches",
    *SDPA_BACKENDS,
    "channels-last",
    "cudagraphs",
    "compile",
    "compile+cudagraphs",
)
parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--device", default="cuda", help="cuda or cpu")
parser.add_argument("--shapes", nargs="+", default=["B32", "B16"], choices=sorted(SHAPES), help="image towers to time")
parser.add_argument("--batch-sizes", nargs="+", type=int, default=[256, 512, 1024], help="images per forward")
parser.add_argument(
    "--dtypes", nargs="+", default=["fp16", "bf16"], choices=sorted(clip_vendor.DTYPES), help="our dtypes to time"
)
parser.add_argument("--ref-dtype", default="fp16", choices=["fp16", "fp32"], help="reference precision")
parser.add_argument("--iters", type=int, default=20, help="timed forwards per row (after 3 warm-up ones)")
parser.add_argument("--levers", nargs="*", default=list(LEVERS), choices=LEVERS, help="levers to time (see above)")
parser.add_argument(
    "--lever-shapes", nargs="*", default=None, help="shapes whose largest batch the levers are timed on (default: all)"
)
parser.add_argument("--profile", action="store_true", help="GPU time by kernel kind, reference and ours (CUDA only)")


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


def print_row(shape, impl, dtype, batch, rate, ratio, cosine):
    print(f"| {shape} | {impl} | {dtype} | {batch} | {rate:,.0f} | {ratio:.2f}x | {cosine:.5f} |", flush=True)


def bench_shape(name, args):
    """Print the shape's rows as they are measured; return (reference encode, ours encode, largest images)."""
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

    def ref_encode(x, dtype=clip_vendor.DTYPES[args.ref_dtype]):
        return reference.encode_image(x.to(dtype))

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
        ref_rate = images_per_second(ref_encode, images, args.iters, args.device)
        print_row(name, "openai", args.ref_dtype, batch, ref_rate, 1.0, min_cosine(ref_encode, images, fp32_feats))
        for dtype in args.dtypes:
            encode = ours[dtype].encode_image
            rate = images_per_second(encode, images, args.iters, args.device)
            print_row(name, "ours", dtype, batch, rate, rate / ref_rate, min_cosine(encode, images, fp32_feats))
    if args.lever_shapes is None or name in args.lever_shapes:
        for lever in args.levers:  # at the last (largest) batch
            try:
                encode, note = with_lever(lever, ours[args.dtypes[0]], images, args.device)
                rate = images_per_second(encode, images, args.iters, args.device)
                cosine = min_cosine(encode, images, fp32_feats)
                print_row(name, f"ours + {lever}{note}", args.dtypes[0], batch, rate, rate / ref_rate, cosine)
            except Exception as err:  # a lever this machine cannot pull is a finding, not the end of the run
                print_row(name, f"ours + {lever}: failed ({type(err).__name__}: {str(err)[:120]})", "", batch, 0, 0, 0)
    return ref_encode, ours[args.dtypes[0]].encode_image, images


def fp32_layer_norm(module, x):
    out = F.layer_norm(x.float(), module.normalized_shape, module.weight.float(), module.bias.float(), module.eps)
    return out.to(x.dtype)


def with_lever(lever, model, images, device):
    """(encode function for `images` with the lever pulled on a copy of `model`, a note for its row)."""
    model = copy.deepcopy(model)
    if lever == "fp32-layernorm":
        for module in model.modules():
            if isinstance(module, LayerNorm):
                module.forward = types.MethodType(fp32_layer_norm, module)
        return model.encode_image, ""
    if lever in SDPA_BACKENDS:

        def encode_with_backend(x):
            with sdpa_kernel(SDPA_BACKENDS[lever]):
                return model.encode_image(x)

        return encode_with_backend, ""
    if lever in ("conv-patches", "channels-last"):
        conv1 = model.visual.conv1
        memory_format = torch.channels_last if lever == "channels-last" else torch.contiguous_format
        conv1.to(memory_format=memory_format)

        def conv_patches(x):
            return conv1(x.contiguous(memory_format=memory_format)).flatten(2).transpose(1, 2)

        model.visual.embed_patches = conv_patches
        return model.encode_image, ""
    if lever == "cudagraphs":
        return graphed(model.encode_image, images), ""
    compiled = torch.compile(model.encode_image, mode="reduce-overhead" if lever.endswith("cudagraphs") else None)
    start = time.perf_counter()
    with torch.no_grad():
        compiled(images)
    synchronize(device)
    return compiled, f" (compiled in {time.perf_counter() - start:.0f} s)"


@torch.no_grad()
def graphed(encode, images):
    """`encode` captured once for inputs shaped like `images`; each call copies its input in and replays."""
    static_input = images.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up off the default stream, as capture requires
        for _ in range(3):
            encode(static_input)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_output = encode(static_input)

    def replay(x):
        static_input.copy_(x)
        graph.replay()
        return static_output

    return replay


def main(argv=None):
    args = parser.parse_args(argv)
    device_name = torch.cuda.get_device_name() if torch.device(args.device).type == "cuda" else "cpu"
    print(f"device: {device_name}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    print("| shape | impl | dtype | batch | images/s | vs reference | min cosine to fp32 |")
    print("|---|---|---|---|---|---|---|", flush=True)
    for index, name in enumerate(args.shapes):
        ref_encode, ours_encode, images = bench_shape(name, args)
        if args.profile and index == 0 and torch.device(args.device).type == "cuda":
            with torch.no_grad():
                print_gpu_profile(f"{name} openai {args.ref_dtype}, batch {len(images)}", ref_encode, images)
                print_gpu_profile(f"{name} ours {args.dtypes[0]}, batch {len(images)}", ours_encode, images)
            print("\n| shape | impl | dtype | batch | images/s | vs reference | min cosine to fp32 |")
            print("|---|---|---|---|---|---|---|", flush=True)


if __name__ == "__main__":
    main()
