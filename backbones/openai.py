"""OpenAI's released CLIP ViTs, run by our own clip_vendor (the default backbone, no dependency)."""

from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

import clip_vendor
from clip_vendor.model import ClipConfig
from clip_vendor.preprocess import CLIP_MEAN, CLIP_STD, OPENAI_PIXELS, describe_pixels
from clip_vendor.tokenizer import VOCAB_PATH
from infra.file_io import file_sha256


def contract_entry(weights_sha256: str | None, config: ClipConfig, parameters: int) -> dict:
    """The cache contract's `backbone` entry for an OpenAI CLIP of `config` with `parameters` weights
    (synthetic caches use it too)."""
    return {
        "kind": "openai",
        "library": "clip_vendor",
        "weights_sha256": weights_sha256,
        "embed_dim": config.embed_dim,
        "context_length": config.context_length,
        "token_features": True,
        "parameters": parameters,
        "config": asdict(config),
    }


class OpenAIBackbone:
    """An OpenAI CLIP checkpoint (TorchScript archive or state dict); see backbones/__init__.py."""

    pixels = OPENAI_PIXELS

    def __init__(self, path: Path, device: str, dtype: torch.dtype):
        self.path = Path(path)
        self.model, preprocess = clip_vendor.load(self.path, device=device, dtype=dtype)
        self.size = preprocess.size
        self.source = self.path.name
        parameters = sum(parameter.numel() for parameter in self.model.parameters())
        self.contract = contract_entry(file_sha256(self.path), self.model.config, parameters)

    def describe_pixels(self) -> dict:
        return describe_pixels(self.size, self.pixels, CLIP_MEAN, CLIP_STD)

    def describe_tokenizer(self, context_length: int, long_text: str) -> dict:
        return {"vocab_sha256": file_sha256(VOCAB_PATH), "context_length": context_length, "long_text": long_text}

    def encode_crops(self, crops: list[np.ndarray]) -> np.ndarray:
        return clip_vendor.encode_crops(self.model, crops)

    def encode_texts(self, texts: list[str], context_length: int, long_text: str):
        return clip_vendor.encode_texts(self.model, texts, context_length, long_text)

    def token_lengths(self, texts: list[str]) -> list[int]:
        return clip_vendor.token_lengths(texts)

    def text_blocks_state(self) -> dict[str, torch.Tensor]:
        return clip_vendor.read_state_dict(self.path)
