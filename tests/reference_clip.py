"""Test helpers: OpenAI's reference CLIP code, and random checkpoints in OpenAI's exact layout.

The reference is the `clip-anytorch` wheel (installed for tests only, see requirements-dev
notes in setup_env.sh). Its package __init__ imports torchvision, which does not import beside
our torch, so its model.py and simple_tokenizer.py are loaded by path.
"""
import importlib.util
import sysconfig
import warnings
from pathlib import Path

import torch

REFERENCE_DIR = Path(sysconfig.get_paths()["purelib"]) / "clip"
VOCAB_SIZE = 49408      # OpenAI's text vocabulary
CONTEXT_LENGTH = 77


def load_reference_module(name):
    path = REFERENCE_DIR / f"{name}.py"
    if not path.exists():
        raise FileNotFoundError(f"{path} missing: run `bash setup_env.sh --dev` to install the test-only reference")
    spec = importlib.util.spec_from_file_location(f"openai_reference_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def random_reference_clip(seed, embed_dim, image_resolution, vision_layers, vision_width, vision_patch_size,
                          text_width, text_layers):
    """OpenAI's CLIP with every parameter perturbed by noise, so that no weight is a trivial 0 or 1."""
    reference = load_reference_module("model")
    torch.manual_seed(seed)
    model = reference.CLIP(embed_dim, image_resolution, vision_layers, vision_width, vision_patch_size,
                           CONTEXT_LENGTH, VOCAB_SIZE, text_width, text_width // 64, text_layers)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.02 * torch.randn_like(param))
    return model.eval()


def save_checkpoints(model, directory):
    """Save `model` as a plain state dict and as a traced TorchScript archive like OpenAI's releases,
    which also carry input_resolution / context_length / vocab_size as tensors beside the weights."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state_path = directory / "state_dict.pt"
    torch.save(model.state_dict(), state_path)
    resolution = model.visual.input_resolution
    plain_attributes = {"context_length": model.context_length, "vocab_size": model.vocab_size}
    for name in plain_attributes:
        delattr(model, name)
    model.register_buffer("input_resolution", torch.tensor(resolution))
    model.register_buffer("context_length", torch.tensor(CONTEXT_LENGTH))
    model.register_buffer("vocab_size", torch.tensor(VOCAB_SIZE))
    example_images = torch.randn(2, 3, resolution, resolution)
    example_tokens = torch.randint(1, 1000, (2, CONTEXT_LENGTH))
    example_tokens[:, 5] = VOCAB_SIZE - 1
    archive_path = directory / "archive.pt"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracing warnings about shape checks, jit deprecation
        torch.jit.save(torch.jit.trace(model, (example_images, example_tokens), check_trace=False), archive_path)
    for name in ("input_resolution", "context_length", "vocab_size"):
        delattr(model, name)
    for name, value in plain_attributes.items():
        setattr(model, name, value)
    return state_path, archive_path


def reference_tokenize(tokenizer, texts, context_length=CONTEXT_LENGTH):
    """OpenAI's clip.tokenize(truncate=True) rule, written against their SimpleTokenizer."""
    sot, eot = tokenizer.encoder["<|startoftext|>"], tokenizer.encoder["<|endoftext|>"]
    rows = []
    for text in texts:
        ids = [sot] + tokenizer.encode(text) + [eot]
        if len(ids) > context_length:
            ids = ids[:context_length]
            ids[-1] = eot
        rows.append(ids + [0] * (context_length - len(ids)))
    return torch.tensor(rows)
