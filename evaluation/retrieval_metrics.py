"""Retrieval metrics with ties made visible.

For each query, `scores[q]` holds one score per candidate and `gold[q]` marks its correct
candidates (text->video: exactly one; video->text: any of the video's captions counts). Let m be
the best gold score, a the number of wrong candidates scoring above m, k the wrong candidates
scoring exactly m, and g the golds scoring exactly m. Ranks count from 1:

- stable rank: candidates sorted by score, descending, ties kept in candidate order (the order of
  the score matrix's columns or rows, which each caller documents): a + (wrong candidates tied at m
  that come before the first tied gold) + 1;
- optimistic rank: a + 1 (ties broken in the query's favour); pessimistic: a + k + 1;
- expected rank: the mean over all orders of the tied items, exactly a + 1 + k / (g + 1), and the
  expected R@K = P(a + X + 1 <= K) where X, the wrong items placed before the first gold among the
  g + k tied ones, has P(X >= j) = prod_{i<j} (k - i) / (g + k - i).

R@K are percentages; MdR is `np.median` of ranks (the mean of the two middle ones for an even
count), MnR their mean, as in CLIP4Clip. The expected MdR is the median of the expected ranks.
"""

import numpy as np

RECALL_KS = (1, 5, 10)


def rank_counts(scores: np.ndarray, gold: np.ndarray) -> dict[str, np.ndarray]:
    """scores [n_queries, n_candidates] float, gold same shape bool -> dict of per-query arrays:
    above (a), tied_wrong (k), tied_gold (g), stable_rank."""
    scores = np.asarray(scores, dtype=np.float64)
    gold = np.asarray(gold, dtype=bool)
    if scores.shape != gold.shape:
        raise ValueError(f"scores {scores.shape} and gold {gold.shape} differ in shape")
    # NaN compares false with everything, so a NaN target would tie nothing and rank first: refuse
    non_finite = ~np.isfinite(scores).all(axis=1)
    if non_finite.any():
        raise ValueError(
            f"{int(non_finite.sum())} of {len(scores)} queries have non-finite scores (NaN or Inf), "
            f"the first is query {int(np.argmax(non_finite))}: no metric is computed from them"
        )
    if not gold.any(axis=1).all():
        raise ValueError(f"query {int(np.argmin(gold.any(axis=1)))} has no correct candidate")
    best_gold = np.where(gold, scores, -np.inf).max(axis=1, keepdims=True)
    wrong = ~gold
    above = (wrong & (scores > best_gold)).sum(axis=1)
    at_best = scores == best_gold
    tied_wrong = (wrong & at_best).sum(axis=1)
    tied_gold = (gold & at_best).sum(axis=1)
    first_tied_gold = np.argmax(gold & at_best, axis=1)
    columns = np.arange(scores.shape[1])
    wrong_before = (wrong & at_best & (columns[None, :] < first_tied_gold[:, None])).sum(axis=1)
    return {"above": above, "tied_wrong": tied_wrong, "tied_gold": tied_gold, "stable_rank": above + wrong_before + 1}


def expected_recall(above: np.ndarray, tied_wrong: np.ndarray, tied_gold: np.ndarray, k: int) -> np.ndarray:
    """P(rank <= k) per query over all orders of the tied items (see the module docstring)."""
    recall = np.zeros(len(above))
    for q, (a, n_wrong, n_gold) in enumerate(zip(above, tied_wrong, tied_gold, strict=True)):
        slots = k - a - 1  # wrong tied items that may come before the first gold with rank still <= k
        if slots < 0:
            continue
        if slots >= n_wrong:
            recall[q] = 1.0
            continue
        p_at_least = np.prod([(n_wrong - i) / (n_gold + n_wrong - i) for i in range(slots + 1)])
        recall[q] = 1.0 - p_at_least
    return recall


def summary(ranks: np.ndarray) -> dict[str, float]:
    """Per-query ranks (or, for expected values, per-query recall hits given separately) -> metrics."""
    ranks = np.asarray(ranks, dtype=np.float64)
    metrics = {f"R@{k}": float(100.0 * np.mean(ranks <= k)) for k in RECALL_KS}
    metrics["MdR"] = float(np.median(ranks))
    metrics["MnR"] = float(np.mean(ranks))
    return metrics


def retrieval_metrics(scores: np.ndarray, gold: np.ndarray) -> tuple[dict, dict[str, np.ndarray]]:
    """All metrics of one setting and direction; also returns the per-query arrays behind them."""
    counts = rank_counts(scores, gold)
    a, k, g = counts["above"], counts["tied_wrong"], counts["tied_gold"]
    per_query = {
        "stable_rank": counts["stable_rank"],
        "expected_rank": a + 1 + k / (g + 1),
        "optimistic_rank": a + 1,
        "pessimistic_rank": a + k + 1,
        **{f"expected_recall@{K}": expected_recall(a, k, g, K) for K in RECALL_KS},
    }
    return metrics_from_per_query(per_query), per_query


def metrics_from_per_query(per_query: dict[str, np.ndarray]) -> dict:
    """The metrics of one setting and direction from its per-query values: the one place their
    formulas are written (evaluate.py computes them with it, results.py checks a file with it)."""
    optimistic, pessimistic = per_query["optimistic_rank"], per_query["pessimistic_rank"]
    expected_rank = per_query["expected_rank"]
    expected = {f"R@{K}": float(100.0 * np.mean(per_query[f"expected_recall@{K}"])) for K in RECALL_KS}
    expected.update(MdR=float(np.median(expected_rank)), MnR=float(np.mean(expected_rank)))
    return {
        **summary(per_query["stable_rank"]),
        "expected": expected,
        "optimistic": summary(optimistic),
        "pessimistic": summary(pessimistic),
        "n_queries": int(len(expected_rank)),
        "n_tied": int((pessimistic > optimistic).sum()),  # the target ties a wrong candidate: k > 0
    }


def binary_credit(margins: np.ndarray) -> np.ndarray:
    """Per comparison, score(correct) - score(wrong) -> credit: 1 when > 0, one half when tied, else 0."""
    return np.where(margins > 0, 1.0, np.where(margins == 0, 0.5, 0.0))


def binary_accuracy(margins: np.ndarray) -> dict:
    """margins: per-comparison score(correct) - score(wrong); the mean credit (`binary_credit`) in %."""
    margins = np.asarray(margins, dtype=np.float64)
    if not np.isfinite(margins).all():
        raise ValueError(f"{int((~np.isfinite(margins)).sum())} of {len(margins)} binary margins are not finite")
    return {
        "accuracy": float(100.0 * binary_credit(margins).mean()),
        "n_pairs": int(len(margins)),
        "n_tied": int((margins == 0).sum()),
    }
