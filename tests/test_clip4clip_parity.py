"""Our seqTransf, seqLSTM and tightTransf against CLIP4Clip's own computation with identical weights,
and CLIP4Clip's state dicts loading strictly into our heads."""

import pytest
import torch

from heads.architectures import (
    LOG_SCALE_MAX,
    LOG_SCALE_MIN,
    HeadShape,
    build_head,
    clamp_log_scale_,
    load_head_weights,
)
from tests.clip4clip_restated import SeqLSTMReference, SeqTransfReference, TightTransfReference

WIDTH, FRAMES = 128, 8  # two attention heads of 64
SHAPE = HeadShape(WIDTH, FRAMES)
REFERENCES = [("seqTransf", SeqTransfReference), ("seqLSTM", SeqLSTMReference), ("tightTransf", TightTransfReference)]


def randomised(module, seed):
    """Every parameter drawn at random (LayerNorm gains around 1), so no weight is a trivial 0 or 1."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            is_layer_norm_gain = "ln_" in name and name.endswith("weight")
            param.copy_(1.0 + 0.1 * noise if is_layer_norm_gain else 0.1 * noise)
    return module.eval()


def videos(seed=0, n_videos=6, zero_padding=True):
    """Frames with padding in two videos. Our cache pads with zeros; CLIP4Clip's padded frames carry
    CLIP's features of blank images instead, and its seqLSTM normalises them (0 / 0 for zeros) before
    masking them out, so it is compared on padding that is not zero."""
    generator = torch.Generator().manual_seed(seed)
    frames = torch.randn(n_videos, FRAMES, WIDTH, generator=generator)
    mask = torch.ones(n_videos, FRAMES, dtype=torch.bool)
    mask[1, 5:] = False
    mask[4, 2:] = False
    if zero_padding:
        frames[~mask] = 0.0
    return frames, mask, torch.randn(5, WIDTH, generator=generator)


def our_scores(head, text, frames, mask):
    ones = torch.ones(len(text), 1, dtype=torch.bool)
    with torch.no_grad():
        return head.score_matrix(text[:, None], ones, *head.video_index(frames, mask))


@pytest.mark.parametrize("name,reference_class", REFERENCES)
def test_heads_match_clip4clips_computation_with_identical_weights(name, reference_class):
    head = randomised(build_head(name, SHAPE), seed=3)
    reference = reference_class(WIDTH).eval()
    # CLIP4Clip's names and shapes (77-row positions); its seqLSTM also holds a position table it never reads
    loaded = reference.load_state_dict(head.state_dict(), strict=False)
    assert loaded.missing_keys == (["frame_position_embeddings.weight"] if name == "seqLSTM" else [])
    assert loaded.unexpected_keys == []
    frames, mask, text = videos(zero_padding=name != "seqLSTM")
    with torch.no_grad():
        expected = reference(text, frames, mask)
    # measured, as a share of the largest score: about 6e-7 (seqTransf cosines) and 1e-6 (tightTransf
    # logits, float32 noise through 4 layers) with CLIP4Clip's LayerNorm eps 1e-12; with torch's
    # default eps 1e-5 they were 5e-6 and 7e-6, which this bound rejects
    gap = (our_scores(head, text, frames, mask) - expected).abs().max().item()
    assert gap <= 2e-6 * expected.abs().max().item()


@pytest.mark.parametrize("name,reference_class", REFERENCES)
def test_a_clip4clip_state_dict_loads_strictly(name, reference_class):
    reference = randomised(reference_class(WIDTH), seed=5)
    # a whole CLIP4Clip model's state dict: the head's keys among the backbone's
    state = {
        "clip.logit_scale": torch.tensor(4.6),
        "clip.visual.conv1.weight": torch.zeros(4, 3, 2, 2),
        **reference.state_dict(),
    }
    head = build_head(name, SHAPE)
    load_head_weights(head, state, "pytorch_model.bin.4")
    frames, mask, text = videos(seed=1, zero_padding=name != "seqLSTM")
    with torch.no_grad():
        expected = reference(text, frames, mask)
    gap = (our_scores(head.eval(), text, frames, mask) - expected).abs().max().item()
    assert gap <= 2e-6 * expected.abs().max().item()


def test_weights_of_another_kind_or_width_are_refused_by_name():
    seq_state = SeqTransfReference(WIDTH).state_dict()
    with pytest.raises(ValueError, match="holds no 'cross.embeddings.position_embeddings.weight'.*TightTransf"):
        load_head_weights(build_head("tightTransf", SHAPE), seq_state, "seq.bin")
    with pytest.raises(
        ValueError,
        match=r"frame_position_embeddings.weight has shape \(77, 128\), this head needs "
        r"\(77, 64\)",
    ):
        load_head_weights(build_head("seqTransf", HeadShape(64, FRAMES)), seq_state, "seq.bin")


def test_position_tables_have_clips_77_rows_where_they_fit():
    assert build_head("seqTransf", HeadShape(64, 12)).frame_position_embeddings.num_embeddings == 77
    assert build_head("tightTransf", HeadShape(64, 12)).cross.embeddings.position_embeddings.num_embeddings == 77
    tokens = build_head("tightTransf", HeadShape(64, 12, text_input="tokens"))
    assert tokens.cross.embeddings.position_embeddings.num_embeddings == 77 + 12  # 77 text tokens, then frames


def test_learnable_temperature_is_clamped_from_both_sides():
    log_scale = torch.nn.Parameter(torch.tensor(-3.0))
    clamp_log_scale_(log_scale)
    assert log_scale.item() == pytest.approx(LOG_SCALE_MIN) == pytest.approx(0.1)
    log_scale.data.fill_(9.0)
    clamp_log_scale_(log_scale)
    assert log_scale.item() == pytest.approx(LOG_SCALE_MAX) == pytest.approx(4.6052, abs=1e-4)
