"""Retrieval heads over cached CLIP features (CLIP stays frozen; only these train).

Inputs everywhere: `frame_feats` [B, T, D] unnormalised frame embeddings, `frame_mask` [B, T] bool
(True = a real frame), `text_feats` [Bt, D] unnormalised pooled text embeddings, and for
tightTransf with token input, `token_feats` [Bt, L, D] + `token_mask` [Bt, L].

Every head answers the same three calls:
- `video_index(frame_feats, frame_mask)`: what is kept per video for search, a tuple of tensors
  with one row per video. Query-independent heads (meanP, seqTransf, mlpScore) keep one unit
  vector per video; the cross-encoder (tightTransf) keeps the frames themselves.
- `score_matrix(text, text_mask, *video_index, logit_scale=None)`: scores [Bt, Bv] of every text
  against every video. Text is [Bt, L, D] with a mask [Bt, L]: the pooled embedding (L = 1) or
  token features. Query-independent heads score cosines, times CLIP's temperature when training
  passes one; tightTransf's similarity output is already a logit (CLIP4Clip scales it by nothing).
- `pair_scores(text, text_mask, *video_index)`: [P] scores of text i against video i only (the
  order-sensitivity analysis scores each query against its own video, changed).

Every head also says what it is, as class attributes the stages read (they never test a head's name):
- `text_input`: "pooled" (one vector per caption) or "tokens" (tightTransf may read every token);
- `parameter_free`: nothing to train, so it is evaluated zero-shot without a checkpoint;
- `scores_are_logits`: its scores are logits already (tightTransf's output layer), so no temperature
  scales them, in training or in DSL; else they are cosines, scaled by the temperature;
- `order_free`: its score is a sum in sorted order over the frames, so no permutation of a video's
  frames moves it, to the last bit (evaluate.py checks this on every evaluation);
- `needs_clip_text`: it starts from CLIP's first text blocks (`clip_text_targets`);
- `indexable`: query-independent, one vector per video, so search.py can index the videos;
- `demo`: the settings run_all.sh's demo trains it with (small data, a tiny CLIP, the CPU), or None.
Adding a head: one class here and one entry in HEADS (docs/adding-a-head.md).

Parameter names, shapes and LayerNorm eps follow CLIP4Clip (`frame_position_embeddings`,
`transformerClip.resblocks.{i}.*`, `lstm_visual.*`, `cross.*`, `similarity_dense`; position tables of
CLIP's 77 rows where the head fits in them), so a CLIP4Clip head's weights load strictly (`load_head_weights`).
"""

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from clip_vendor.model import HEAD_WIDTH, LayerNorm, QuickGELU, Transformer
from heads.frame_selection import SelectFrames

EPS = 1e-6  # masked (all-zero) frames must not divide by zero when normalised
N_HEAD_LAYERS = 4  # CLIP4Clip's 4 layers, initialised from the first 4 of CLIP's text transformer
LAYER_NORM_EPS = 1e-12  # CLIP4Clip's heads use its TF-style LayerNorm, eps 1e-12 (CLIP's own: 1e-5)
CLIP_TEMPERATURE = 100.0  # CLIP's logit scale: what cosines are multiplied by, unless learned
# ln of the temperature: starts at ln 100 (CLIP's), and a learnable one is kept in TempMe's
# bounds [0.1, ln 100] so it can neither grow past CLIP's nor collapse to a flat softmax
LOG_SCALE_MIN, LOG_SCALE_MAX = 0.1, math.log(CLIP_TEMPERATURE)
# tightTransf's (caption, video) pairs per forward: they bound its activation memory. Training
# checkpoints each forward and keeps fewer, so that a batch of 128 + reversals fits in 24 GB.
PAIR_BATCH, TRAIN_PAIR_BATCH = 8192, 2048


@dataclass(frozen=True)
class HeadShape:
    """What a head is built from; a checkpoint's config holds it."""

    width: int  # D of the cached features
    frames: int  # T: frames per video the head reads
    context_length: int = 77  # CLIP's text positions: the size of CLIP4Clip's position tables
    text_input: str = "pooled"  # tightTransf: "pooled" or "tokens"
    pair_batch: int = PAIR_BATCH  # tightTransf: (caption, video) pairs per forward

    def positions(self, text_tokens: int = 0) -> int:
        """Position-table rows: CLIP's context length, as CLIP4Clip sizes them, unless the positions
        used (`text_tokens` on the text side, then the frames) need more."""
        return max(self.context_length, text_tokens + self.frames)


@dataclass(frozen=True)
class DemoSettings:
    """How run_all.sh's demo (a tiny CLIP on the CPU) trains a head: many short epochs."""

    frames: int
    epochs: int = 30
    batch_size: int = 32
    learn_temp: bool = True

    def train_args(self) -> list[str]:
        """As train_head.py flags (frames alone for a parameter-free head: it is evaluated, not trained)."""
        flags = ["--frames", str(self.frames), "--epochs", str(self.epochs), "--batch-size", str(self.batch_size)]
        return flags + (["--learn-temp"] if self.learn_temp else [])


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(EPS)


def cosine_score_matrix(text: torch.Tensor, video_emb: torch.Tensor, logit_scale: torch.Tensor | None) -> torch.Tensor:
    """Query-independent scoring: the unit pooled text [Bt, 1, D] against unit video vectors [Bv, D],
    times `logit_scale` if given (applied to the text vectors, before the product)."""
    text_emb = unit(text[:, 0])
    if logit_scale is not None:
        text_emb = logit_scale * text_emb
    return text_emb @ video_emb.T


def cosine_pair_scores(text: torch.Tensor, video_emb: torch.Tensor) -> torch.Tensor:
    """Text i against video i: the unit pooled texts [P, 1, D] and unit video vectors [P, D] -> [P] cosines."""
    return (unit(text[:, 0]) * video_emb).sum(dim=-1)


def order_free_sum(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Sum along `dim` in sorted order: floating-point addition depends on order, and the sum of a
    video's frames must be bit-identical to the sum of its reversal's, or Hard's ties would hide."""
    return x.sort(dim=dim).values.sum(dim=dim)


def masked_mean(frame_feats: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
    weights = frame_mask.to(frame_feats.dtype).unsqueeze(-1)
    return order_free_sum(frame_feats * weights, dim=1) / weights.sum(dim=1).clamp_min(1.0)


def key_padding_mask(mask: torch.Tensor) -> torch.Tensor:
    """[B, T] bool -> [B, 1, 1, T] for attention: every query may look at every real position."""
    return mask[:, None, None, :]


class QueryIndependent(nn.Module):
    """What the heads that embed a video without the query share: pooled text, cosine scores (times
    the temperature in training), one unit vector per video that search.py can index."""

    text_input = "pooled"
    parameter_free = False
    scores_are_logits = False
    order_free = False
    needs_clip_text = False
    indexable = True
    demo = None

    def score_matrix(self, text, text_mask, video_emb, logit_scale=None):
        return cosine_score_matrix(text, video_emb, logit_scale)

    def pair_scores(self, text, text_mask, video_emb):
        return cosine_pair_scores(text, video_emb)


class MeanP(QueryIndependent):
    """Normalise each frame, masked mean, normalise: blind to frame order by construction, to the
    last bit (see order_free_sum)."""

    parameter_free = True
    order_free = True
    demo = DemoSettings(frames=8)  # zero-shot in the demo: only its frame count applies

    def __init__(self, shape: HeadShape):
        super().__init__()

    def video_index(self, frame_feats, frame_mask):
        return (unit(masked_mean(unit(frame_feats), frame_mask)),)


class SeqTransf(QueryIndependent):
    """Frames + position embeddings -> 4 non-causal CLIP blocks -> + input (residual) -> meanP."""

    needs_clip_text = True
    demo = DemoSettings(frames=8, epochs=60)

    def __init__(self, shape: HeadShape):
        super().__init__()
        self.frame_position_embeddings = nn.Embedding(shape.positions(), shape.width)
        self.transformerClip = head_transformer(shape.width)

    def clip_text_targets(self) -> tuple[nn.Module, nn.Embedding]:
        """(blocks, position table) that start as CLIP's first text blocks and text positions."""
        return self.transformerClip, self.frame_position_embeddings

    def video_index(self, frame_feats, frame_mask):
        positions = torch.arange(frame_feats.shape[1], device=frame_feats.device)
        hidden = frame_feats + self.frame_position_embeddings(positions)
        hidden = self.transformerClip(hidden, attn_mask=key_padding_mask(frame_mask))
        return (unit(masked_mean(unit(hidden + frame_feats), frame_mask)),)


class SeqLSTM(QueryIndependent):
    """CLIP4Clip's LSTM head: the real frames of each video through one LSTM, in time order (padding
    never enters it), + input (residual) -> meanP."""

    demo = DemoSettings(frames=8)

    def __init__(self, shape: HeadShape):
        super().__init__()
        self.lstm_visual = nn.LSTM(shape.width, shape.width, num_layers=1, batch_first=True)

    def video_index(self, frame_feats, frame_mask):
        lengths = frame_mask.sum(dim=1).clamp_min(1).cpu()  # a video with no real frame: its padding, masked below
        packed = pack_padded_sequence(frame_feats, lengths, batch_first=True, enforce_sorted=False)
        hidden, _ = self.lstm_visual(packed)
        hidden, _ = pad_packed_sequence(hidden, batch_first=True, total_length=frame_feats.shape[1])
        return (unit(masked_mean(unit(hidden + frame_feats), frame_mask)),)


class MlpScore(QueryIndependent):
    """AdaCLIP's query-independent aggregation: an MLP scores each frame, masked softmax over
    frames, weighted sum. The last layer starts at zero, so training starts from meanP."""

    order_free = True
    demo = DemoSettings(frames=8)

    def __init__(self, shape: HeadShape):
        super().__init__()
        width = shape.width
        self.frame_scorer = nn.Sequential(nn.Linear(width, width), QuickGELU(), nn.Linear(width, 1))
        nn.init.zeros_(self.frame_scorer[2].weight)
        nn.init.zeros_(self.frame_scorer[2].bias)

    def video_index(self, frame_feats, frame_mask):
        frames = unit(frame_feats)
        logits = self.frame_scorer(frames).squeeze(-1).masked_fill(~frame_mask, float("-inf"))
        exp_logits = (logits - logits.max(dim=1, keepdim=True).values).exp()  # softmax, summed order-free
        weights = (exp_logits / order_free_sum(exp_logits, dim=1).unsqueeze(1)).unsqueeze(-1)
        return (unit(order_free_sum(weights * frames, dim=1)),)


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
        self.ln_pool = LayerNorm(width, eps=LAYER_NORM_EPS)
        self.dense = nn.Linear(width, width)
        self.activation = QuickGELU()

    def forward(self, hidden):
        return self.activation(self.dense(self.ln_pool(hidden)[:, 0]))


class CrossModel(nn.Module):
    def __init__(self, width, n_positions, dropout):
        super().__init__()
        self.embeddings = CrossEmbeddings(width, n_positions, dropout)
        self.transformer = head_transformer(width)
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

    parameter_free = False
    scores_are_logits = True  # similarity_dense's output is the logit: CLIP4Clip scales it by nothing
    order_free = False
    needs_clip_text = True
    indexable = False  # it needs the query: every video is scored per query
    demo = DemoSettings(frames=4, batch_size=16, learn_temp=False)

    def __init__(self, shape: HeadShape, dropout: float = 0.1):
        super().__init__()
        self.text_input = shape.text_input
        self.pair_batch = shape.pair_batch
        text_tokens = 1 if shape.text_input == "pooled" else shape.context_length
        self.cross = CrossModel(shape.width, shape.positions(text_tokens), dropout)
        self.similarity_dense = nn.Linear(shape.width, 1)

    def clip_text_targets(self) -> tuple[nn.Module, nn.Embedding]:
        return self.cross.transformer, self.cross.embeddings.position_embeddings

    def pair_scores(self, text_tokens, text_mask, frame_feats, frame_mask):
        """Score text i against video i for each row: [P, L, D] + [P, T, D] -> [P]."""
        tokens = torch.cat([text_tokens, frame_feats], dim=1)
        mask = torch.cat([text_mask, frame_mask], dim=1)
        return self.similarity_dense(self.cross(tokens, mask)).squeeze(-1)

    def video_index(self, frame_feats, frame_mask):
        """A cross-encoder cannot summarise a video without the query: it keeps the frames."""
        return frame_feats, frame_mask

    def score_matrix(self, text, text_mask, frame_feats, frame_mask, logit_scale=None):
        """Every text against every video: [Bt, L, D] x [Bv, T, D] -> [Bt, Bv], `pair_batch` pairs
        per forward. When gradients are needed and the pairs span several forwards, each forward
        is checkpointed: its activations are recomputed in the backward pass instead of kept, so
        memory follows `pair_batch`, not the square of the batch. `logit_scale` is not used:
        similarity_dense's output is the logit."""
        n_videos = len(frame_feats)
        texts_per_forward = max(1, self.pair_batch // max(n_videos, 1))
        checkpointed = torch.is_grad_enabled() and len(text) > texts_per_forward
        rows = []
        for start in range(0, len(text), texts_per_forward):
            chunk = (text[start : start + texts_per_forward], text_mask[start : start + texts_per_forward])
            if checkpointed:
                rows.append(
                    torch.utils.checkpoint.checkpoint(
                        self.chunk_scores, *chunk, frame_feats, frame_mask, use_reentrant=False
                    )
                )
            else:
                rows.append(self.chunk_scores(*chunk, frame_feats, frame_mask))
        return torch.cat(rows) if rows else frame_feats.new_zeros((0, n_videos))

    def chunk_scores(self, text, text_mask, frame_feats, frame_mask):
        """Every text of a chunk against every video, in one forward."""
        n_texts, n_videos = len(text), len(frame_feats)
        texts = text.repeat_interleave(n_videos, 0), text_mask.repeat_interleave(n_videos, 0)
        videos = frame_feats.repeat(n_texts, 1, 1), frame_mask.repeat(n_texts, 1)
        return self.pair_scores(*texts, *videos).view(n_texts, n_videos)


HEADS = {"meanP": MeanP, "seqTransf": SeqTransf, "seqLSTM": SeqLSTM, "tightTransf": TightTransf, "mlpScore": MlpScore}
DEFAULT_HEADS = ("seqTransf", "tightTransf", "mlpScore")  # what run_all.sh trains unless --heads names others
ZERO_SHOT_HEADS = tuple(name for name, head in HEADS.items() if head.parameter_free)  # evaluated without training


def head_transformer(width: int) -> Transformer:
    """CLIP4Clip's 4 blocks at the cached width, in attention heads of CLIP's 64 dimensions: a width
    that does not split into them is refused (every released CLIP and SigLIP width does)."""
    if width < HEAD_WIDTH or width % HEAD_WIDTH:
        raise ValueError(
            f"the features are {width} wide, which does not split into attention heads of {HEAD_WIDTH}; "
            f"this head needs a backbone whose embedding width is a multiple of {HEAD_WIDTH}"
        )
    return Transformer(width, N_HEAD_LAYERS, width // HEAD_WIDTH, LAYER_NORM_EPS)


def build_head(name: str, shape: HeadShape, select_frames: int = 0) -> nn.Module:
    """An untrained head of `name` (seqTransf and tightTransf then start from CLIP's text tower, see
    `init_from_clip_text`). With `select_frames` K > 0, the head sees only the K frames a learned
    scorer picks (heads/frame_selection.py)."""
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}: choose one of {', '.join(sorted(HEADS))}")
    if not select_frames:
        return HEADS[name](shape)
    return SelectFrames(HEADS[name](replace(shape, frames=select_frames)), shape.width, select_frames)


def base_head(head: nn.Module) -> nn.Module:
    """The head itself, without a frame selector in front (CLIP4Clip's weights are its weights)."""
    return head.head if isinstance(head, SelectFrames) else head


def init_from_clip_text(head: nn.Module, clip_state: dict[str, torch.Tensor]) -> None:
    """Copy the checkpoint's first 4 text blocks and text positional embedding (OpenAI names)
    into a head that `needs_clip_text`, as CLIP4Clip initialises them."""
    blocks, positions = base_head(head).clip_text_targets()
    text_width = clip_state["ln_final.weight"].shape[0]
    head_width = blocks.width
    if text_width != head_width:
        raise ValueError(
            f"CLIP text width {text_width} differs from the embedding width {head_width}: "
            "the head cannot start from the text transformer"
        )
    positional = clip_state["positional_embedding"]  # [context_length, width]
    weights = {
        key[len("transformer.") :]: value
        for key, value in clip_state.items()
        if key.startswith("transformer.resblocks.") and int(key.split(".")[2]) < N_HEAD_LAYERS
    }
    blocks.load_state_dict({k: v.float() for k, v in weights.items()}, strict=True)
    with torch.no_grad():
        # rows past the text's context length (long token input + frames) start at zero
        positions.weight.zero_()
        n_copied = min(positions.weight.shape[0], positional.shape[0])
        positions.weight[:n_copied] = positional[:n_copied].float()


def clip_logit_scale(
    learnable: bool, initial: float = CLIP_TEMPERATURE, device: str | torch.device = "cpu"
) -> nn.Parameter:
    """ln of the temperature: `initial` (CLIP's 100 by default), fixed or learnable from there; a
    value outside TempMe's bounds (see `clamp_log_scale_`), or not a number, is refused. Made on
    `device`: a parameter moved there with `.to` would be a copy, not a leaf an optimiser can step."""
    if not (math.isfinite(initial) and math.exp(LOG_SCALE_MIN) <= initial <= CLIP_TEMPERATURE):
        low, high = math.exp(LOG_SCALE_MIN), CLIP_TEMPERATURE
        raise ValueError(f"must lie in [e^{LOG_SCALE_MIN}, {high:g}] = [{low:.3f}, {high:g}]")
    return nn.Parameter(torch.tensor(min(math.log(initial), LOG_SCALE_MAX), device=device), requires_grad=learnable)


@torch.no_grad()
def clamp_log_scale_(log_scale: nn.Parameter) -> None:
    log_scale.clamp_(LOG_SCALE_MIN, LOG_SCALE_MAX)


def load_head_weights(head: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load `head`'s weights from `state_dict`: a checkpoint's "head" dict, or a whole CLIP4Clip
    model's state dict (its other keys, clip.* and the rest, are not read). A missing key or a
    shape that differs is refused, naming it: the weights belong to another kind or width of head."""
    wanted = head.state_dict()
    missing = [key for key in wanted if key not in state_dict]
    if missing:
        raise ValueError(
            f"{source} holds no {missing[0]!r} ({len(missing)} of {len(wanted)} keys missing): "
            f"not weights of a {type(head).__name__} head"
        )
    for key, value in wanted.items():
        if state_dict[key].shape != value.shape:
            raise ValueError(
                f"{source}: {key} has shape {tuple(state_dict[key].shape)}, this head needs "
                f"{tuple(value.shape)} (another width or position count)"
            )
    head.load_state_dict({key: state_dict[key].float() for key in wanted}, strict=True)
