import itertools

import numpy as np
import pytest

from evaluation.retrieval_metrics import binary_accuracy, retrieval_metrics
from evaluation.scoring import directions


def brute_force(scores, gold, ks=(1, 5, 10)):
    """Enumerate every ordering of the candidates that is sorted by score (all tie orders) and take
    the rank of the first correct candidate in each: expected = mean, bounds = min and max. The
    stable rank is the ordering with ties kept in column order."""
    per_query = {"stable": [], "expected": [], "optimistic": [], "pessimistic": [], **{k: [] for k in ks}}
    for row, gold_row in zip(scores, gold, strict=True):
        ranks = []
        for order in itertools.permutations(range(len(row))):
            if all(row[order[i]] >= row[order[i + 1]] for i in range(len(order) - 1)):
                ranks.append(next(position + 1 for position, c in enumerate(order) if gold_row[c]))
        stable_order = np.argsort(-row, kind="stable")
        per_query["stable"].append(next(position + 1 for position, c in enumerate(stable_order) if gold_row[c]))
        per_query["expected"].append(np.mean(ranks))
        per_query["optimistic"].append(min(ranks))
        per_query["pessimistic"].append(max(ranks))
        for k in ks:
            per_query[k].append(np.mean([rank <= k for rank in ranks]))
    return {key: np.array(values, dtype=np.float64) for key, values in per_query.items()}


def summary(ranks):
    return {
        "R@1": 100 * np.mean(ranks <= 1),
        "R@5": 100 * np.mean(ranks <= 5),
        "R@10": 100 * np.mean(ranks <= 10),
        "MdR": np.median(ranks),
        "MnR": np.mean(ranks),
    }


def check_against_brute_force(scores, gold):
    metrics, per_query = retrieval_metrics(scores, gold)
    reference = brute_force(scores, gold)
    np.testing.assert_allclose(per_query["stable_rank"], reference["stable"])
    np.testing.assert_allclose(per_query["expected_rank"], reference["expected"])
    np.testing.assert_allclose(per_query["optimistic_rank"], reference["optimistic"])
    np.testing.assert_allclose(per_query["pessimistic_rank"], reference["pessimistic"])
    for key, value in summary(reference["stable"]).items():
        assert metrics[key] == pytest.approx(value)
    for name in ("optimistic", "pessimistic"):
        for key, value in summary(reference[name]).items():
            assert metrics[name][key] == pytest.approx(value)
    for k in (1, 5, 10):
        np.testing.assert_allclose(per_query[f"expected_recall@{k}"], reference[k])
        assert metrics["expected"][f"R@{k}"] == pytest.approx(100 * reference[k].mean())
    assert metrics["expected"]["MnR"] == pytest.approx(reference["expected"].mean())
    assert metrics["expected"]["MdR"] == pytest.approx(np.median(reference["expected"]))
    assert metrics["n_queries"] == len(scores)
    tied = [bool(((row == row[g].max()) & ~g).any()) for row, g in zip(scores, gold, strict=True)]
    assert metrics["n_tied"] == sum(tied)


@pytest.mark.parametrize("seed", range(6))
def test_text_to_video_metrics_match_brute_force_with_ties(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 3, size=(9, 7)).astype(float)  # few distinct values: many ties
    gold = np.zeros_like(scores, dtype=bool)
    gold[np.arange(9), rng.integers(0, 7, size=9)] = True
    check_against_brute_force(scores, gold)


@pytest.mark.parametrize("seed", range(6))
def test_video_to_text_metrics_with_several_correct_captions_match_brute_force(seed):
    rng = np.random.default_rng(100 + seed)
    scores = rng.integers(0, 3, size=(6, 7)).astype(float)
    gold = rng.random((6, 7)) < 0.3
    gold[np.arange(6), rng.integers(0, 7, size=6)] = True  # at least one correct caption per video
    check_against_brute_force(scores, gold)


def test_tie_free_metrics_match_brute_force_and_have_no_ties():
    rng = np.random.default_rng(7)
    scores = rng.standard_normal((8, 7))
    gold = np.eye(8, 7, dtype=bool)
    gold[7, 0] = True
    check_against_brute_force(scores, gold)
    metrics, _ = retrieval_metrics(scores, gold)
    assert metrics["n_tied"] == 0
    assert metrics["expected"] == {key: metrics[key] for key in metrics["expected"]}


def clip4clip_compute_metrics(sim):
    """CLIP4Clip's metrics.compute_metrics, restated: row i's target is column i; the rank is where
    the target's score first appears in the row sorted descending (0-based, hence the + 1)."""
    sorted_negated = np.sort(-sim, axis=1)
    target = np.diag(-sim)[:, None]
    ind = np.where(sorted_negated - target == 0)[1]
    return {
        "R@1": 100 * np.sum(ind == 0) / len(ind),
        "R@5": 100 * np.sum(ind < 5) / len(ind),
        "R@10": 100 * np.sum(ind < 10) / len(ind),
        "MdR": np.median(ind) + 1,
        "MnR": np.mean(ind) + 1,
    }


@pytest.mark.parametrize("size", [5, 30, 101])
def test_equal_to_clip4clip_compute_metrics_on_tie_free_matrices(size):
    sim = np.random.default_rng(size).standard_normal((size, size)) + 2 * np.eye(size)
    ours, _ = retrieval_metrics(sim, np.eye(size, dtype=bool))
    theirs = clip4clip_compute_metrics(sim)
    for key in theirs:
        assert ours[key] == pytest.approx(theirs[key])
    ours_v2t, _ = retrieval_metrics(sim.T, np.eye(size, dtype=bool))
    for key, value in clip4clip_compute_metrics(sim.T).items():
        assert ours_v2t[key] == pytest.approx(value)


def test_order_blind_scores_tie_every_hard_query():
    # a head blind to order scores V and flip(V) alike: columns 0/1 and 2/3 are such pairs
    scores = np.array([[0.9, 0.9, 0.1, 0.1], [0.9, 0.9, 0.1, 0.1], [0.2, 0.2, 0.8, 0.8], [0.2, 0.2, 0.8, 0.8]])
    gold = np.eye(4, dtype=bool)
    metrics, per_query = retrieval_metrics(scores, gold)
    assert metrics["n_tied"] == 4
    assert metrics["expected"]["R@1"] == 50.0
    assert metrics["optimistic"]["R@1"] == 100.0 and metrics["pessimistic"]["R@1"] == 0.0
    assert metrics["R@1"] == 50.0  # the stable order favours whichever comes first: half the queries
    np.testing.assert_array_equal(per_query["expected_rank"], [1.5] * 4)


def test_query_without_a_correct_candidate_is_an_error():
    with pytest.raises(ValueError, match="query 1 has no correct candidate"):
        retrieval_metrics(np.zeros((2, 3)), np.array([[True, False, False], [False, False, False]]))


def test_binary_accuracy_counts_ties_as_half():
    result = binary_accuracy([0.3, -0.1, 0.0, 0.0, 2.0])
    assert result == {"accuracy": pytest.approx(100 * (1 + 0 + 0.5 + 0.5 + 1) / 5), "n_pairs": 5, "n_tied": 2}


def clip4clip_video_to_text(scores, caption_video):
    """CLIP4Clip's multi-caption video->text, restated: the [captions, videos] matrix is cut per
    video into [n_videos, max_captions, n_videos] padded with -inf (main_task_retrieval), then
    tensor_video_to_text_sim takes the max over each video's captions and transposes."""
    n_videos = scores.shape[1]
    per_video = [scores[caption_video == v] for v in range(n_videos)]
    longest = max(len(block) for block in per_video)
    padded = np.stack(
        [np.concatenate([block, np.full((longest - len(block), n_videos), -np.inf)]) for block in per_video]
    )
    return padded.max(axis=1).T  # [video query, caption set]


def multi_caption_case(seed, integer_scores):
    rng = np.random.default_rng(seed)
    caption_video = np.concatenate([[v] * int(rng.integers(1, 5)) for v in range(6)])
    if integer_scores:
        scores = rng.integers(0, 3, size=(len(caption_video), 6)).astype(float)  # many ties
    else:
        scores = rng.standard_normal((len(caption_video), 6))
    return scores, caption_video[:, None] == np.arange(6)[None, :]


@pytest.mark.parametrize("seed", range(4))
def test_video_to_text_ranks_caption_sets_as_clip4clip_does(seed):
    scores, gold = multi_caption_case(seed, integer_scores=False)
    video_scores, video_gold = directions(scores, gold)["v2t"]
    np.testing.assert_array_equal(video_scores, clip4clip_video_to_text(scores, gold.argmax(axis=1)))
    ours, _ = retrieval_metrics(video_scores, video_gold)
    theirs = clip4clip_compute_metrics(clip4clip_video_to_text(scores, gold.argmax(axis=1)))
    for key, value in theirs.items():
        assert ours[key] == pytest.approx(value)
        assert ours["expected"][key] == pytest.approx(value)  # no ties here: every convention agrees
    per_caption, _ = retrieval_metrics(scores.T, gold.T)
    assert ours["R@1"] == per_caption["R@1"]  # R@1 is the same either way; R@5 and beyond are not in general


@pytest.mark.parametrize("seed", range(4))
def test_video_to_text_with_ties_matches_a_brute_force_over_caption_sets(seed):
    scores, gold = multi_caption_case(seed, integer_scores=True)
    set_scores = np.array(
        [[max(scores[c, v] for c in range(len(scores)) if gold[c, g]) for g in range(6)] for v in range(6)]
    )
    video_scores, video_gold = directions(scores, gold)["v2t"]
    np.testing.assert_array_equal(video_scores, set_scores)
    check_against_brute_force(video_scores, video_gold)


def test_metrics_refuse_non_finite_scores_naming_how_many_queries():
    scores = np.array([[0.9, 0.1], [np.nan, 0.2], [0.3, np.inf]])
    with pytest.raises(ValueError, match="2 of 3 queries have non-finite scores"):
        retrieval_metrics(scores, np.eye(3, 2, dtype=bool) | np.array([[0, 0], [0, 0], [1, 0]], dtype=bool))
    with pytest.raises(ValueError, match="1 of 2 binary margins are not finite"):
        binary_accuracy([0.5, np.nan])
