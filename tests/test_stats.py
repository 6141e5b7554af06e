"""reporting/stats.py against independent computations: the weighted statistics against numpy on
the expanded sample, the two-level cluster bootstrap against a loop over the same draws, the
sign-flip p against full enumeration, Holm against the step-down rule, and the design's
detectable difference against simulated power at m = 12 and m = 30."""

import itertools

import numpy as np
import pytest

from fixtures.simulated_design import planted_power
from reporting.stats import (
    ALPHA,
    METRICS,
    adjust_family,
    bootstrap_cis,
    cluster_index,
    design_difference,
    family_resamples,
    holm_adjust,
    p_text,
    paired_comparison,
    run_family,
    weighted_median,
)


@pytest.mark.parametrize("n", [7, 8])
def test_the_weighted_median_is_the_median_of_the_sample_it_stands_for(n):
    rng = np.random.default_rng(n)
    values = rng.integers(0, 5, n).astype(float)  # ties, as ranks have
    weights = rng.integers(0, 4, (200, n))
    weights[:, 0] += 1  # never an empty sample
    expected = [np.median(np.repeat(values, row)) for row in weights]
    np.testing.assert_array_equal(weighted_median(values, weights), expected)


def test_the_two_level_bootstrap_draws_clusters_whole_and_seeds_as_a_loop_does():
    rng = np.random.default_rng(1)
    clusters = np.repeat(np.arange(12), rng.integers(1, 4, 12))  # clusters of 1 to 3 queries
    values = rng.integers(1, 9, (3, len(clusters))).astype(float) + np.array([[0.0], [2.0], [4.0]])  # seeds differ
    statistic = METRICS["MdR"][1]
    draws, brute = np.random.default_rng(7), []
    picks, seeds = draws.integers(12, size=(300, 12)), draws.integers(3, size=(300, 3))  # the function's draws
    for b in range(300):
        sample = np.concatenate([np.flatnonzero(clusters == cluster) for cluster in picks[b]])
        brute.append(np.mean([np.median(values[seed][sample]) for seed in seeds[b]]))
    mdr, mnr = bootstrap_cis([(values, statistic), (values, METRICS["MnR"][1])], clusters, seed=7, n_resamples=300)
    assert mdr == pytest.approx(list(np.percentile(brute, [2.5, 97.5])))
    assert mnr[0] < mnr[1] and mnr != mdr  # the same draws, another statistic


def test_clustered_queries_widen_the_interval_and_one_seed_holds_the_checkpoint_fixed():
    rng = np.random.default_rng(3)
    record_effect = rng.normal(0, 1, 40)
    values = np.repeat(record_effect, 2)[None] + rng.normal(0, 0.2, (1, 80))  # a record's two captions alike
    _, statistic = METRICS["MnR"]
    (by_record,) = bootstrap_cis([(values, statistic)], cluster_index(np.arange(80) // 2), n_resamples=4000)
    (by_query,) = bootstrap_cis([(values, statistic)], np.arange(80), n_resamples=4000)
    assert (by_record[1] - by_record[0]) > 1.25 * (by_query[1] - by_query[0])
    seeds = values + np.array([[0.0], [1.0], [2.0]])  # three seeds that differ
    (fixed,) = bootstrap_cis([(seeds[:1], statistic)], np.arange(80), n_resamples=4000)
    (drawn,) = bootstrap_cis([(seeds, statistic)], np.arange(80), n_resamples=4000)
    assert drawn[1] - drawn[0] > 1.5 * (fixed[1] - fixed[0])


def test_one_checkpoint_each_gets_the_exact_sign_flip_p_of_full_enumeration():
    rng = np.random.default_rng(4)
    clusters = np.repeat(np.arange(11), 2)
    a, b = rng.random((1, 22)), rng.random((1, 22)) * 0.7
    comparison = paired_comparison(a, b, clusters, n_resamples=1000)
    per_cluster = np.bincount(clusters, a[0] - b[0])
    observed = abs(per_cluster.sum())
    sums = [abs(np.dot(signs, per_cluster)) for signs in itertools.product((1, -1), repeat=11)]
    assert not comparison["below_floor"] and comparison["test"] == "exact sign-flip over 11 clusters"
    assert comparison["p"] == pytest.approx(np.mean(np.array(sums) >= observed - 1e-12))
    assert comparison["difference"] == pytest.approx(100 * (a.mean() - b.mean()))
    assert comparison["p_floor"] == 2 / 2**11


@pytest.mark.parametrize("same_runs", [False, True])
def test_paired_draws_equal_a_loop_over_the_same_clusters_and_seeds(same_runs):
    rng = np.random.default_rng(8)
    clusters = np.repeat(np.arange(10), rng.integers(1, 4, 10))
    a, b = rng.random((3, len(clusters))), rng.random((3 if same_runs else 2, len(clusters)))
    comparison = paired_comparison(a, b, clusters, same_runs=same_runs, seed=9, n_resamples=200)
    draws = np.random.default_rng(9)
    picks = draws.integers(10, size=(200, 10))
    seeds_a = draws.integers(3, size=(200, 3))
    seeds_b = seeds_a if same_runs else draws.integers(2, size=(200, 2))
    brute = []
    for d in range(200):
        sample = np.concatenate([np.flatnonzero(clusters == cluster) for cluster in picks[d]])
        mean_a = np.mean([a[seed][sample].mean() for seed in seeds_a[d]])
        brute.append(100 * (mean_a - np.mean([b[seed][sample].mean() for seed in seeds_b[d]])))
    np.testing.assert_allclose(comparison["draws"], brute, rtol=1e-10)


def test_past_the_enumeration_limit_drawn_sign_patterns_estimate_the_exact_p():
    rng = np.random.default_rng(10)
    per_cluster = rng.normal(0.3, 1.0, 21)  # 2^21 patterns: one more than is enumerated
    exact = 0
    for start in range(0, 2**21, 2**16):  # every pattern, written out as its bits
        signs = ((np.arange(start, start + 2**16)[:, None] >> np.arange(21)) & 1) * 2.0 - 1.0
        exact += int(np.sum(np.abs(signs @ per_cluster) >= abs(per_cluster.sum()) - 1e-9))
    exact /= 2**21
    comparison = paired_comparison(per_cluster[None], np.zeros((1, 21)), np.arange(21), n_resamples=40000)
    assert comparison["test"] == "sign-flip, 40000 drawn patterns"
    assert comparison["p"] == pytest.approx(exact, abs=4 * (exact * (1 - exact) / 40000) ** 0.5)


def test_methods_with_seeds_are_tested_by_the_two_level_bootstrap_its_interval_inverts():
    rng = np.random.default_rng(5)
    clusters = np.repeat(np.arange(30), 2)
    a = rng.random((3, 60)) + 0.05 * np.arange(3)[:, None]
    b = rng.random((1, 60))
    comparison = paired_comparison(a, b, clusters, n_resamples=20000)
    draws = comparison["draws"]
    share = min(np.sum(draws <= 0) + 1, np.sum(draws >= 0) + 1) / (len(draws) + 1)
    assert comparison["p"] == pytest.approx(min(1.0, 2 * share))
    assert comparison["p_floor"] == 2 / (len(draws) + 1)  # 30 clusters: the draws set the floor
    low, high = comparison["ci"]
    assert (low > 0 or high < 0) == (comparison["p"] < 0.05 - 2 / len(draws))  # the test the CI inverts


def test_a_bootstrap_over_few_clusters_claims_no_more_than_their_exact_sign_flip():
    a = np.array([[0.9, 0.8, 0.9, 0.7], [0.8, 0.9, 0.8, 0.9]])  # two seeds, four clusters all one way
    comparison = paired_comparison(a, np.zeros((2, 4)), np.arange(4), n_resamples=5000)
    assert comparison["p"] == comparison["p_floor"] == 2 / 2**4 and not comparison["below_floor"]


def test_a_large_gap_passes_holm_in_a_family_of_thirty():
    """The statistics review (finding 1): 1000 permutations put p's floor at 0.002, so Holm over
    m >= 26 could never pass; the demo's 25-point Hard gap printed Holm p 0.104."""
    rng = np.random.default_rng(6)
    clusters = np.repeat(np.arange(18), 2)  # few enough for the exact sign-flip between one-seed methods
    strong = (rng.random((3, 36)) < 0.55).astype(float)
    weak = (rng.random((1, 36)) < 0.04).astype(float)
    tests = [{"paired": (strong, weak, clusters, False)}]
    tests += [{"paired": (weak, rng.permutation(weak[0])[None], clusters, False)} for _ in range(29)]
    family = run_family(tests, seed=0, n_resamples=1000)
    assert family["n_tests"] == 30 and 2 / (family["resamples"] + 1) < ALPHA / 30 / 10
    assert tests[0]["p_holm"] < 0.05 and "draws" not in tests[0]
    low, high = tests[0]["ci_family"]
    assert low > 0 and (high - low) > (tests[0]["ci"][1] - tests[0]["ci"][0])  # simultaneous: wider


@pytest.mark.parametrize("m", [1, 12, 30, 200])
def test_the_smallest_attainable_p_lies_well_below_the_family_level(m):
    draws = family_resamples(m)
    assert 2 / (draws + 1) <= ALPHA / m / 50 and draws * ALPHA / (2 * m) >= 50  # 50 draws beyond each end


def holm_reference(p_values):
    """Holm's step-down rule as usually stated, one p-value at a time."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted = [0.0] * m
    running = 0.0
    for step, index in enumerate(order):
        running = max(running, min(1.0, (m - step) * p_values[index]))
        adjusted[index] = running
    return adjusted


@pytest.mark.parametrize(
    "p_values", [[0.01, 0.04, 0.03, 0.005], [0.5, 0.2, 0.9], [0.001], [0.02, 0.02, 0.5, 0.01, 0.3]]
)
def test_holm_bonferroni_matches_the_step_down_rule(p_values):
    np.testing.assert_allclose(holm_adjust(p_values), holm_reference(p_values))
    family = [{"p": p, "draws": np.arange(-5.0, 50.0)} for p in p_values]
    adjust_family(family)
    np.testing.assert_allclose([c["p_holm"] for c in family], holm_reference(p_values))


def test_a_p_at_the_floor_of_its_draws_is_printed_as_a_bound():
    drawn = {"p": 2 / 40001, "p_holm": 30 * 2 / 40001, "below_floor": True}
    assert p_text(drawn) == "< 5e-05" and p_text(drawn, "p_holm") == "≤ 0.0015"
    exact = {"p": 2 / 2**11, "p_holm": 0.03, "below_floor": False}  # the smallest exact p is a value, not a bound
    assert p_text(exact) == "0.00098" and p_text(exact, "p_holm") == "0.03"
    assert p_text({"p": 0.1234, "below_floor": False}) == "0.12"


def test_the_design_statement_is_absent_where_no_test_could_reach_the_level():
    def compared(sd, reach, n_clusters=24):
        return {"sd": sd, "reach": reach, "n_clusters": n_clusters}

    assert design_difference([compared(0.0, 0.0)] * 2, n_tests=12) is None  # no spread to plan from
    assert design_difference([compared(5.0, 16.0, n_clusters=8)], n_tests=30) is None  # 2 / 2^8 > 0.05 / 30
    pooled = design_difference([compared(3.0, 6.0), compared(4.0, 8.0)], n_tests=1)
    assert pooled == pytest.approx(50**0.5 + 0.841621 * 12.5**0.5)


@pytest.mark.parametrize("m", [12, 30])
def test_the_design_difference_is_detected_80_percent_of_the_time(m):
    """Plant the stated difference in simulated designs of the demo's 24 records and three seeds per
    method, and run the report's own test at the family's strictest level, alpha / m (where Holm
    starts): about 80% of them reject."""
    _, power = planted_power(np.random.default_rng(m), n_tests=m, n_clusters=24, seed_sd=0.01, n_designs=120)
    assert 0.68 <= power <= 0.92
