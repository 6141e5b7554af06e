"""Retrieval heads over cached CLIP features (CLIP stays frozen; only these train).

Inputs everywhere: `frame_feats` [B, T, D] unnormalised frame embeddings, `frame_mask` [B, T] bool
(True = a real frame), `text_feats` [Bt, D] unnormalised pooled text embeddings, and for
tightTransf with token input, `token_feats` [Bt, L, D] + `token_mask` [Bt, L].

- meanP, seqTransf, mlpScore are query-independent: `encode_video` gives one unit vector per
  video and the score is a cosine with the unit text vector.
- tightTransf is a cross-encoder: `pair_scores` runs it on every (text, video) pair.

Parameter names follow CLIP4Clip (`frame_position_embeddings`, `transformerClip.resblocks.{i}.*`,
`cross.*`, `similarity_dense`) so weights move between the two code bases.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from clip_vendor.model import LayerNorm, QuickGELU, Transformer

EPS = 1e-6             # masked (all-zero) frames must not divide by zero when normalised
N_HEAD_LAYERS = 4      # CLIP4Clip's 4 layers, initialised from the first 4 of CLIP's text transformer
MAX_LOGIT_SCALE = 100.0


def unit(x):
    return x / x.norm(dim=-1, keepdim=True).clamp_min(EPS)


def order_free_sum(x, dim):
    """Sum along `dim` in sorted order: floating-point addition depends on order, and the sum of a
    video's frames must be bit-identical to the sum of its reversal's, or Hard's ties would hide."""
    return x.sort(dim=dim).values.sum(dim=dim)


def masked_mean(frame_feats, frame_mask):
    weights = frame_mask.to(frame_feats.dtype).unsqueeze(-1)
    return order_free_sum(frame_feats * weights, dim=1) / weights.sum(dim=1).clamp_min(1.0)


def key_padding_mask(mask):
    """[B, T] bool -> [B, 1, 1, T] for attention: every query may look at every real position."""
    return mask[:, None, None, :]


class MeanP(nn.Module):
    """Normalise each frame, masked mean, normalise: blind to frame order by construction, to the
    last bit (see order_free_sum)."""

    query_independent = True

    def encode_video(self, frame_feats, frame_mask):
        return unit(masked_mean(unit(frame_feats), frame_mask))


class SeqTransf(nn.Module):
    """Frames + position embeddings -> 4 non-causal CLIP blocks -> + input (residual) -> meanP."""

    query_independent = True

    def __init__(self, width, n_positions):
        super().__init__()
        self.frame_position_embeddings = nn.Embedding(n_positions, width)
        self.transformerClip = Transformer(width, N_HEAD_LAYERS, width // 64 or 1)

    def encode_video(self, frame_feats, frame_mask):
        positions = torch.arange(frame_feats.shape[1], device=frame_feats.device)
        hidden = frame_feats + self.frame_position_embeddings(positions)
        hidden = self.transformerClip(hidden, attn_mask=key_padding_mask(frame_mask))
        return unit(masked_mean(unit(hidden + frame_feats), frame_mask))


class MlpScore(nn.Module):
    """AdaCLIP's query-independent aggregation: an MLP scores each frame, masked softmax over
    frames, weighted sum. The last layer starts at zero, so training starts from meanP."""

    query_independent = True

    def __init__(self, width):
        super().__init__()
        self.frame_scorer = nn.Sequential(nn.Linear(width, width), QuickGELU(), nn.Linear(width, 1))
        nn.init.zeros_(self.frame_scorer[2].weight)
        nn.init.zeros_(self.frame_scorer[2].bias)

    def encode_video(self, frame_feats, frame_mask):
        frames = unit(frame_feats)
        logits = self.frame_scorer(frames).squeeze(-1).masked_fill(~frame_mask, float("-inf"))
        exp_logits = (logits - logits.max(dim=1, keepdim=True).values).exp()  # softmax, summed order-free
        weights = (exp_logits / order_free_sum(exp_logits, dim=1).unsqueeze(1)).unsqueeze(-1)
        return unit(order_free_sum(weights * frames, dim=1))


class CrossEmbeddings(nn.Module):
    def __init__(self, width, n_positions, dropout):
        super().__init__()
        self.position_embeddings = nn.Embedding(n_positions, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tokens):
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        return self.dropout(tokens + self.position_embeddings(positions))


class CrossPooler(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.ln_pool = LayerNorm(width)
        self.dense = nn.Linear(width, width)
        self.activation = QuickGELU()

    def forward(self, hidden):
        return self.activation(self.dense(self.ln_pool(hidden)[:, 0]))


class CrossModel(nn.Module):
    def __init__(self, width, n_positions, dropout):
        super().__init__()
        self.embeddings = CrossEmbeddings(width, n_positions, dropout)
        self.transformer = Transformer(width, N_HEAD_LAYERS, width // 64 or 1)
        self.pooler = CrossPooler(width)

    def forward(self, tokens, mask):
        hidden = self.embeddings(tokens)
        blocks = self.transformer.resblocks
        for block in blocks[:-1]:
            hidden = block(hidden, attn_mask=key_padding_mask(mask))
        # the score reads token 0 only: the last layer needs token 0 as its only query
        last = blocks[-1]
        query = hidden[:, :1]
        query = query + attend_one_query(last, query, hidden, mask)
        query = query + last.mlp(last.ln_2(query))
        return self.pooler(query)


def attend_one_query(block, query, hidden, mask):
    """block.attn(ln_1(.)) for the first position only, keys and values from every position."""
    attn = block.attn
    batch, n_tokens, width = hidden.shape
    normed = block.ln_1(hidden)
    weight, bias = attn.in_proj_weight, attn.in_proj_bias
    q = F.linear(normed[:, :1], weight[:width], bias[:width])
    kv = F.linear(normed, weight[width:], bias[width:])
    head_dim = width // attn.heads
    q = q.view(batch, 1, attn.heads, head_dim).transpose(1, 2)
    k, v = kv.view(batch, n_tokens, 2, attn.heads, head_dim).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_padding_mask(mask))
    return attn.out_proj(out.transpose(1, 2).reshape(batch, 1, width))


class TightTransf(nn.Module):
    """CLIP4Clip's cross-encoder: [text token(s); frame tokens] + positions (+ dropout) -> 4 CLIP
    blocks -> LayerNorm, token 0 -> dense + QuickGELU -> Linear(D, 1)."""

    query_independent = False

    def __init__(self, width, n_positions, text_input="pooled", dropout=0.1):
        super().__init__()
        self.text_input = text_input
        self.cross = CrossModel(width, n_positions, dropout)
        self.similarity_dense = nn.Linear(width, 1)

    def pair_scores(self, text_tokens, text_mask, frame_feats, frame_mask):
        """Score text i against video i for each row: [P, L, D] + [P, T, D] -> [P]."""
        tokens = torch.cat([text_tokens, frame_feats], dim=1)
        mask = torch.cat([text_mask, frame_mask], dim=1)
        return self.similarity_dense(self.cross(tokens, mask)).squeeze(-1)

    def score_matrix(self, text_tokens, text_mask, frame_feats, frame_mask):
        """Every text against every video: [Bt, L, D] x [Bv, T, D] -> [Bt, Bv]."""
        n_texts, n_videos = len(text_tokens), len(frame_feats)
        texts = text_tokens.repeat_interleave(n_videos, 0), text_mask.repeat_interleave(n_videos, 0)
        videos = frame_feats.repeat(n_texts, 1, 1), frame_mask.repeat(n_texts, 1)
        return self.pair_scores(*texts, *videos).view(n_texts, n_videos)


HEADS = {"meanP": MeanP, "seqTransf": SeqTransf, "tightTransf": TightTransf, "mlpScore": MlpScore}


def build_head(name, width, n_positions, text_input="pooled"):
    """An untrained head of `name`; for training, seqTransf and tightTransf then start from CLIP's
    text tower through `init_from_clip_text`."""
    if name == "meanP":
        return MeanP()
    if name == "mlpScore":
        return MlpScore(width)
    if name == "seqTransf":
        return SeqTransf(width, n_positions)
    return TightTransf(width, n_positions, text_input)


def init_from_clip_text(head, clip_state):
    """Copy the checkpoint's first 4 text blocks and text positional embedding (OpenAI names)
    into a seqTransf or tightTransf head, as CLIP4Clip initialises them."""
    text_width = clip_state["ln_final.weight"].shape[0]
    head_width = head_width_of(head)
    if text_width != head_width:
        raise ValueError(f"CLIP text width {text_width} differs from the embedding width {head_width}: "
                         "the head cannot start from the text transformer")
    positional = clip_state["positional_embedding"]  # [context_length, width]
    if isinstance(head, SeqTransf):
        blocks, positions = head.transformerClip, head.frame_position_embeddings
    else:
        blocks, positions = head.cross.transformer, head.cross.embeddings.position_embeddings
    weights = {key[len("transformer."):]: value for key, value in clip_state.items()
               if key.startswith("transformer.resblocks.") and int(key.split(".")[2]) < N_HEAD_LAYERS}
    blocks.load_state_dict({k: v.float() for k, v in weights.items()}, strict=True)
    with torch.no_grad():
        # rows past the text's context length (long token input + frames) start at zero
        positions.weight.zero_()
        n_copied = min(positions.weight.shape[0], positional.shape[0])
        positions.weight[:n_copied] = positional[:n_copied].float()


def head_width_of(head):
    transformer = head.transformerClip if isinstance(head, SeqTransf) else head.cross.transformer
    return transformer.width


def clip_logit_scale(learnable):
    """CLIP's temperature: fixed at 100, or learnable from ln 100 and clamped to at most ln 100."""
    return nn.Parameter(torch.tensor(math.log(MAX_LOGIT_SCALE)), requires_grad=learnable)
