"""A method over its seeds: each table cell, Binary row and pairwise comparison the report prints,
from the seeds' per-query values. Statistics come from reporting/stats.py.
"""

import itertools

import numpy as np

from evaluation.conventions import convention_numbers
from evaluation.results import seed_averaged
from reporting.stats import (
    METRICS,
    bootstrap_ci,
    holm_adjust,
    minimum_detectable_difference,
    paired_difference,
    two_level_bootstrap_ci,
)


def mean_std(per_seed):
    """Mean and sample standard deviation (ddof 1) over seeds; 0 for a single seed."""
    return {"mean": float(np.mean(per_seed)), "std": float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else 0.0}


def shown_ci(cell: dict) -> tuple[float, float]:
    """The 95% CI the report shows for a metric cell, in tables and figures alike: over seeds and
    queries where a method has several seeds, else over queries."""
    low, high = cell.get("ci_seeds_and_queries", cell["ci"])
    return low, high


def method_row(runs, setting, direction, seed, n_resamples):
    """{metric: {mean, std, ci[, ci_seeds_and_queries]}} over the seeds of one method, plus
    tied-query counts. `ci` resamples the queries of the seed-averaged values; with two seeds or
    more, `ci_seeds_and_queries` resamples the seeds too (the table shows it)."""
    key = f"{setting}/{direction}"
    row = {}
    for metric, (column, statistic) in METRICS.items():
        per_seed = [run.data[setting][direction]["expected"][metric] for run in runs]
        low, high = bootstrap_ci(seed_averaged(runs, key, column), statistic, seed, n_resamples)
        row[metric] = {**mean_std(per_seed), "ci": [low, high]}
        if len(runs) > 1:
            values = np.stack([run.per_query[key][column] for run in runs])
            row[metric]["ci_seeds_and_queries"] = list(two_level_bootstrap_ci(values, statistic, seed, n_resamples))
    row["n_tied"] = float(np.mean([run.data[setting][direction]["n_tied"] for run in runs]))
    row["n_queries"] = runs[0].data[setting][direction]["n_queries"]
    row["n_seeds"] = len(runs)
    return row


def binary_row(runs, directions=("t2v", "v2t")):
    row = {}
    for direction in directions:
        accuracy = [run.data["binary"][direction]["accuracy"] for run in runs]
        row[direction] = {
            **mean_std(accuracy),
            "n_tied": float(np.mean([run.data["binary"][direction]["n_tied"] for run in runs])),
            "n_pairs": runs[0].data["binary"][direction]["n_pairs"],
        }
    return row


def convention_row(runs, name):
    """A method's numbers under a peer's convention (evaluation/conventions.py), computed from each
    seed's score matrices: {"setting/direction": the convention's metrics, each as mean and std over
    seeds}, with "binary/t2v" and "binary/v2t"; {setting: {"unavailable": why}} where it cannot."""
    per_seed = [convention_numbers(name, run.load_array, run.provenance["annotation_format"]) for run in runs]
    row = {}
    for setting, directions in per_seed[0].items():
        if "unavailable" in directions:
            row[setting] = directions
            continue
        for direction in directions:
            row[f"{setting}/{direction}"] = over_seeds([numbers[setting][direction] for numbers in per_seed])
    return row


def over_seeds(records):
    """Records of one shape, one per seed -> the same shape with each number's mean and std."""
    return {
        key: over_seeds([record[key] for record in records])
        if isinstance(value, dict)
        else mean_std([record[key] for record in records])
        for key, value in records[0].items()
    }


def pairwise(methods, settings, seed, n_resamples):
    """Every pair of methods, R@1 text->video per setting, on the seed-averaged per-query values."""
    column, statistic = METRICS["R@1"]
    comparisons = []
    for setting in settings:
        key = f"{setting}/t2v"
        for method_a, method_b in itertools.combinations(methods, 2):
            diff, low, high, p = paired_difference(
                seed_averaged(methods[method_a], key, column),
                seed_averaged(methods[method_b], key, column),
                statistic,
                seed,
                n_resamples,
            )
            comparisons.append(
                {
                    "setting": setting,
                    "a": method_a,
                    "b": method_b,
                    "metric": "R@1 t2v",
                    "difference": diff,
                    "ci": [low, high],
                    "p": p,
                    "differences": 100.0
                    * (seed_averaged(methods[method_a], key, column) - seed_averaged(methods[method_b], key, column)),
                }
            )
    for comparison, adjusted in zip(comparisons, holm_adjust([c["p"] for c in comparisons]), strict=True):
        comparison["p_holm"] = float(adjusted)
        # the smallest difference these queries could show at 80% power, at Holm's strictest level
        comparison["min_detectable"] = minimum_detectable_difference(comparison.pop("differences"), len(comparisons))
    return comparisons
