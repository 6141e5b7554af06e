"""The frozen image-text backbones a cache can be extracted with: the one place that declares them.

    backbone = backbones.load(backbones.from_flags(args.clip, args.backbone), device, dtype)
    frame_feats = backbone.encode_crops(crops)                    # fp16 numpy [sum n_i, D]
    pooled, token_feats = backbone.encode_texts(texts, 77, "truncate")

Kinds (`KINDS`): `openai` is our own CLIP (clip_vendor/) on OpenAI's released checkpoints, the
default, with no dependency; `hf` reads a Hugging Face `transformers` model folder (CLIP- and
SigLIP-shaped, `huggingface.FAMILIES`) offline; `openclip` an OpenCLIP model folder, offline.
Every backbone answers the same calls:

- `contract`: the cache contract's `backbone` entry: `kind`, `library` and its version, the
  weights' sha256, `embed_dim`, `context_length` (its text positions), `token_features`,
  `parameters`, and what else of the model the features depend on (`config`);
- `source`: what logs and reports call it (the checkpoint's or the folder's name);
- `size`, `pixels`: the input side and how frames become it (clip_vendor/preprocess.py's
  `PixelRule`), which decode workers run; `describe_pixels()`: the contract's `preprocessing`;
- `describe_tokenizer(context_length, long_text)`: the contract's `tokenizer`;
- `encode_crops(crops)`: uint8 crops [n_i, 3, S, S] of several videos -> frame features
  [sum n_i, D], fp16 numpy;
- `encode_texts(texts, context_length, long_text)`: (pooled [N, D], token features [n_i, D] of each
  text, [0, D] where `token_features` is false);
- `token_lengths(texts)`: each text's tokens with its start and end markers, uncut;
- `text_blocks_state()`: the text transformer in OpenAI's names (`transformer.resblocks.*`,
  `positional_embedding`, `ln_final.weight`), what seqTransf and tightTransf start from.

Adding a kind: a module here and one entry in KINDS and in `load` (docs/backbones.md).
"""

from dataclasses import dataclass
from pathlib import Path

import torch

from backbones.openai import OpenAIBackbone
from infra.cli import StageError
from infra.records import first_difference

KINDS = {
    "openai": "OpenAI CLIP checkpoint (TorchScript archive or state dict), by clip_vendor: openai:FILE or --clip FILE",
    "hf": "Hugging Face transformers model folder (CLIP, SigLIP, SigLIP 2 at fixed resolution, MetaCLIP): hf:FOLDER",
    "openclip": "OpenCLIP model folder (open_clip_config.json and weights: ViT, ConvNeXt, EVA, DFN): openclip:FOLDER",
}


class BackboneError(ValueError):
    """A backbone that cannot be read: the message names the file, the field or the flag."""


@dataclass(frozen=True)
class BackboneSpec:
    kind: str
    path: Path

    def __str__(self):
        return f"{self.kind}:{self.path}"


def parse_spec(text: str) -> BackboneSpec:
    """ "hf:FOLDER" or "openai:FILE" -> BackboneSpec (a BackboneError names what is wrong)."""
    kind, separator, path = text.partition(":")
    if not separator or kind not in KINDS or not path:
        choices = "; ".join(f"{name}: {what}" for name, what in KINDS.items())
        raise BackboneError(f"--backbone {text!r}: give KIND:PATH, one of {choices}")
    return BackboneSpec(kind, Path(path))


def from_flags(clip: Path | None, backbone: str | None) -> BackboneSpec | None:
    """The backbone a stage's `--clip FILE` (OpenAI's, the default kind) or `--backbone KIND:PATH`
    names; None when neither is given. Both at once is refused."""
    if clip is not None and backbone is not None:
        raise BackboneError("--clip and --backbone both name a backbone: give one (--clip FILE is openai:FILE)")
    if backbone is not None:
        return parse_spec(backbone)
    return BackboneSpec("openai", Path(clip)) if clip is not None else None


def load(spec: BackboneSpec, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """The backbone `spec` names, in eval mode on `device` in `dtype`, read with no network."""
    if spec.kind == "openai":
        return OpenAIBackbone(spec.path, device, dtype)
    if spec.kind == "hf":
        from backbones.huggingface import HuggingFaceBackbone  # imports transformers: only when asked for

        return HuggingFaceBackbone(spec.path, device, dtype)
    from backbones.openclip import OpenClipBackbone  # imports open_clip and torchvision: only when asked for

    return OpenClipBackbone(spec.path, device, dtype)


def load_flagged(args, device: str = "cpu", dtype: torch.dtype = torch.float32, cache: tuple | None = None):
    """The backbone a stage's `--clip` or `--backbone` names (`args.clip`, `args.backbone`); with
    `cache` = (its folder, its contract), refused unless it is the one the cache was extracted with.
    Any problem is a StageError naming the flag."""
    flag = "--backbone" if args.backbone else "--clip"
    try:
        backbone = load(from_flags(args.clip, args.backbone), device, dtype)
        if cache is not None:
            check_matches(backbone, cache[1], cache[0], flag)
    except (ValueError, OSError) as err:
        raise StageError(f"{flag}: {err}") from None
    return backbone


def library_error(where: str, err: Exception) -> BackboneError:
    """A library's refusal to read a model folder, as one line naming the folder."""
    first_line = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return BackboneError(f"{where}: {first_line}")


def check_matches(backbone, contract: dict, cache_dir: Path, flag: str) -> None:
    """The backbone a stage loaded must be the one the cache was extracted with (the same contract
    entry: kind, library version, weights); else a BackboneError naming the first field that differs."""
    recorded = contract["backbone"]
    if recorded["kind"] != backbone.contract["kind"]:  # say that first: every other field differs too
        raise BackboneError(
            f"{flag} is not the backbone {cache_dir} was extracted with: it is of kind {backbone.contract['kind']}, "
            f"the cache's of kind {recorded['kind']} ({KINDS[recorded['kind']]})"
        )
    mismatch = first_difference(recorded, backbone.contract, (f"{cache_dir} has", f"{flag} has"))
    if mismatch:
        raise BackboneError(f"{flag} is not the backbone {cache_dir} was extracted with: it differs in {mismatch}")
