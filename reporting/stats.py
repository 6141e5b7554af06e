"""Uncertainty for retrieval metrics: cluster bootstrap CIs over seeds and clusters, paired tests
with p values fine enough for their family, Holm-Bonferroni, and the design's detectable difference.

Every statistic starts from per-query values that evaluate.py saved (expected recall@K 0..1,
expected rank), one row per seed of a method: values [n_seeds, n_queries]. A metric is a statistic
over queries: R@K = 100 * mean(recall@K), MdR = median(rank), MnR = mean(rank); a method's cell is
the mean over its seeds of that statistic.

Queries are not independent: a record's forward and reverse captions, a video's caption set and
a caption's rewrites share a video. The independent unit is the cluster (a label per query, by
default the query's video): every interval and test resamples clusters whole, never single queries.

- Intervals: a two-level percentile bootstrap. Each draw takes the clusters with replacement, and
  the seeds with replacement, and averages the drawn seeds' statistics. With one seed, the
  checkpoint is held fixed and only the clusters are drawn.
- Paired tests (method A against B on the same queries, or one method's two sides): where both
  hold their checkpoint fixed (one seed each, or one run's two sides), an exact sign-flip test of
  the per-cluster differences (enumerated while 2^n stays cheap, else drawn); otherwise the
  two-level bootstrap's test, p = 2 min(P(D* <= 0), P(D* >= 0)), the one its percentile CI
  inverts. Draws are never fewer than the family needs (`family_resamples`), so the smallest
  attainable p lies well below alpha / m.
"""

import math
from collections.abc import Callable

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE
POWER = 0.8
N_RESAMPLES = 10_000  # where the printed digits stop moving between resampling seeds: docs/report.md
MIN_RESAMPLES = 1000  # fewer leave a 95% percentile CI's tails (25 resamples each) to chance
TAIL_DRAWS = 50  # draws beyond each end of the family's simultaneous interval, so its ends are not noise
EXACT_LIMIT = 2**20  # sign patterns enumerated at most: past it, drawn
CHUNK_VALUES = 1_000_000  # draws x queries held at once: 8 MB; 4M ran up to 1.6x slower, 250k 1.3x


def percent_mean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """100 x the weighted mean of per-query values (R@K in % from recalls 0..1), one per weight row."""
    return 100.0 * weighted_mean(values, weights)


def weighted_mean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """[draws]: the mean of `values` [n] counting query i weights[d, i] times in draw d."""
    return weights @ values / weights.sum(axis=-1)


def weighted_median(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """[draws]: np.median of the sample that holds query i weights[d, i] times: the mean of the
    elements at places (N - 1) // 2 and N // 2 of its sorted order (N its size)."""
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(weights[:, order], axis=1)
    total = cumulative[:, -1:]
    lower = (cumulative > (total - 1) // 2).argmax(axis=1)
    upper = (cumulative > total // 2).argmax(axis=1)
    return (values[order][lower] + values[order][upper]) / 2


METRICS = {  # metric -> (per-query column, statistic(values [n], weights [draws, n]) -> [draws])
    "R@1": ("expected_recall@1", percent_mean),
    "R@5": ("expected_recall@5", percent_mean),
    "R@10": ("expected_recall@10", percent_mean),
    "MdR": ("expected_rank", weighted_median),
    "MnR": ("expected_rank", weighted_mean),
}


def cell_value(values: np.ndarray, statistic: Callable) -> float:
    """A cell: the mean over seeds of statistic(each seed's values). values: [n_seeds, n_queries]."""
    values = np.atleast_2d(np.asarray(values, dtype=np.float64))
    ones = np.ones((1, values.shape[1]))
    return float(np.mean([statistic(row, ones)[0] for row in values]))


def cluster_index(labels) -> np.ndarray:
    """[n_queries] ints 0..n_clusters-1: queries with one label share a cluster (first-seen order)."""
    first_seen = {}
    return np.array([first_seen.setdefault(label, len(first_seen)) for label in labels], dtype=np.int64)


def cluster_draws(rng: np.random.Generator, n_clusters: int, size: int) -> np.ndarray:
    """[size, n_clusters]: how often each cluster is drawn in each of `size` draws of n_clusters
    clusters with replacement."""
    picks = rng.integers(n_clusters, size=(size, n_clusters))
    picks += n_clusters * np.arange(size)[:, None]  # one bin per draw and cluster
    return np.bincount(picks.ravel(), minlength=size * n_clusters).reshape(size, n_clusters)


def chunks(n_resamples: int, values_per_draw: int):
    """Sizes of the draws made at once, so that no chunk holds more than CHUNK_VALUES values."""
    step = max(1, CHUNK_VALUES // max(1, values_per_draw))
    for start in range(0, n_resamples, step):
        yield min(step, n_resamples - start)


def seed_picks(rng: np.random.Generator, n_seeds: int, size: int) -> np.ndarray | None:
    """[size, n_seeds] seeds drawn with replacement, or None for one seed: its checkpoint is held fixed."""
    return rng.integers(n_seeds, size=(size, n_seeds)) if n_seeds > 1 else None


def seed_means(estimates: np.ndarray, picks: np.ndarray | None) -> np.ndarray:
    """[draws]: per draw, the mean of the picked seeds' estimates [draws, S] (one seed: its own)."""
    if picks is None:
        return estimates[:, 0]
    return np.take_along_axis(estimates, picks, axis=1).mean(axis=1)


def bootstrap_estimates(cells: list, clusters: np.ndarray, rng, n_resamples: int) -> list[np.ndarray]:
    """Two-level bootstrap draws of several cells of one method on the same queries, one draw of
    clusters and seeds serving all: cells [(values [n_seeds, n_queries], statistic)] -> [n_resamples]
    draws of each cell's statistic (the mean over the drawn seeds of each seed's statistic)."""
    n_seeds, n_queries = np.atleast_2d(cells[0][0]).shape
    n_clusters = int(clusters.max()) + 1
    draws = [[] for _ in cells]
    for size in chunks(n_resamples, n_queries * n_seeds):
        weights = cluster_draws(rng, n_clusters, size)[:, clusters].astype(np.float64)
        picks = seed_picks(rng, n_seeds, size)
        for cell_draws, (values, statistic) in zip(draws, cells, strict=True):
            per_seed = np.stack([statistic(row, weights) for row in np.atleast_2d(values)], axis=1)  # [size, S]
            cell_draws.append(seed_means(per_seed, picks))
    return [np.concatenate(cell_draws) for cell_draws in draws]


def percentile_interval(draws: np.ndarray, confidence: float = CONFIDENCE) -> list[float]:
    low, high = np.percentile(draws, [50 * (1 - confidence), 50 * (1 + confidence)])
    return [float(low), float(high)]


def bootstrap_cis(
    cells: list, clusters: np.ndarray, seed: int = 0, n_resamples: int = N_RESAMPLES
) -> list[list[float]]:
    """Percentile CI of each cell [(values [n_seeds, n_queries], statistic)] of one method (its
    metrics on one setting) by the two-level cluster bootstrap."""
    estimates = bootstrap_estimates(cells, clusters, np.random.default_rng(seed), n_resamples)
    return [percentile_interval(draws) for draws in estimates]


def family_resamples(n_tests: int, n_resamples: int = N_RESAMPLES, alpha: float = ALPHA) -> int:
    """Draws for a family of n_tests: at least n_resamples, and enough that TAIL_DRAWS fall beyond
    each end of the simultaneous (1 - alpha / m) interval, which puts the smallest attainable p,
    2 / (draws + 1), at a fiftieth of alpha / m."""
    return max(n_resamples, math.ceil(2 * TAIL_DRAWS * n_tests / alpha))


def cluster_sums(values: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """[n_seeds, n_clusters]: each seed's values summed per cluster."""
    values = np.atleast_2d(np.asarray(values, dtype=np.float64))
    sums = np.zeros((values.shape[0], int(clusters.max()) + 1))
    np.add.at(sums.T, clusters, values.T)
    return sums


def paired_comparison(
    values_a: np.ndarray,
    values_b: np.ndarray,
    clusters: np.ndarray,
    *,
    same_runs: bool = False,
    seed: int = 0,
    n_resamples: int = N_RESAMPLES,
) -> dict:
    """100 x (mean(A) - mean(B)) over the same queries, A and B [n_seeds, n_queries] (percent from
    0..1 values). `same_runs`: A and B are two sides of the same runs (row s of each from seed s),
    whose seeds are drawn together; otherwise each method's seeds are drawn on their own, the
    clusters always together. {difference, ci, p, p_floor (the smallest p it can give), below_floor
    (p sits at the floor its draws set: the true p is smaller), test (its name), n_clusters, draws}:
    `draws` are the bootstrap's differences, for the family's simultaneous interval (`adjust_family`)."""
    return paired_comparisons([(values_a, values_b, clusters, same_runs)], seed, n_resamples)[0]


def paired_sums(values_a, values_b, clusters, same_runs) -> dict:
    """What the draws of one comparison need: each seed's sums per cluster, and the cluster sizes."""
    a = np.atleast_2d(np.asarray(values_a, dtype=np.float64))
    b = np.atleast_2d(np.asarray(values_b, dtype=np.float64))
    if a.shape[1] != b.shape[1] or len(clusters) != a.shape[1]:
        raise ValueError(f"a paired comparison needs the same queries: {a.shape}, {b.shape}, {len(clusters)} clusters")
    if same_runs and a.shape != b.shape:
        raise ValueError(f"two sides of the same runs need the same seeds: {a.shape} vs {b.shape}")
    return {
        "sums_a": cluster_sums(a, clusters),
        "sums_b": cluster_sums(b, clusters),
        "sizes": np.bincount(clusters),
        "same_runs": same_runs,
        "difference": float(100.0 * (a.mean() - b.mean())),
    }


def difference_draws(pair: dict, per_seed_a: np.ndarray, per_seed_b: np.ndarray, rng) -> np.ndarray:
    """[draws] 100 x (A - B) from each side's per-seed means in each draw of clusters [draws, seeds],
    the seeds drawn as `pair` says."""
    size, n_a, n_b = len(per_seed_a), per_seed_a.shape[1], per_seed_b.shape[1]
    if pair["same_runs"]:
        return 100.0 * seed_means(per_seed_a - per_seed_b, seed_picks(rng, n_a, size))
    picks_a, picks_b = seed_picks(rng, n_a, size), seed_picks(rng, n_b, size)
    return 100.0 * (seed_means(per_seed_a, picks_a) - seed_means(per_seed_b, picks_b))


def paired_comparisons(pairs: list[tuple], seed: int, n_resamples: int) -> list[dict]:
    """paired_comparison of each (A, B, clusters, same_runs). Pairs on the same clusters share every
    draw of clusters (a family's pairwise tests of one setting: drawn once, not once each), and one
    product with the draws gives all their per-seed sums (the draws are read once, not twice a pair)."""
    prepared = [paired_sums(*pair) for pair in pairs]
    draws = [[] for _ in pairs]
    groups = {}
    for index, (_, _, clusters, _) in enumerate(pairs):
        groups.setdefault(np.asarray(clusters).tobytes(), []).append(index)
    for members in groups.values():
        rng = np.random.default_rng(seed)
        sizes = prepared[members[0]]["sizes"]
        # columns: the cluster sizes, then each member's A seeds and B seeds
        columns = np.concatenate(
            [sizes[:, None]] + [prepared[i][key].T for i in members for key in ("sums_a", "sums_b")], axis=1
        )
        bounds = np.cumsum([1] + [len(prepared[i][key]) for i in members for key in ("sums_a", "sums_b")])
        for size in chunks(n_resamples, len(sizes) + columns.shape[1]):
            sums = cluster_draws(rng, len(sizes), size).astype(np.float64) @ columns
            means = np.split(sums[:, 1:] / sums[:, :1], bounds[1:-1] - 1, axis=1)  # per side: [size, seeds]
            for position, index in enumerate(members):
                a, b = means[2 * position], means[2 * position + 1]
                draws[index].append(difference_draws(prepared[index], a, b, rng))
    sign_flips = np.random.default_rng([seed, 1])  # apart from the bootstrap's stream
    return [outcome(pair, np.concatenate(d), sign_flips, n_resamples) for pair, d in zip(prepared, draws, strict=True)]


def outcome(pair: dict, draws: np.ndarray, rng, n_resamples: int) -> dict:
    """A comparison's difference, CI and test from its bootstrap draws: where both sides hold one
    checkpoint, the sign-flip test of the per-cluster differences; else the bootstrap's own test."""
    sums_a, sums_b, n_clusters = pair["sums_a"], pair["sums_b"], len(pair["sizes"])
    if len(sums_a) == 1 and len(sums_b) == 1:
        p, p_floor, test = sign_flip_test(sums_a[0] - sums_b[0], rng, n_resamples)
        below_floor = "drawn" in test and p <= p_floor
    else:
        # a bootstrap over few clusters can put every draw on one side; it claims no more than the
        # exact sign-flip test of the same clusters could (2 / 2^n)
        draws_floor = 2.0 / (len(draws) + 1)
        p_floor = max(draws_floor, 2.0 / 2.0**n_clusters)
        p = max(bootstrap_p(draws), p_floor)
        below_floor = p <= draws_floor  # no draw beyond 0: the true p lies lower
        test = f"two-level bootstrap, {len(draws)} draws"
    return {
        "difference": pair["difference"],
        "ci": percentile_interval(draws),
        "p": p,
        "p_floor": p_floor,
        "below_floor": below_floor,
        "test": test,
        "n_clusters": n_clusters,
        "draws": draws,
    }


def bootstrap_p(draws: np.ndarray) -> float:
    """Two-sided p of "no difference" from bootstrap draws of a difference: twice the smaller share
    of draws at or beyond 0 on either side (each count + 1, so never 0), at most 1."""
    below, above = int(np.sum(draws <= 0)), int(np.sum(draws >= 0))
    return float(min(1.0, 2 * (min(below, above) + 1) / (len(draws) + 1)))


def sign_flip_test(differences: np.ndarray, rng, n_resamples: int) -> tuple[float, float, str]:
    """(p, smallest attainable p, what was done) of a two-sided paired sign-flip test of the sum of
    per-cluster differences: exact where 2^n sign patterns are at most EXACT_LIMIT (every pattern's
    sum, built by doubling), else over n_resamples drawn patterns, (hits + 1) / (draws + 1).
    scipy.stats.permutation_test computes the same, but took seconds for 2^20 patterns, and ten for
    84,000 drawn patterns of 1000 clusters, where a product with the signs takes a fraction of one."""
    n = len(differences)
    observed = abs(float(np.sum(differences)))
    # sums are added in another order than the observed one: equal up to rounding counts as equal
    reached = observed - 1e-9 * max(1.0, observed)
    if 2**n <= EXACT_LIMIT:
        sums = np.zeros(1)
        for difference in differences:
            sums = np.concatenate([sums + difference, sums - difference])
        return float(np.mean(np.abs(sums) >= reached)), 2.0 / 2**n, f"exact sign-flip over {n} clusters"
    hits = 0
    for size in chunks(n_resamples, n):
        signs = rng.integers(0, 2, size=(size, n)) * 2.0 - 1.0
        hits += int(np.sum(np.abs(signs @ differences) >= reached))
    return (hits + 1) / (n_resamples + 1), 1.0 / (n_resamples + 1), f"sign-flip, {n_resamples} drawn patterns"


def holm_adjust(p_values: np.ndarray) -> np.ndarray:
    """Holm-Bonferroni: the i-th smallest of m p-values is scaled by (m - i), running maximum, capped at 1."""
    p_values = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p_values, kind="stable")
    scaled = p_values[order] * (len(p_values) - np.arange(len(p_values)))
    adjusted = np.empty_like(p_values)
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return adjusted


def adjust_family(comparisons: list[dict], alpha: float = ALPHA) -> None:
    """One family of m tests, in place: each gets p_holm and the simultaneous (1 - alpha / m)
    percentile interval of its draws (Bonferroni: all m cover together with 1 - alpha; one that
    excludes 0 also passes Holm), the draws' SD and `reach`, the distance from their centre that
    only alpha / m of them pass (what a difference must clear to be significant), and loses its draws."""
    if not comparisons:
        return
    adjusted = holm_adjust([comparison["p"] for comparison in comparisons])
    level = 1 - alpha / len(comparisons)
    for comparison, p_holm in zip(comparisons, adjusted, strict=True):
        draws = comparison.pop("draws")
        comparison["p_holm"] = float(p_holm)
        comparison["ci_family"] = percentile_interval(draws, level)
        comparison["sd"] = float(np.std(draws, ddof=1))
        comparison["reach"] = float(np.quantile(np.abs(draws - draws.mean()), level))


def run_family(tests: list[dict], seed: int, n_resamples: int) -> dict:
    """Every test of one family, in place: each dict's "paired" (paired_comparison's A, B, clusters
    and same_runs) replaced by what the test gives, with the draws the family needs, then Holm and
    the simultaneous intervals over all of them. {n_tests, resamples, level (alpha / m)}."""
    draws = family_resamples(len(tests), n_resamples)
    outcomes = paired_comparisons([test.pop("paired") for test in tests], seed, draws)
    for test, result in zip(tests, outcomes, strict=True):
        test.update(result)
    adjust_family(tests)
    return {"n_tests": len(tests), "resamples": draws, "level": ALPHA / max(1, len(tests))}


def design_difference(
    comparisons: list[dict], n_tests: int, power: float = POWER, alpha: float = ALPHA
) -> float | None:
    """The smallest difference a test of this family detects with `power`: the reach a difference
    must clear at alpha / m, plus z(power) SDs, each pooled (root mean square) over the comparisons
    (adjust_family's `reach` and `sd`: the bootstrap's own tails, a little heavier than the normal
    curve's). None where the design cannot reach significance at alpha / m: no spread to plan from,
    or too few clusters (no sign pattern of n clusters is rarer than 2 / 2^n)."""
    level = alpha / max(1, n_tests)
    if not comparisons or 2.0 / 2.0 ** min(c["n_clusters"] for c in comparisons) > level:
        return None
    sd, reach = (math.sqrt(float(np.mean([c[key] ** 2 for c in comparisons]))) for key in ("sd", "reach"))
    if sd == 0.0:
        return None
    return float(reach + stats.norm.ppf(power) * sd)


def p_text(comparison: dict, key: str = "p") -> str:
    """A comparison's p (or p_holm) as its resolution allows: two significant digits; a drawn p at
    the floor of its draws is only known to lie below it ("< x"), and Holm's scaling of it above
    the true value ("≤ x")."""
    value = comparison[key]
    text = f"{value:.2g}" if value < 0.1 else f"{value:.2f}"
    if comparison["below_floor"]:
        return f"< {value:.1g}" if key == "p" else f"≤ {value:.2g}"
    return text
