"""OpenAI CLIP (ViT image tower + causal text transformer) with OpenAI's parameter names.

Layout is batch-first everywhere ([batch, tokens, width]) and attention goes through
`scaled_dot_product_attention`, so a GPU picks a fused kernel. Parameter names and shapes match
OpenAI's released checkpoints exactly, so `load_state_dict(strict=True)` is the compatibility check.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

HEAD_WIDTH = 64  # OpenAI CLIP uses 64-dimensional attention heads in both towers


@dataclass(frozen=True)
class ClipConfig:
    embed_dim: int  # width of the shared image-text embedding space
    image_resolution: int  # input side in pixels (224, or 336 for L/14@336)
    vision_layers: int
    vision_width: int
    vision_patch_size: int
    context_length: int  # text positions (77 in every OpenAI release)
    vocab_size: int
    text_width: int
    text_layers: int

    @property
    def vision_heads(self) -> int:
        return self.vision_width // HEAD_WIDTH

    @property
    def text_heads(self) -> int:
        return self.text_width // HEAD_WIDTH


class LayerNorm(nn.LayerNorm):
    """LayerNorm whose statistics are computed in fp32 whatever the model's dtype (fp16 variance
    overflows), returned in the input's dtype.

    An fp16 or bf16 input outside autocast goes to the kernel as it is, with the gains and biases
    cast to its dtype: the kernel accumulates mean and variance in fp32 itself, and one pass
    replaces three (cast up, normalise, cast down), which is most of the memory traffic a frozen
    CLIP spends outside its matrix products. Under autocast (training the heads) the input and
    the fp32 gains go to autocast's fp32 layer_norm unrounded."""

    def forward(self, x):
        if x.dtype in (torch.float16, torch.bfloat16) and not torch.is_autocast_enabled(x.device.type):
            return F.layer_norm(x, self.normalized_shape, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)
        out = F.layer_norm(x.float(), self.normalized_shape, self.weight.float(), self.bias.float(), self.eps)
        return out.to(x.dtype)


class QuickGELU(nn.Module):
    """The sigmoid approximation of GELU that CLIP was trained with (not nn.GELU)."""

    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class Attention(nn.Module):
    """Multi-head self-attention with nn.MultiheadAttention's parameter names, batch-first."""

    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x, attn_mask=None, is_causal=False):
        batch, n_tokens, width = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        qkv = qkv.view(batch, n_tokens, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=attn_mask, is_causal=is_causal)
        return self.out_proj(out.transpose(1, 2).reshape(batch, n_tokens, width))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width, heads, layer_norm_eps=1e-5):
        super().__init__()
        self.attn = Attention(width, heads)
        self.ln_1 = LayerNorm(width, eps=layer_norm_eps)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, 4 * width))
        self.mlp.add_module("gelu", QuickGELU())
        self.mlp.add_module("c_proj", nn.Linear(4 * width, width))
        self.ln_2 = LayerNorm(width, eps=layer_norm_eps)

    def forward(self, x, attn_mask=None, is_causal=False):
        x = x + self.attn(self.ln_1(x), attn_mask=attn_mask, is_causal=is_causal)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of pre-LN residual blocks. `attn_mask` is a bool mask broadcastable to
    [batch, heads, queries, keys] with True where attention is allowed. CLIP's LayerNorms use
    eps 1e-5; other models built from these blocks may state their own (`layer_norm_eps`)."""

    def __init__(self, width, layers, heads, layer_norm_eps=1e-5):
        super().__init__()
        self.width = width
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads, layer_norm_eps) for _ in range(layers))

    def forward(self, x, attn_mask=None, is_causal=False):
        for block in self.resblocks:
            x = block(x, attn_mask=attn_mask, is_causal=is_causal)
        return x


class VisionTransformer(nn.Module):
    def __init__(self, resolution, patch_size, width, layers, heads, output_dim):
        super().__init__()
        grid = resolution // patch_size
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros(grid * grid + 1, width))
        self.ln_pre = LayerNorm(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = LayerNorm(width)
        self.proj = nn.Parameter(torch.zeros(width, output_dim))

    def embed_patches(self, images):
        """conv1, whose stride is its kernel, as one matrix product over the flattened patches:
        the same sums, but on an H200 cuDNN ran the fp16 convolution in a quarter of ViT-B/32's
        forward, and the product takes well under a millisecond (bench/encoder_speed.py --profile)."""
        batch, channels, height, width = images.shape
        size = self.conv1.kernel_size[0]
        grid_h, grid_w = height // size, width // size
        patches = images.view(batch, channels, grid_h, size, grid_w, size).permute(0, 2, 4, 1, 3, 5)
        return F.linear(patches.reshape(batch, grid_h * grid_w, channels * size * size), self.conv1.weight.flatten(1))

    def forward(self, images):  # images: [B, 3, H, W] normalised
        patches = self.embed_patches(images.to(self.conv1.weight.dtype))  # [B, grid², W]
        cls = self.class_embedding.expand(patches.shape[0], 1, -1)
        x = torch.cat([cls, patches], dim=1) + self.positional_embedding
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0]) @ self.proj


class CLIP(nn.Module):
    def __init__(self, config: ClipConfig):
        super().__init__()
        self.config = config
        self.visual = VisionTransformer(
            config.image_resolution,
            config.vision_patch_size,
            config.vision_width,
            config.vision_layers,
            config.vision_heads,
            config.embed_dim,
        )
        self.transformer = Transformer(config.text_width, config.text_layers, config.text_heads)
        self.token_embedding = nn.Embedding(config.vocab_size, config.text_width)
        self.positional_embedding = nn.Parameter(torch.zeros(config.context_length, config.text_width))
        self.ln_final = LayerNorm(config.text_width)
        self.text_projection = nn.Parameter(torch.zeros(config.text_width, config.embed_dim))
        self.logit_scale = nn.Parameter(torch.zeros([]))

    @property
    def dtype(self):
        return self.visual.conv1.weight.dtype

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """images: [B, 3, R, R] normalised (see `preprocess`) -> projected CLS embedding [B, D]."""
        return self.visual(images.to(self.dtype))

    def encode_text_tokens(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens: [B, L] ids from `tokenize` -> (token_feats [B, L, D], token_mask [B, L] bool).

        Every position goes through ln_final and text_projection; the mask is True from the
        start token up to and including the end-of-text token. Because the projection acts per
        position, `token_feats[b, eot_index[b]]` is exactly `encode_text(tokens)[b]`.
        """
        x = self.token_embedding(tokens) + self.positional_embedding[: tokens.shape[1]]
        x = self.transformer(x, is_causal=True)  # causal: each position sees only what precedes it
        token_feats = self.ln_final(x) @ self.text_projection
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        token_mask = positions[None, :] <= eot_index(tokens)[:, None]
        return token_feats, token_mask

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: [B, L] ids from `tokenize` -> embedding pooled at the end-of-text token [B, D]."""
        token_feats, _ = self.encode_text_tokens(tokens)
        return token_feats[torch.arange(tokens.shape[0], device=tokens.device), eot_index(tokens)]


def eot_index(tokens: torch.Tensor) -> torch.Tensor:
    """Position of the end-of-text token: it has the largest id in the vocabulary (OpenAI's rule)."""
    return tokens.argmax(dim=-1)


def infer_config(state_dict: dict[str, torch.Tensor]) -> ClipConfig:
    """Read the architecture off the tensor shapes (the checkpoint is the config)."""
    conv1 = state_dict["visual.conv1.weight"]  # [vision_width, 3, patch, patch]
    n_positions = state_dict["visual.positional_embedding"].shape[0]  # grid² + 1
    grid = round((n_positions - 1) ** 0.5)
    return ClipConfig(
        embed_dim=state_dict["text_projection"].shape[1],
        image_resolution=conv1.shape[-1] * grid,
        vision_layers=count_layers(state_dict, "visual.transformer.resblocks."),
        vision_width=conv1.shape[0],
        vision_patch_size=conv1.shape[-1],
        context_length=state_dict["positional_embedding"].shape[0],
        vocab_size=state_dict["token_embedding.weight"].shape[0],
        text_width=state_dict["ln_final.weight"].shape[0],
        text_layers=count_layers(state_dict, "transformer.resblocks."),
    )


def count_layers(state_dict: dict[str, torch.Tensor], prefix: str) -> int:
    return len({key[len(prefix) :].split(".")[0] for key in state_dict if key.startswith(prefix)})
