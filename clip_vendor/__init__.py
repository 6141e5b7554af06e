"""Our own OpenAI CLIP: loads OpenAI's released ViT checkpoints offline and runs them.

model, preprocess = clip_vendor.load("ViT-B-32.pt", device="cuda", dtype=torch.float16)
image_feats = model.encode_image(preprocess(frames_bgr, device="cuda"))    # [N, D]
text_feats = model.encode_text(clip_vendor.tokenize(captions).cuda())      # [B, D]
frame_feats = clip_vendor.encode_crops(model, [crops_of_video_a, crops_of_video_b])  # fp16 numpy
"""

import zipfile
from pathlib import Path

import numpy as np
import torch

from .archive import check_zip_entries, read_archive_state_dict
from .model import CLIP, ClipConfig, LayerNorm, infer_config
from .preprocess import Preprocess, normalize, preprocess_frames
from .tokenizer import token_lengths, tokenize, tokenize_windows

__all__ = [
    "load",
    "read_state_dict",
    "build_model",
    "encode_crops",
    "encode_texts",
    "LONG_TEXT",
    "tokenize",
    "tokenize_windows",
    "token_lengths",
    "preprocess_frames",
    "DTYPES",
    "CLIP",
    "ClipConfig",
]

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}  # the names a caller states

# Keys OpenAI's TorchScript archives carry as plain attributes, not weights.
ARCHIVE_ONLY_KEYS = ("input_resolution", "context_length", "vocab_size")
# Keys the architecture is read from; a file lacking one is not an OpenAI CLIP ViT checkpoint.
REQUIRED_KEYS = (
    "visual.conv1.weight",
    "visual.positional_embedding",
    "text_projection",
    "positional_embedding",
    "token_embedding.weight",
    "ln_final.weight",
)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read an OpenAI CLIP checkpoint: a TorchScript archive (as released) or a plain state dict,
    each as data only (`archive.py`; `torch.load(weights_only=True)`): nothing in the file runs.

    Returns a {name: tensor} dict on the CPU, with OpenAI's parameter names. Raises ValueError
    naming the file and the problem when it is truncated, not a PyTorch file, or not CLIP.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CLIP checkpoint not found: {path}")
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            check_zip_entries(archive, path)  # a zip bomb or a duplicated entry, before anything is read
    except zipfile.BadZipFile as err:
        raise ValueError(f"cannot read CLIP checkpoint {path}: not a PyTorch zip file, or truncated ({err})") from None
    if any(name.endswith("/constants.pkl") for name in names):  # only TorchScript archives have it
        state_dict = read_archive_state_dict(path)  # as data: nothing in the archive runs
    else:
        try:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # a crafted file can raise anything while it is read: one refusal naming it
            first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ValueError(f"cannot read CLIP checkpoint {path}: {first_line}") from None
    if not isinstance(state_dict, dict):
        raise ValueError(f"{path} is not an OpenAI CLIP ViT checkpoint: it holds a {type(state_dict).__name__}")
    if isinstance(state_dict, dict) and isinstance(state_dict.get("state_dict"), dict):
        state_dict = state_dict["state_dict"]
    state_dict = {key: value for key, value in state_dict.items() if key not in ARCHIVE_ONLY_KEYS}
    check_is_clip_vit(state_dict, path)
    return state_dict


def check_is_clip_vit(state_dict: dict, path: str | Path) -> None:
    if "visual.layer1.0.conv1.weight" in state_dict:
        raise ValueError(f"{path} is a ResNet CLIP checkpoint; only the ViT models are supported")
    for key in REQUIRED_KEYS:
        if key not in state_dict:
            raise ValueError(f"{path} is not an OpenAI CLIP ViT checkpoint: missing key '{key}'")


def build_model(state_dict: dict[str, torch.Tensor], path: str | Path = "<state dict>") -> CLIP:
    """Build a CLIP whose shapes are read off `state_dict`, and load it strictly (fp32)."""
    model = CLIP(infer_config(state_dict))
    weights = {key: value.float() for key, value in state_dict.items()}
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as err:  # a weight of another shape than the others imply
        detail = " ".join(line.strip() for line in str(err).splitlines()[1:3])
        raise ValueError(f"{path} is not in OpenAI's CLIP layout: {detail}") from None
    if missing:
        raise ValueError(
            f"{path} is not a complete CLIP checkpoint: missing key '{missing[0]}' ({len(missing)} missing in all)"
        )
    if unexpected:
        raise ValueError(f"{path} has keys this CLIP layout does not know, e.g. '{unexpected[0]}'")
    return model


def load(path: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32) -> tuple[CLIP, Preprocess]:
    """Load an OpenAI CLIP ViT checkpoint with no network access.

    path: a released TorchScript archive (e.g. ViT-B-32.pt) or a `torch.save`d state dict.
    device: where the model runs ("cpu", "cuda", "cuda:1", ...).
    dtype: weight and activation dtype; fp32 on CPU, fp16 or bf16 on GPU. LayerNorm always
        computes in fp32. Nothing is switched by device: the caller states the precision.
    Returns (model in eval mode, preprocess) where preprocess maps OpenCV BGR uint8 frames
    ([H, W, 3] or [N, H, W, 3]) to normalised model input.
    """
    model = build_model(read_state_dict(path), path)
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    for module in model.modules():
        if isinstance(module, LayerNorm):
            module.float()  # as OpenAI's fp16 conversion leaves them: full-precision gains and biases
    return model, Preprocess(model.config.image_resolution)


@torch.no_grad()
def encode_crops(model: CLIP, crops: list[np.ndarray]) -> np.ndarray:
    """Uint8 crops [n_i, 3, S, S] of several videos (from `resize_crop`) -> their frame features
    [sum n_i, D] as fp16 numpy, in one forward on the model's device."""
    if not crops:
        return np.zeros((0, model.config.embed_dim), dtype=np.float16)
    images = normalize(torch.from_numpy(np.concatenate(crops)), model.visual.conv1.weight.device)
    return model.encode_image(images).to(torch.float16).cpu().numpy()


LONG_TEXT = ("truncate", "windows")


@torch.no_grad()
def encode_texts(
    model: CLIP, texts: list[str], context_length: int = 77, long_text: str = "truncate"
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Texts -> (pooled embeddings [N, D], token features [n_i, D] of each text, start to end-of-text).

    long_text: how a text longer than `context_length` tokens is read. "truncate" cuts it, as
        OpenAI's `tokenize(truncate=True)` does: its ending is lost. "windows" splits it into
        consecutive windows that fit, encodes each, and averages their pooled embeddings; its token
        features are the first window's.
    """
    device = model.visual.conv1.weight.device
    read = tokenize if long_text == "truncate" else tokenize_windows
    windows = [read(text, context_length) for text in texts]  # [n_windows, context_length] per text
    token_feats, token_mask = model.encode_text_tokens(torch.cat(windows).to(device))
    at_end = token_feats[torch.arange(len(token_feats), device=device), token_mask.sum(dim=1) - 1]
    pooled, tokens, start = [], [], 0
    for window_count in (len(rows) for rows in windows):
        pooled.append(at_end[start : start + window_count].mean(dim=0))  # one window: the embedding itself
        tokens.append(token_feats[start][token_mask[start]])
        start += window_count
    return torch.stack(pooled), tokens
