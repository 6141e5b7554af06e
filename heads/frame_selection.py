"""Learned frame selection on cached features: AdaCLIP's Hard-Top-k, for any head.

AdaCLIP (Hu et al., "AdaCLIP: Towards Pragmatic Multimodal Video Retrieval", ACM MM 2023) keeps
the K most informative of a video's T frames, chosen by a small learned scorer, and aggregates
only those. Choosing is not differentiable, so training uses the perturbed top-k of Cordonnier et
al. ("Differentiable Patch Selection for Image Recognition", CVPR 2021), after Berthet et al.
("Learning with Differentiable Perturbed Optimizers", NeurIPS 2020): the hard top-k of the scores
plus Gaussian noise, averaged over samples, is a smooth selection whose gradient is estimated from
the same samples. Evaluation takes the hard top-k.

The scorer reads each frame on its own (no position), and the selected frames are kept in time
order, so the time-reversed video selects exactly the mirror frames, in reverse order: order-free
heads still score V and flip(V) alike to the last bit, and Hard stays honest.
"""

import torch
import torch.nn.functional as F
from torch import nn

from clip_vendor.model import QuickGELU

N_SAMPLES = 100  # perturbed top-k: noise samples per selection
SIGMA = 0.05  # and the noise's scale
PADDING_SCORE = -1e4  # padded frames: selected only when a video has fewer real frames than K


class PerturbedTopK(torch.autograd.Function):
    """scores [B, T] -> the expected selection [B, K, T] under noise: row k is the k-th chosen frame
    in time order, as a distribution over frames. The backward is the perturbed-optimiser estimate
    E[selection x noise] / sigma, contracted with the incoming gradient."""

    @staticmethod
    def forward(ctx, scores, k, n_samples, sigma):
        noise = torch.randn((scores.shape[0], n_samples, scores.shape[1]), device=scores.device, dtype=scores.dtype)
        chosen = (scores[:, None, :] + sigma * noise).topk(k, dim=-1).indices.sort(dim=-1).values  # [B, S, K]
        selections = F.one_hot(chosen, scores.shape[1]).to(scores.dtype)  # [B, S, K, T]
        ctx.save_for_backward(selections, noise)
        ctx.sigma = sigma
        return selections.mean(dim=1)

    @staticmethod
    def backward(ctx, grad):  # grad [B, K, T]
        selections, noise = ctx.saved_tensors
        weight = torch.einsum("bkt,bskt->bs", grad, selections)  # each sample's selection, weighed by grad
        grad_scores = torch.einsum("bs,bsu->bu", weight, noise) / (noise.shape[1] * ctx.sigma)
        return grad_scores, None, None, None


class SelectFrames(nn.Module):
    """`head` fed the K frames of each video that a learned scorer ranks highest, in time order.
    Answers the heads' calls and says what the head says (heads/architectures.py), so any head can
    select frames. Choosing reads each frame alone and keeps time order, so an order-free head stays
    order-free; the scorer has weights, so none is parameter-free."""

    parameter_free = False

    def __init__(self, head: nn.Module, width: int, k: int):
        super().__init__()
        self.head = head
        self.k = k
        self.frame_scorer = nn.Sequential(nn.Linear(width, width), QuickGELU(), nn.Linear(width, 1))

    # what it says as its head says it
    text_input = property(lambda self: self.head.text_input)
    scores_are_logits = property(lambda self: self.head.scores_are_logits)
    order_free = property(lambda self: self.head.order_free)
    needs_clip_text = property(lambda self: self.head.needs_clip_text)
    indexable = property(lambda self: self.head.indexable)

    def scores(self, frame_feats: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        scores = self.frame_scorer(F.normalize(frame_feats, dim=-1)).squeeze(-1)
        return scores.masked_fill(~frame_mask, PADDING_SCORE)

    def select(self, frame_feats: torch.Tensor, frame_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, T, D] frames and [B, T] mask -> the K selected ones, [B, K, D] and [B, K], in time order."""
        k = min(self.k, frame_feats.shape[1])
        scores = self.scores(frame_feats, frame_mask)
        if self.training and torch.is_grad_enabled():
            selection = PerturbedTopK.apply(scores, k, N_SAMPLES, SIGMA)  # [B, K, T], rows sum to 1
            return selection @ frame_feats, (selection @ frame_mask[..., None].to(selection.dtype)).squeeze(-1) > 0.5
        chosen = scores.topk(k, dim=-1).indices.sort(dim=-1).values  # the hard top-k, in time order
        selected_feats = frame_feats.gather(1, chosen[..., None].expand(-1, -1, frame_feats.shape[2]))
        return selected_feats, frame_mask.gather(1, chosen)

    def video_index(self, frame_feats, frame_mask):
        return self.head.video_index(*self.select(frame_feats, frame_mask))

    def score_matrix(self, *text_and_index, logit_scale=None):
        return self.head.score_matrix(*text_and_index, logit_scale=logit_scale)

    def pair_scores(self, *text_and_index):
        return self.head.pair_scores(*text_and_index)
