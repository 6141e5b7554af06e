"""CLIP preprocessing for frames decoded by OpenCV (BGR uint8), batched, on CPU or GPU.

Matches OpenAI's torchvision pipeline (Resize(short side, bicubic) on a PIL image, CenterCrop,
ToTensor, Normalize): torch's bicubic resize with `antialias=True` uses PIL's filter support, run
as PIL runs it (two separable passes, each rounded to uint8). tests/test_preprocess.py measures the
remaining difference against Pillow.
"""

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # RGB, from OpenAI's training data
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class PixelRule:
    """How decoded frames become a model's square input pixels (before mean and std): the
    geometry a model family's own pipeline applies, run as Pillow runs it."""

    resize: str = "short side"  # short side to the size, then a centred crop; or "squash": both sides to it
    interpolation: str = "bicubic"  # or "bilinear" (Pillow's filters, antialiased when shrinking)
    crop_rounding: str = "round"  # the crop's offset: torchvision's CenterCrop rounds it, Hugging Face's floors it


OPENAI_PIXELS = PixelRule()  # OpenAI's torchvision pipeline
INTERPOLATIONS = ("bicubic", "bilinear")  # the filters resize_crop runs as Pillow runs them


def resized_shape(height: int, width: int, short_side: int) -> tuple[int, int]:
    """Short side to `short_side`, long side scaled and truncated to int (torchvision's rule)."""
    if height <= width:
        return short_side, int(short_side * width / height)
    return int(short_side * height / width), short_side


def center_crop_box(height: int, width: int, size: int, rounding: str = "round") -> tuple[int, int]:
    """Top-left corner of a centred size×size crop: rounded as torchvision's CenterCrop rounds
    (half to even), or floored as Hugging Face's image processors do."""
    if rounding == "floor":
        return (height - size) // 2, (width - size) // 2
    return int(round((height - size) / 2.0)), int(round((width - size) / 2.0))


def resize_crop(
    frames_bgr: np.ndarray | torch.Tensor, size: int, device: str = "cpu", rule: PixelRule = OPENAI_PIXELS
) -> torch.Tensor:
    """frames_bgr: [N, H, W, 3] uint8 (numpy or tensor), all of one video -> [N, 3, size, size] uint8 RGB.

    The pixels the model's own pipeline (`rule`; OpenAI's by default) would hand to ToTensor.
    Keeping this step uint8 lets decode workers do it and ship 1 byte per value; `normalize`
    finishes on the model's device.
    """
    frames = torch.as_tensor(np.ascontiguousarray(frames_bgr) if isinstance(frames_bgr, np.ndarray) else frames_bgr)
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected [N, H, W, 3] uint8 BGR frames, got {tuple(frames.shape)} {frames.dtype}")
    frames = frames.to(device).flip(-1).permute(0, 3, 1, 2).float()  # BGR -> RGB, NCHW
    height, width = frames.shape[-2:]
    new_height, new_width = resized_shape(height, width, size) if rule.resize == "short side" else (size, size)
    # PIL resamples width first, then height, rounding to uint8 after each pass; doing the same
    # makes >99.9% of pixels identical to Pillow's.
    resized = frames
    for pass_size in ((height, new_width), (new_height, new_width)):
        resized = F.interpolate(resized, size=pass_size, mode=rule.interpolation, antialias=True, align_corners=False)
        resized = resized.round().clamp(0, 255)
    top, left = center_crop_box(new_height, new_width, size, rule.crop_rounding)
    return resized[:, :, top : top + size, left : left + size].to(torch.uint8)


def normalize(crops: torch.Tensor, device: str = "cpu", mean: tuple = CLIP_MEAN, std: tuple = CLIP_STD) -> torch.Tensor:
    """crops: [N, 3, S, S] uint8 RGB from `resize_crop` -> fp32 model input on `device`."""
    crops = crops.to(device, non_blocking=True).float() / 255.0
    mean = torch.tensor(mean, device=crops.device).view(1, 3, 1, 1)
    std = torch.tensor(std, device=crops.device).view(1, 3, 1, 1)
    return (crops - mean) / std


def preprocess_frames(frames_bgr: np.ndarray | torch.Tensor, size: int, device: str = "cpu") -> torch.Tensor:
    """BGR uint8 frames [N, H, W, 3] -> normalised [N, 3, size, size] fp32 on `device`.

    Resizing runs on `device`: pass the GPU to move only uint8 pixels across the bus.
    """
    return normalize(resize_crop(frames_bgr, size, device), device)


class Preprocess:
    """The `preprocess` callable returned by `clip_vendor.load`: BGR uint8 frames -> model input."""

    def __init__(self, size):
        self.size = size

    def __call__(self, frames_bgr, device="cpu"):
        single = np.ndim(frames_bgr) == 3
        batch = frames_bgr[None] if single else frames_bgr
        images = preprocess_frames(batch, self.size, device)
        return images[0] if single else images

    def describe(self) -> dict:
        """What the cache metadata records about preprocessing."""
        return describe_pixels(self.size, OPENAI_PIXELS, CLIP_MEAN, CLIP_STD)


def describe_pixels(size: int, rule: PixelRule, mean, std) -> dict:
    """What a cache's contract records about preprocessing (every field the pixels depend on)."""
    return {
        "size": size,
        **asdict(rule),
        "passes": "width then height, each rounded to uint8 (as Pillow)",
        "mean": [float(value) for value in mean],
        "std": [float(value) for value in std],
        "input": "OpenCV BGR uint8",
    }
