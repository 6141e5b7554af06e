"""The invariants every head must hold, run over every head of HEADS by what it says it is (a new
head is tested here without an edit): order-free heads score V and flip(V) alike to the last bit,
order-aware ones apart; padding changes nothing; heads that start from CLIP's text layers hold them."""

import numpy as np
import pytest
import torch

import clip_vendor
from corpus.sampling import frame_subset
from heads.architectures import HEADS, N_HEAD_LAYERS, HeadShape, build_head, clip_logit_scale, init_from_clip_text
from heads.loaded_split import flip_frames

WIDTH, N_FRAMES = 64, 6
ORDER_FREE = [name for name, head in HEADS.items() if head.order_free]
ORDER_AWARE = [name for name, head in HEADS.items() if not head.order_free]
FROM_CLIP_TEXT = [name for name, head in HEADS.items() if head.needs_clip_text]


@pytest.fixture(scope="module")
def clip_state(demo_data):
    return clip_vendor.read_state_dict(demo_data / "clip_tiny.pt")


def make_head(name, clip_state):
    torch.manual_seed(0)
    head = build_head(name, HeadShape(WIDTH, N_FRAMES))
    if head.needs_clip_text:
        init_from_clip_text(head, clip_state)
    return head.eval()


def random_videos(n_videos=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    frames = 3 * torch.randn(n_videos, N_FRAMES, WIDTH, generator=generator)
    mask = torch.ones(n_videos, N_FRAMES, dtype=torch.bool)
    mask[1, 4:] = False  # a short video: 4 real frames, 2 padded
    mask[3, 2:] = False
    frames[~mask] = 0.0
    return frames, mask


def scores(head, text, frames, mask):
    ones = torch.ones(len(text), 1, dtype=torch.bool)
    return head.score_matrix(text[:, None], ones, *head.video_index(frames, mask))


def test_meanp_equals_the_formula():
    frames, mask = random_videos()
    text = torch.randn(4, WIDTH)
    head = build_head("meanP", HeadShape(WIDTH, N_FRAMES))
    expected = np.zeros((4, len(frames)))
    for v in range(len(frames)):
        real = frames[v][mask[v]].numpy().astype(np.float64)
        pooled = (real / np.linalg.norm(real, axis=1, keepdims=True)).mean(axis=0)
        pooled /= np.linalg.norm(pooled)
        for t in range(4):
            query = text[t].numpy().astype(np.float64)
            expected[t, v] = query @ pooled / np.linalg.norm(query)
    np.testing.assert_allclose(scores(head, text, frames, mask).numpy(), expected, atol=1e-6)


def flipped(frames, mask):
    return flip_frames(frames, mask, torch.ones(len(frames), dtype=torch.bool))


def test_flip_reverses_real_frames_and_keeps_padding_last():
    frames, mask = random_videos()
    reversed_frames = flipped(frames, mask)
    for v in range(len(frames)):
        n_real = int(mask[v].sum())
        assert torch.equal(reversed_frames[v, :n_real], frames[v, :n_real].flip(0))
        assert torch.equal(reversed_frames[v, n_real:], frames[v, n_real:])


@pytest.mark.parametrize("name", ORDER_FREE)
def test_order_free_heads_score_a_flipped_video_identically(clip_state, name):
    frames, mask = random_videos()
    text = torch.randn(4, WIDTH)
    head = make_head(name, clip_state)
    with torch.no_grad():
        assert torch.equal(scores(head, text, frames, mask), scores(head, text, flipped(frames, mask), mask))


@pytest.mark.parametrize("name", ORDER_AWARE)
def test_order_aware_heads_score_flipped_video_differently(clip_state, name):
    frames, mask = random_videos()
    text = torch.randn(4, WIDTH)
    head = make_head(name, clip_state)
    with torch.no_grad():
        forward, backward = scores(head, text, frames, mask), scores(head, text, flipped(frames, mask), mask)
    assert (forward - backward).abs().min() > 1e-6


@pytest.mark.parametrize("name", list(HEADS))
def test_padded_frames_change_nothing(clip_state, name):
    frames, mask = random_videos()
    head = make_head(name, clip_state)
    text = torch.randn(2, WIDTH)
    with torch.no_grad():
        padded = scores(head, text, frames[1:2], mask[1:2])
        garbage = frames[1:2].clone()
        garbage[0, 4:] = 100.0  # padded positions hold nonsense: the mask must hide it
        assert torch.allclose(scores(head, text, garbage, mask[1:2]), padded, atol=1e-6)


@pytest.mark.parametrize("name", FROM_CLIP_TEXT)
def test_initial_layers_equal_the_checkpoints_text_layers(clip_state, name):
    blocks, positions = make_head(name, clip_state).clip_text_targets()
    block_state = blocks.state_dict()
    text_keys = {
        key[len("transformer.") :]: value
        for key, value in clip_state.items()
        if key.startswith("transformer.resblocks.") and int(key.split(".")[2]) < N_HEAD_LAYERS
    }
    assert block_state.keys() == text_keys.keys()
    for key, value in text_keys.items():
        assert torch.equal(block_state[key], value.float()), key
    assert torch.equal(positions.weight, clip_state["positional_embedding"][: len(positions.weight)].float())


def test_parameter_names_follow_clip4clip(clip_state):
    seq = set(make_head("seqTransf", clip_state).state_dict())
    tight = set(make_head("tightTransf", clip_state).state_dict())
    assert "frame_position_embeddings.weight" in seq
    assert "transformerClip.resblocks.3.attn.in_proj_weight" in seq
    assert {
        "cross.embeddings.position_embeddings.weight",
        "cross.pooler.ln_pool.weight",
        "cross.pooler.dense.weight",
        "similarity_dense.weight",
        "similarity_dense.bias",
        "cross.transformer.resblocks.0.mlp.c_fc.weight",
    } <= tight


def test_tighttransf_last_layer_shortcut_equals_full_layer(clip_state):
    head = make_head("tightTransf", clip_state)
    frames, mask = random_videos()
    text = torch.randn(len(frames), 1, WIDTH)
    tokens, token_mask = (
        torch.cat([text, frames], 1),
        torch.cat([torch.ones(len(frames), 1, dtype=torch.bool), mask], 1),
    )
    with torch.no_grad():
        shortcut = head.pair_scores(text, token_mask[:, :1], frames, mask)
        hidden = head.cross.embeddings(tokens)
        for block in head.cross.transformer.resblocks:  # every position through every layer
            hidden = block(hidden, attn_mask=token_mask[:, None, None, :])
        full = head.similarity_dense(head.cross.pooler(hidden)).squeeze(-1)
    torch.testing.assert_close(shortcut, full, atol=1e-5, rtol=1e-5)


def test_mlpscore_starts_as_meanp(clip_state):
    frames, mask = random_videos()
    text = torch.randn(3, WIDTH)
    with torch.no_grad():
        torch.testing.assert_close(
            scores(make_head("mlpScore", clip_state), text, frames, mask),
            scores(make_head("meanP", clip_state), text, frames, mask),
        )


def test_text_layer_init_refuses_a_width_mismatch(clip_state):
    with pytest.raises(ValueError, match="text width 64 differs from the embedding width 128"):
        init_from_clip_text(build_head("seqTransf", HeadShape(128, N_FRAMES)), clip_state)


@pytest.mark.parametrize("n_cached", [3, 12, 13, 24, 25])
@pytest.mark.parametrize("n_wanted", [4, 12, 16])
def test_frame_subset_is_even_and_mirror_symmetric(n_cached, n_wanted):
    keep = frame_subset(n_cached, n_wanted)
    assert len(keep) == min(n_cached, n_wanted)
    assert [n_cached - 1 - i for i in reversed(keep)] == keep


def test_tighttransf_chunked_checkpointed_scores_equal_the_unchunked_ones_with_gradients(clip_state):
    """Bounded memory must not change the numbers: the loss and every gradient of a batch scored in
    checkpointed chunks of 7 pairs equal those of one forward over all 25 pairs (dropout off)."""
    frames, mask = random_videos()
    generator = torch.Generator().manual_seed(1)
    text = torch.randn(len(frames), 1, WIDTH, generator=generator)
    text_mask = torch.ones(len(frames), 1, dtype=torch.bool)
    results = []
    for pair_batch in (10_000, 7):
        head = make_head("tightTransf", clip_state)  # eval mode: no dropout
        head.pair_batch = pair_batch
        logits = head.score_matrix(text, text_mask, *head.video_index(frames, mask))
        targets = torch.arange(len(logits))
        loss = (
            torch.nn.functional.cross_entropy(logits, targets) + torch.nn.functional.cross_entropy(logits.T, targets)
        ) / 2
        loss.backward()
        results.append((loss.detach(), {name: p.grad.clone() for name, p in head.named_parameters()}))
    (whole_loss, whole_grads), (chunked_loss, chunked_grads) = results
    torch.testing.assert_close(chunked_loss, whole_loss, atol=1e-6, rtol=1e-6)
    for name, grad in whole_grads.items():
        torch.testing.assert_close(chunked_grads[name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_learnable_temperature_is_made_on_the_training_device():
    # Found on the first GPU run: made on the CPU and moved with .to("cuda"), the temperature was a
    # non-leaf copy, which AdamW refuses, so every --learn-temp run on a GPU failed. "meta" stands
    # for any device other than the CPU: there too .to() copies.
    moved = torch.nn.Parameter(torch.tensor(4.6), requires_grad=True).to("meta")
    with pytest.raises(ValueError, match="non-leaf"):
        torch.optim.AdamW([moved])
    log_scale = clip_logit_scale(True, 100.0, "meta")
    assert log_scale.device.type == "meta" and log_scale.is_leaf and log_scale.requires_grad
    torch.optim.AdamW([log_scale])  # what train_head.py builds
    assert not clip_logit_scale(False, 50.0, "meta").requires_grad


@pytest.mark.parametrize("width", [32, 96])
def test_a_width_that_does_not_split_into_heads_of_64_is_refused_naming_it(width):
    """Any backbone's width builds the heads (a SigLIP so400m's 1152 among them); one that CLIP's
    64-wide attention heads cannot split is refused by name, not a division by zero."""
    for name in ("seqTransf", "tightTransf"):
        with pytest.raises(ValueError, match=f"the features are {width} wide"):
            build_head(name, HeadShape(width, N_FRAMES))
    assert build_head("seqTransf", HeadShape(1152, N_FRAMES)).transformerClip.resblocks[0].attn.heads == 18
