"""OpenCLIP's own format as a frozen backbone, read offline: a folder as OpenCLIP's hub repositories
hold it (open_clip_config.json with its model and preprocessing config, the weights as
open_clip_model.safetensors or open_clip_pytorch_model.bin, which open_clip reads with
`weights_only=True`, and a Hugging Face tokenizer's files where its text tower uses one).

open_clip builds and runs the model (ViT, ConvNeXt, EVA, DFN, SigLIP in its layout); what this
module owns is the way in: the frames through the config's own preprocessing (resize mode,
interpolation, size, mean and std, as clip_vendor's PixelRule on uint8 frames), the captions
through open_clip's tokenizer for the model, and the contract entry. open_clip's `encode_text`
returns the pooled feature only, so no token features are cached (tightTransf's token input is
refused on these caches).
"""

import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # set before open_clip (and huggingface_hub) is imported

import numpy as np  # noqa: E402
import open_clip  # noqa: E402
import torch  # noqa: E402

from backbones import BackboneError, library_error  # noqa: E402
from clip_vendor.preprocess import INTERPOLATIONS, PixelRule, describe_pixels, normalize  # noqa: E402
from infra.file_io import file_sha256  # noqa: E402

CONFIG = "open_clip_config.json"
WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin")
RESIZES = {"shortest": "short side", "squash": "squash"}  # open_clip's resize_mode -> our PixelRule's


def check_folder(folder: Path) -> Path:
    """The folder's weights file; a BackboneError names the first missing file."""
    if not folder.is_dir():
        raise BackboneError(f"openclip:{folder}: not a folder (give a folder holding {CONFIG} and the weights)")
    if not (folder / CONFIG).is_file():
        raise BackboneError(f"openclip:{folder}: {folder / CONFIG} not found")
    weights = [folder / name for name in WEIGHTS if (folder / name).is_file()]
    if not weights:
        raise BackboneError(f"openclip:{folder}: no weights found (one of {', '.join(WEIGHTS)})")
    return weights[0]


def pixel_rule(config: dict, folder: Path) -> tuple[int, PixelRule]:
    """(input side, PixelRule) of open_clip's preprocessing config (torchvision's transforms on a
    Pillow image: a centre crop's offset rounded), or a BackboneError naming what we do not run."""
    size = config.get("size")
    side = size if isinstance(size, int) else size[0] if len(set(size)) == 1 else None
    mode, interpolation = config.get("resize_mode", "shortest"), config.get("interpolation", "bicubic")
    if side is None or mode not in RESIZES or interpolation not in INTERPOLATIONS:
        raise BackboneError(
            f"openclip:{folder}: preprocessing {config} is not one we run (a square input, resize_mode shortest "
            "or squash, bicubic or bilinear)"
        )
    return side, PixelRule(RESIZES[mode], interpolation, "round")


class OpenClipBackbone:
    """An OpenCLIP model folder; see backbones/__init__.py for the calls."""

    def __init__(self, folder: Path, device: str, dtype: torch.dtype):
        self.folder = Path(folder)
        weights = check_folder(self.folder)
        name = f"local-dir:{self.folder}"
        try:
            model = open_clip.create_model(name, device=device)
            self.tokenizer = open_clip.get_tokenizer(name)
        except (OSError, ValueError, RuntimeError, KeyError) as err:
            raise library_error(f"openclip:{self.folder}", err) from None
        self.model = model.to(dtype=dtype).eval().requires_grad_(False)
        self.device, self.dtype = device, dtype
        preprocess = open_clip.get_model_preprocess_cfg(self.model)
        self.size, self.pixels = pixel_rule(preprocess, self.folder)
        self.mean, self.std = tuple(preprocess["mean"]), tuple(preprocess["std"])
        self.source = self.folder.name
        with torch.no_grad():
            width = self.model.encode_text(self.tokenizer(["a"]).to(device)).shape[-1]
        self.contract = {
            "kind": "openclip",
            "library": f"open_clip {open_clip.__version__}",
            "weights_sha256": {weights.name: file_sha256(weights)},
            "embed_dim": int(width),
            "context_length": self.tokenizer.context_length,
            "token_features": False,
            "parameters": sum(parameter.numel() for parameter in self.model.parameters()),
            "config": {
                "architecture": type(self.model).__name__,
                "config_sha256": file_sha256(self.folder / CONFIG),
                "image_size": self.size,
            },
        }

    def describe_pixels(self) -> dict:
        return {
            **describe_pixels(self.size, self.pixels, self.mean, self.std),
            "config_sha256": file_sha256(self.folder / CONFIG),
        }

    def describe_tokenizer(self, context_length: int, long_text: str) -> dict:
        files = sorted(path for path in self.folder.iterdir() if "token" in path.name or path.name == "vocab.json")
        return {
            "class": type(self.tokenizer).__name__,
            "library": f"open_clip {open_clip.__version__}",  # its bundled vocabulary, where it has no files here
            "files_sha256": {path.name: file_sha256(path) for path in files if path.is_file()},
            "context_length": context_length,
            "long_text": long_text,
        }

    @torch.no_grad()
    def encode_crops(self, crops: list[np.ndarray]) -> np.ndarray:
        if not crops:
            return np.zeros((0, self.contract["embed_dim"]), dtype=np.float16)
        pixels = normalize(torch.from_numpy(np.concatenate(crops)), self.device, self.mean, self.std)
        return self.model.encode_image(pixels.to(self.dtype)).to(torch.float16).cpu().numpy()

    @torch.no_grad()
    def encode_texts(self, texts: list[str], context_length: int, long_text: str):
        if long_text != "truncate":
            raise BackboneError(f"--long-text {long_text}: only truncate is supported for openclip:{self.folder}")
        pooled = self.model.encode_text(self.tokenizer(texts, context_length=context_length).to(self.device))
        width = self.contract["embed_dim"]
        return pooled, [torch.zeros(0, width, device=self.device) for _ in texts]

    def token_lengths(self, texts: list[str]) -> list[int]:
        if hasattr(self.tokenizer, "encode"):  # open_clip's own BPE: start and end tokens around the text
            return [len(self.tokenizer.encode(text)) + 2 for text in texts]
        return [len(ids) for ids in self.tokenizer.tokenizer(texts)["input_ids"]]  # a Hugging Face tokenizer

    def text_blocks_state(self) -> dict[str, torch.Tensor]:
        """open_clip's CLIP keeps OpenAI's names (a custom text tower under `text.`)."""
        state = self.model.state_dict()
        prefix = "text." if "text.positional_embedding" in state else ""
        return {key[len(prefix) :]: value.float().cpu() for key, value in state.items() if key.startswith(prefix)}
