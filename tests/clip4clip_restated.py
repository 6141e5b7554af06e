"""CLIP4Clip's seqTransf, seqLSTM and tightTransf heads, restated for the parity tests.

Written from reading CLIP4Clip's `modules/modeling.py`, `module_cross.py` and `until_module.py`
(ArrowLuo/CLIP4Clip), in its own style rather than ours: sequence-first tensors through
`nn.MultiheadAttention`, its TF-style LayerNorm (eps inside the square root, 1e-12), additive
-1e6 attention masks, every position through every layer, and the mean pooling it uses. Its
parameter names and shapes are CLIP4Clip's, so `state_dict()` is what a CLIP4Clip checkpoint holds
for these heads. Not used outside tests.
"""

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

MASK_VALUE = -1000000.0  # CLIP4Clip's additive mask for padded positions


class TFLayerNorm(nn.Module):
    def __init__(self, width, eps=1e-12):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(width))
        self.bias = nn.Parameter(torch.zeros(width))
        self.eps = eps

    def forward(self, x):
        mean = x.mean(-1, keepdim=True)
        variance = (x - mean).pow(2).mean(-1, keepdim=True)
        return self.weight * ((x - mean) / torch.sqrt(variance + self.eps)) + self.bias


class Block(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = TFLayerNorm(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, 4 * width))
        self.mlp.add_module("gelu", QuickGELU())
        self.mlp.add_module("c_proj", nn.Linear(4 * width, width))
        self.ln_2 = TFLayerNorm(width)
        self.heads = heads

    def forward(self, x, additive_mask):  # x: [L, N, D]; additive_mask: [N, L, L]
        mask = additive_mask.repeat_interleave(self.heads, dim=0)
        normed = self.ln_1(x)
        x = x + self.attn(normed, normed, normed, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class QuickGELU(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class Stack(nn.Module):
    def __init__(self, width, layers, heads):
        super().__init__()
        self.resblocks = nn.Sequential(*[Block(width, heads) for _ in range(layers)])

    def forward(self, x, additive_mask):
        for block in self.resblocks:
            x = block(x, additive_mask)
        return x


def additive_mask(mask):
    """[N, L] bool -> [N, L, L]: 0 where a key is real, -1e6 where it is padding."""
    extended = (1.0 - mask.float().unsqueeze(1)) * MASK_VALUE
    return extended.expand(-1, mask.shape[1], -1)


def mean_pool(frames, mask):
    weights = mask.float().unsqueeze(-1)
    total = weights.sum(dim=1)
    total[total == 0.0] = 1.0
    return (frames * weights).sum(dim=1) / total


class SeqTransfReference(nn.Module):
    def __init__(self, width, layers=4, positions=77):
        super().__init__()
        self.frame_position_embeddings = nn.Embedding(positions, width)
        self.transformerClip = Stack(width, layers, width // 64)

    def forward(self, text, frames, mask):
        """Cosines [Bt, Bv] of pooled text [Bt, D] and frames [Bv, T, D] with mask [Bv, T]."""
        original = frames
        positions = torch.arange(frames.shape[1]).unsqueeze(0).expand(frames.shape[0], -1)
        hidden = frames + self.frame_position_embeddings(positions)
        hidden = self.transformerClip(hidden.permute(1, 0, 2), additive_mask(mask)).permute(1, 0, 2)
        hidden = hidden + original
        hidden = hidden / hidden.norm(dim=-1, keepdim=True)
        video = mean_pool(hidden, mask)
        video = video / video.norm(dim=-1, keepdim=True)
        text = text / text.norm(dim=-1, keepdim=True)
        return text @ video.T


class SeqLSTMReference(nn.Module):
    """CLIP4Clip builds a frame position table for seqLSTM too (modeling.py L236), and never reads it."""

    def __init__(self, width, positions=77):
        super().__init__()
        self.frame_position_embeddings = nn.Embedding(positions, width)
        self.lstm_visual = nn.LSTM(
            input_size=width, hidden_size=width, batch_first=True, bidirectional=False, num_layers=1
        )

    def forward(self, text, frames, mask):
        """Cosines [Bt, Bv], as CLIP4Clip's _loose_similarity computes them for seqLSTM."""
        original = frames
        packed = pack_padded_sequence(frames, torch.sum(mask, dim=-1).cpu(), batch_first=True, enforce_sorted=False)
        hidden, _ = self.lstm_visual(packed)
        hidden, _ = pad_packed_sequence(hidden, batch_first=True)
        hidden = torch.cat((hidden, original[:, hidden.size(1) :, ...].contiguous()), dim=1)
        hidden = hidden + original
        hidden = hidden / hidden.norm(dim=-1, keepdim=True)
        video = mean_pool(hidden, mask)
        video = video / video.norm(dim=-1, keepdim=True)
        text = text / text.norm(dim=-1, keepdim=True)
        return text @ video.T


class CrossEmbeddings(nn.Module):
    def __init__(self, width, positions):
        super().__init__()
        self.position_embeddings = nn.Embedding(positions, width)

    def forward(self, tokens):
        positions = torch.arange(tokens.shape[1]).unsqueeze(0).expand(tokens.shape[0], -1)
        return tokens + self.position_embeddings(positions)


class CrossPooler(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.ln_pool = TFLayerNorm(width)
        self.dense = nn.Linear(width, width)
        self.activation = QuickGELU()

    def forward(self, hidden):
        return self.activation(self.dense(self.ln_pool(hidden)[:, 0]))


class Cross(nn.Module):
    def __init__(self, width, layers, positions):
        super().__init__()
        self.embeddings = CrossEmbeddings(width, positions)
        self.transformer = Stack(width, layers, width // 64)
        self.pooler = CrossPooler(width)


class TightTransfReference(nn.Module):
    def __init__(self, width, layers=4, positions=77):
        super().__init__()
        self.cross = Cross(width, layers, positions)
        self.similarity_dense = nn.Linear(width, 1)

    def forward(self, text, frames, mask):
        """Logits [Bt, Bv] of every pooled text [Bt, D] with every video [Bv, T, D], pair by pair
        as CLIP4Clip's _cross_similarity repeats them."""
        n_texts, n_videos = len(text), len(frames)
        text_tokens = text.unsqueeze(1).repeat_interleave(n_videos, 0)
        video_tokens = frames.repeat(n_texts, 1, 1)
        concat_mask = torch.cat([torch.ones(len(text_tokens), 1, dtype=torch.bool), mask.repeat(n_texts, 1)], dim=1)
        hidden = self.cross.embeddings(torch.cat([text_tokens, video_tokens], dim=1))
        hidden = self.cross.transformer(hidden.permute(1, 0, 2), additive_mask(concat_mask)).permute(1, 0, 2)
        return self.similarity_dense(self.cross.pooler(hidden)).squeeze(-1).view(n_texts, n_videos)
