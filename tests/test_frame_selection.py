"""Learned frame selection (AdaCLIP's Hard-Top-k): it finds the frames that carry a video's content,
keeps them in time order, and selects the mirror frames of a reversed video."""

import json
from dataclasses import asdict

import pytest
import torch

import clip_vendor
import evaluate
import train_head
from fixtures.synthetic_cache import write_sparse_content_cache
from heads.architectures import HeadShape, build_head
from heads.frame_selection import PerturbedTopK, SelectFrames
from heads.loaded_split import flip_frames
from infra.cli import StageError
from make_demo_data import write_tiny_clip

WIDTH, FRAMES, K = 64, 10, 4  # 64: the transformer heads split it into one attention head


def videos(seed=0):
    generator = torch.Generator().manual_seed(seed)
    frames = torch.randn(3, FRAMES, WIDTH, generator=generator)
    mask = torch.ones(3, FRAMES, dtype=torch.bool)
    mask[1, 7:] = False  # 7 real frames
    mask[2, 3:] = False  # 3 real frames: fewer than K
    frames[~mask] = 0.0
    return frames, mask


def selector(name="meanP", seed=1):
    torch.manual_seed(seed)
    head = build_head(name, HeadShape(WIDTH, FRAMES), select_frames=K)
    for param in head.frame_scorer.parameters():  # a scorer that ranks frames decisively
        torch.nn.init.normal_(param, std=0.5)
    return head.eval()


def test_selected_frames_are_the_top_scored_ones_in_time_order_and_never_padding():
    head = selector()
    frames, mask = videos()
    with torch.no_grad():
        selected, selected_mask = head.select(frames, mask)
        scores = head.scores(frames, mask)
    for video in range(3):
        real = int(mask[video].sum())
        expected = sorted(scores[video, :real].topk(min(K, real)).indices.tolist())
        assert torch.equal(selected[video, : len(expected)], frames[video, expected])
        assert selected_mask[video].tolist() == [True] * len(expected) + [False] * (K - len(expected))


def test_a_reversed_video_selects_the_mirror_frames_in_reverse_order():
    frames, mask = videos()
    reversed_frames = flip_frames(frames, mask, torch.ones(3, dtype=torch.bool))
    for name in ("meanP", "seqTransf", "mlpScore"):
        head = selector(name)
        with torch.no_grad():
            forward, forward_mask = head.select(frames, mask)
            backward, backward_mask = head.select(reversed_frames, mask)
        assert torch.equal(backward, flip_frames(forward, forward_mask, torch.ones(3, dtype=torch.bool)))
        assert torch.equal(backward_mask, forward_mask)
    text = torch.randn(2, 1, WIDTH)
    ones = torch.ones(2, 1, dtype=torch.bool)
    for name in ("meanP", "mlpScore"):  # order-free heads: V and flip(V) tie to the last bit, as Hard needs
        head = selector(name)
        with torch.no_grad():
            assert torch.equal(
                head.score_matrix(text, ones, *head.video_index(frames, mask)),
                head.score_matrix(text, ones, *head.video_index(reversed_frames, mask)),
            )


def test_the_perturbed_top_k_is_a_selection_whose_gradient_raises_the_frame_asked_for():
    scores = torch.tensor([[3.0, 0.0, 2.0, -1.0, 1.0]], requires_grad=True)
    torch.manual_seed(0)
    selection = PerturbedTopK.apply(scores, 2, 500, 0.5)
    assert torch.allclose(selection.sum(dim=-1), torch.ones(1, 2))  # each row is a distribution over frames
    assert selection[0, 0].argmax() == 0 and selection[0, 1].argmax() == 2  # the top two, in time order
    (selection[0, 1, 4]).backward()  # more of frame 4 in the second slot: raise its score, lower its rivals'
    assert scores.grad[0, 4] > 0 and scores.grad[0, 2] < 0


@pytest.fixture(scope="module")
def sparse_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("sparse")
    clip = root / "clip.pt"
    write_tiny_clip(clip, seed=0, matrix_std=0.05)
    write_sparse_content_cache(
        root / "cache",
        clip,
        asdict(clip_vendor.load(clip)[0].config),
        n_train=256,
        n_valid=64,
        n_test=64,
        n_frames=16,
        content_frames=3,
    )
    return root / "cache", clip


def train_selecting_meanp(cache, out, select_frames, *settings):
    train_head.main(
        ["--cache", str(cache), "--head", "meanP", "--out", str(out), "--frames", "16", "--device", "cpu"]
        + ["--select-frames", str(select_frames), *settings]
    )


def test_learned_selection_of_k_frames_beats_k_evenly_spaced_ones_where_few_frames_carry_the_content(
    sparse_cache, tmp_path
):
    cache, clip = sparse_cache
    evaluate.main(["--cache", str(cache), "--head", "meanP", "--frames", str(K), "--out", str(tmp_path / "even.json")])
    train_selecting_meanp(cache, tmp_path / "run", K, "--epochs", "4", "--batch-size", "32", "--lr", "3e-3")
    evaluate.main(
        ["--cache", str(cache), "--ckpt", str(tmp_path / "run" / "best.pt"), "--out", str(tmp_path / "selected.json")]
    )
    even, selected = (
        json.loads((tmp_path / name).read_text())["all"]["t2v"]["expected"]["R@1"]
        for name in ("even.json", "selected.json")
    )
    # measured: 59 evenly spaced against 97 learned (3 content frames in 16; K = 4)
    assert selected >= even + 25, (selected, even)
    checkpoint = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert checkpoint["config"]["select_frames"] == K and "frame_scorer.0.weight" in checkpoint["head"]


def test_selecting_as_many_frames_as_the_video_has_is_refused(sparse_cache, tmp_path):
    cache, _ = sparse_cache
    with pytest.raises(StageError, match="--select-frames 16: the head reads 16 frames per video at most"):
        train_selecting_meanp(cache, tmp_path / "run", 16)
    assert isinstance(build_head("tightTransf", HeadShape(WIDTH, FRAMES), select_frames=K), SelectFrames)
