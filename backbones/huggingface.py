"""Hugging Face `transformers` model folders as frozen backbones, read offline.

A folder as `save_pretrained` writes it: config.json, the weights (*.safetensors, or
pytorch_model*.bin, which transformers reads with `weights_only=True`), preprocessor_config.json
and the tokenizer's files. Two families (`FAMILIES`, by config.json's `model_type`): CLIP-shaped
(OpenAI's, LAION's, MetaCLIP's and DFN's CLIPs in this format) and SigLIP-shaped (SigLIP, and
SigLIP 2 at a fixed resolution, which transformers also calls `siglip`). The model runs as
transformers runs it; what this module owns is the way in: the frames through the folder's own
image processor semantics (resize mode, interpolation, size, mean and std, as clip_vendor's
PixelRule on uint8 frames), the captions through the folder's own tokenizer, padded as the family
was trained, and the contract entry that names it all.
"""

import os
from dataclasses import dataclass
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # set before transformers is imported: the hub is never contacted

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from backbones import BackboneError, library_error  # noqa: E402
from clip_vendor.preprocess import PixelRule, describe_pixels, normalize  # noqa: E402
from infra.file_io import file_sha256  # noqa: E402


@dataclass(frozen=True)
class Family:
    """How one model family reads text, and what of it lies in the shared embedding space."""

    padding: str  # "longest", or "max_length" (SigLIP was trained on text padded to its full length)
    token_projection: str | None  # the layer that maps each token's state into the shared space, or None
    width: str  # the config field of the shared space's width (what get_*_features return)

    def embed_dim(self, config) -> int:
        section, _, field = self.width.rpartition(".")
        return getattr(getattr(config, section) if section else config, field)


FAMILIES = {
    "clip": Family("longest", "text_projection", "projection_dim"),
    # SigLIP pools the last position of text padded to its full length: no token's state but that
    # one passes through the layer trained for the shared space, so it has no token features
    "siglip": Family("max_length", None, "text_config.projection_size"),
}
RESAMPLING = {2: "bilinear", 3: "bicubic"}  # PIL's codes, as preprocessor_config.json gives them
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "spiece.model", "tokenizer.model")
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")


def weight_files(folder: Path) -> list[Path]:
    return sorted(path for pattern in WEIGHT_PATTERNS for path in folder.glob(pattern))


def check_folder(folder: Path) -> None:
    """Every file the model needs is there, else a BackboneError naming the first missing one."""
    if not folder.is_dir():
        raise BackboneError(f"hf:{folder}: not a folder (give a Hugging Face model folder, as save_pretrained writes)")
    for name in ("config.json", "preprocessor_config.json"):
        if not (folder / name).is_file():
            raise BackboneError(f"hf:{folder}: {folder / name} not found")
    if not weight_files(folder):
        raise BackboneError(f"hf:{folder}: no weights found ({folder}/model.safetensors or pytorch_model.bin)")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise BackboneError(f"hf:{folder}: no tokenizer file found (one of {', '.join(TOKENIZER_FILES)})")


def pixel_rule(processor, image_size: int, folder: Path) -> PixelRule:
    """The folder's image processor as a PixelRule, or a BackboneError naming the setting we do not run."""
    where = f"hf:{folder}: {folder / 'preprocessor_config.json'}"
    size, crop = dict(processor.size or {}), dict(getattr(processor, "crop_size", None) or {})
    if "shortest_edge" in size:
        if not getattr(processor, "do_center_crop", False) or crop != {"height": image_size, "width": image_size}:
            raise BackboneError(f"{where}: a short-side resize needs a centred {image_size}x{image_size} crop")
        resize, side = "short side", size["shortest_edge"]
    elif size.get("height") == size.get("width") is not None and not getattr(processor, "do_center_crop", False):
        resize, side = "squash", size["height"]
    else:
        raise BackboneError(f"{where}: size {size} with crop {crop or None} is not a square input we can run")
    if side != image_size:
        raise BackboneError(f"{where}: resizes to {side}, the model reads {image_size} pixels a side")
    resample = int(processor.resample)
    if resample not in RESAMPLING:
        raise BackboneError(f"{where}: resample {resample} (only {RESAMPLING}, Pillow's codes)")
    if not (processor.do_rescale and abs(processor.rescale_factor - 1 / 255) < 1e-12 and processor.do_normalize):
        raise BackboneError(f"{where}: only pixels rescaled by 1/255 and then normalised are supported")
    return PixelRule(resize, RESAMPLING[resample], "floor")  # transformers' center_crop floors the offset


class HuggingFaceBackbone:
    """A transformers CLIPModel or SiglipModel folder; see backbones/__init__.py for the calls."""

    def __init__(self, folder: Path, device: str, dtype: torch.dtype):
        self.folder = Path(folder)
        check_folder(self.folder)
        model_type = transformers.AutoConfig.from_pretrained(self.folder, local_files_only=True).model_type
        if model_type not in FAMILIES:
            raise BackboneError(
                f"hf:{self.folder}: model_type {model_type!r} in config.json; supported: {', '.join(FAMILIES)}"
            )
        self.family = FAMILIES[model_type]
        try:
            self.model = transformers.AutoModel.from_pretrained(self.folder, local_files_only=True)
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(self.folder, local_files_only=True)
            # the Pillow backend: the one our PixelRule runs (where torchvision is installed, transformers
            # defaults to its torchvision backend, which resizes tensors with rounding of its own)
            processor = transformers.AutoImageProcessor.from_pretrained(
                self.folder, local_files_only=True, backend="pil"
            )
        except (OSError, ValueError) as err:
            raise library_error(f"hf:{self.folder}", err) from None
        self.model = self.model.to(device=device, dtype=dtype).eval().requires_grad_(False)
        self.device, self.dtype = device, dtype
        config = self.model.config
        self.size = config.vision_config.image_size
        self.pixels = pixel_rule(processor, self.size, self.folder)
        self.mean, self.std = tuple(processor.image_mean), tuple(processor.image_std)
        self.source = self.folder.name
        self.contract = {
            "kind": "hf",
            "library": f"transformers {transformers.__version__}",
            "weights_sha256": {path.name: file_sha256(path) for path in weight_files(self.folder)},
            "embed_dim": self.family.embed_dim(config),
            "context_length": config.text_config.max_position_embeddings,
            "token_features": self.family.token_projection is not None,
            "parameters": sum(parameter.numel() for parameter in self.model.parameters()),
            "config": {
                "model_type": model_type,
                "architecture": type(self.model).__name__,
                "config_sha256": file_sha256(self.folder / "config.json"),
                "image_size": self.size,
                "text_activation": config.text_config.hidden_act,
            },
        }

    def describe_pixels(self) -> dict:
        return {
            **describe_pixels(self.size, self.pixels, self.mean, self.std),
            "processor_sha256": file_sha256(self.folder / "preprocessor_config.json"),
        }

    def describe_tokenizer(self, context_length: int, long_text: str) -> dict:
        files = sorted(path for path in self.folder.iterdir() if "token" in path.name or path.name in TOKENIZER_FILES)
        return {
            "class": type(self.tokenizer).__name__,
            "files_sha256": {path.name: file_sha256(path) for path in files if path.is_file()},
            "padding": self.family.padding,
            "context_length": context_length,
            "long_text": long_text,
        }

    @torch.no_grad()
    def encode_crops(self, crops: list[np.ndarray]) -> np.ndarray:
        width = self.contract["embed_dim"]
        if not crops:
            return np.zeros((0, width), dtype=np.float16)
        pixels = normalize(torch.from_numpy(np.concatenate(crops)), self.device, self.mean, self.std)
        features = self.model.get_image_features(pixel_values=pixels.to(self.dtype))
        return pooled(features).to(torch.float16).cpu().numpy()

    @torch.no_grad()
    def encode_texts(self, texts: list[str], context_length: int, long_text: str):
        if long_text != "truncate":
            raise BackboneError(f"--long-text {long_text}: only truncate is supported for hf:{self.folder}")
        batch = self.tokenizer(
            texts,
            padding=self.family.padding,
            truncation=True,
            max_length=context_length,
            return_tensors="pt",
        )
        # the model is given what the folder's tokenizer gives (SigLIP's: ids alone, padding read unmasked)
        inputs = {name: batch[name].to(self.device) for name in ("input_ids", "attention_mask") if name in batch}
        output = self.model.text_model(**inputs)
        if self.family.token_projection is None:
            width = self.contract["embed_dim"]
            return output.pooler_output, [torch.zeros(0, width, device=self.device) for _ in texts]
        projection = getattr(self.model, self.family.token_projection)
        token_feats, mask = projection(output.last_hidden_state), inputs["attention_mask"].bool()
        return projection(output.pooler_output), [
            feats[row_mask] for feats, row_mask in zip(token_feats, mask, strict=True)
        ]

    def token_lengths(self, texts: list[str]) -> list[int]:
        return [len(ids) for ids in self.tokenizer(texts, truncation=False, verbose=False)["input_ids"]]

    def text_blocks_state(self) -> dict[str, torch.Tensor]:
        """The text encoder's layers in OpenAI's names: q, k and v joined into in_proj, LayerNorms and
        MLP renamed (the layers of both families share transformers' names)."""
        text = self.model.text_model
        state = {
            "positional_embedding": text.embeddings.position_embedding.weight,
            "ln_final.weight": text.final_layer_norm.weight,
        }
        for index, layer in enumerate(text.encoder.layers):
            prefix, attention = f"transformer.resblocks.{index}.", layer.self_attn
            projections = (attention.q_proj, attention.k_proj, attention.v_proj)
            state[prefix + "attn.in_proj_weight"] = torch.cat([projection.weight for projection in projections])
            state[prefix + "attn.in_proj_bias"] = torch.cat([projection.bias for projection in projections])
            renamed = {
                "attn.out_proj": attention.out_proj,
                "ln_1": layer.layer_norm1,
                "ln_2": layer.layer_norm2,
                "mlp.c_fc": layer.mlp.fc1,
                "mlp.c_proj": layer.mlp.fc2,
            }
            for name, module in renamed.items():
                state[prefix + name + ".weight"], state[prefix + name + ".bias"] = module.weight, module.bias
        return {key: value.detach().float().cpu() for key, value in state.items()}


def pooled(features) -> torch.Tensor:
    """transformers 5 returns the features in an output object (`pooler_output`), 4 as a tensor."""
    return features if isinstance(features, torch.Tensor) else features.pooler_output
