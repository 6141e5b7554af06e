"""Uncertainty for retrieval metrics: query-level bootstrap CIs, paired comparisons, Holm-Bonferroni.

Every statistic starts from per-query values that evaluate.py saved: expected recall@K (0..1) and
expected rank. A metric is a statistic over queries: R@K = 100 * mean(recall@K), MdR = median(rank),
MnR = mean(rank). CIs are percentile bootstraps over queries (scipy.stats.bootstrap, 1000 seeded
resamples by default); a paired comparison resamples the same queries for both methods, and its
two-sided p-value comes from a paired sign-flip permutation test (scipy.stats.permutation_test).
"""

from collections.abc import Callable

import numpy as np
from scipy import stats

N_RESAMPLES = 1000
MIN_RESAMPLES = 1000  # fewer leave a 95% percentile CI's tails (25 resamples each) to chance
CONFIDENCE = 0.95


def percent_mean(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """100 x the mean along `axis`: R@K in % from per-query recalls (0..1)."""
    return 100.0 * np.mean(values, axis=axis)


METRICS = {  # metric -> (per-query column, statistic over queries along `axis`)
    "R@1": ("expected_recall@1", percent_mean),
    "R@5": ("expected_recall@5", percent_mean),
    "R@10": ("expected_recall@10", percent_mean),
    "MdR": ("expected_rank", lambda x, axis=-1: np.median(x, axis=axis)),
    "MnR": ("expected_rank", lambda x, axis=-1: np.mean(x, axis=axis)),
}


def bootstrap_ci(
    values: np.ndarray, statistic: Callable, seed: int = 0, n_resamples: int = N_RESAMPLES
) -> tuple[float, float]:
    """Percentile bootstrap CI of statistic(values) over the queries."""
    result = stats.bootstrap(
        (np.asarray(values, dtype=np.float64),),
        statistic,
        n_resamples=n_resamples,
        confidence_level=CONFIDENCE,
        method="percentile",
        vectorized=True,
        random_state=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def paired_difference(
    values_a: np.ndarray, values_b: np.ndarray, statistic: Callable, seed: int = 0, n_resamples: int = N_RESAMPLES
) -> tuple[float, float, float, float]:
    """statistic(a) - statistic(b) on the same queries: (difference, CI low, CI high, p-value)."""
    a, b = np.asarray(values_a, dtype=np.float64), np.asarray(values_b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired comparison needs the same queries: {a.shape} vs {b.shape}")

    def difference(x, y, axis=-1):
        return statistic(x, axis=axis) - statistic(y, axis=axis)

    ci = stats.bootstrap(
        (a, b),
        difference,
        paired=True,
        n_resamples=n_resamples,
        confidence_level=CONFIDENCE,
        method="percentile",
        vectorized=True,
        random_state=np.random.default_rng(seed),
    )
    test = stats.permutation_test(
        (a, b),
        difference,
        permutation_type="samples",
        n_resamples=n_resamples,
        alternative="two-sided",
        vectorized=True,
        random_state=np.random.default_rng(seed),
    )
    return (
        float(difference(a, b)),
        float(ci.confidence_interval.low),
        float(ci.confidence_interval.high),
        float(test.pvalue),
    )


def holm_adjust(p_values: np.ndarray) -> np.ndarray:
    """Holm-Bonferroni: the i-th smallest of m p-values is scaled by (m - i), running maximum, capped at 1."""
    p_values = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p_values, kind="stable")
    scaled = p_values[order] * (len(p_values) - np.arange(len(p_values)))
    adjusted = np.empty_like(p_values)
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return adjusted


def two_level_bootstrap_ci(
    values: np.ndarray, statistic: Callable, seed: int = 0, n_resamples: int = N_RESAMPLES, chunk: int = 100
) -> tuple[float, float]:
    """Percentile CI of statistic(mean over seeds of the per-query values) by a two-level
    (hierarchical) bootstrap: resample the seeds, then the queries, both with replacement, so the
    spread between seeds counts as well as the spread between queries. values: [n_seeds, n_queries]."""
    values = np.asarray(values, dtype=np.float64)
    n_seeds, n_queries = values.shape
    rng = np.random.default_rng(seed)
    estimates = []
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        seeds = rng.integers(n_seeds, size=(size, n_seeds))
        queries = rng.integers(n_queries, size=(size, n_queries))
        per_query = values[seeds].mean(axis=1)  # [size, n_queries]: this draw's seeds, averaged
        estimates.append(statistic(np.take_along_axis(per_query, queries, axis=1), axis=-1))
    low, high = np.percentile(np.concatenate(estimates), [50 * (1 - CONFIDENCE), 50 * (1 + CONFIDENCE)])
    return float(low), float(high)


def minimum_detectable_difference(
    differences: np.ndarray, n_comparisons: int, power: float = 0.8, alpha: float = 1 - CONFIDENCE
) -> float:
    """The smallest difference in mean (of the per-query paired differences, in their unit) that a
    two-sided test at Holm's strictest level, alpha / n_comparisons, detects with `power`: (z of
    the level + z of the power) standard errors (normal approximation of the paired test)."""
    differences = np.asarray(differences, dtype=np.float64)
    standard_error = differences.std(ddof=1) / np.sqrt(len(differences))
    level = alpha / max(1, n_comparisons)
    return float((stats.norm.ppf(1 - level / 2) + stats.norm.ppf(power)) * standard_error)
