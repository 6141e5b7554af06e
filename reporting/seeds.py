"""A method over its seeds: each table cell, Binary row and pairwise comparison the report prints,
from the seeds' per-query values. Statistics come from reporting/stats.py.
"""

import itertools

import numpy as np

from evaluation.conventions import convention_numbers
from reporting.stats import METRICS, bootstrap_cis, cluster_index

CLUSTER_UNITS = {  # --cluster-by: what a report resamples as one unit, and how it names it
    "video": "the query's video (a record's original and reversal together, with all their captions and rewrites)",
    "query": "the query (each caption or video alone: clustered queries then look more certain than they are)",
}


def mean_std(per_seed):
    """Mean and sample standard deviation (ddof 1) over seeds; 0 for a single seed."""
    return {"mean": float(np.mean(per_seed)), "std": float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else 0.0}


def query_clusters(run, key: str, unit: str) -> np.ndarray:
    """[n_queries] cluster of each query of `key` ("hard/t2v") under the --cluster-by unit: the video
    of a caption's own candidate (t2v) or of the candidate itself (v2t: the described candidates,
    in order), whatever its direction; or each query alone."""
    setting, direction = key.split("/")
    if direction == "t2v":
        own = gold_items(run, setting)
        return np.arange(len(own)) if unit == "query" else cluster_index(video_id for video_id, _ in own)
    described = np.flatnonzero(run.load_array(f"{setting}_gold").any(axis=0))
    if unit == "query":
        return np.arange(len(described))
    columns = run.load_array(f"{setting}_ids")["columns"]
    return cluster_index(columns[column]["video_id"] for column in described)


def gold_items(run, setting: str) -> list[tuple[str, int]]:
    """(video id, reversed) of each query's own candidate, in query order."""
    gold, ids = run.load_array(f"{setting}_gold"), run.load_array(f"{setting}_ids")
    return [(ids["columns"][c]["video_id"], ids["columns"][c]["reversed"]) for c in gold.argmax(axis=1)]


def per_seed(runs, key: str, column: str) -> np.ndarray:
    """[n_seeds, n_queries] a per-query column of `key` for each seed of a method (their queries are
    the same, in the same order)."""
    return np.stack([run.per_query[key][column] for run in runs])


def method_row(runs, setting, direction, unit, seed, n_resamples):
    """{metric: {mean, std, ci}} over the seeds of one method, plus tied-query counts. `ci`: the
    two-level bootstrap over the seeds and the clusters (with one seed, the clusters alone)."""
    key = f"{setting}/{direction}"
    clusters = query_clusters(runs[0], key, unit)
    cells = [(per_seed(runs, key, column), statistic) for column, statistic in METRICS.values()]
    cis = bootstrap_cis(cells, clusters, seed, n_resamples)  # one draw of clusters and seeds for all metrics
    row = {}
    for metric, ci in zip(METRICS, cis, strict=True):
        values = [run.data[setting][direction]["expected"][metric] for run in runs]
        row[metric] = {**mean_std(values), "ci": ci}
    row["n_tied"] = float(np.mean([run.data[setting][direction]["n_tied"] for run in runs]))
    row["n_queries"] = runs[0].data[setting][direction]["n_queries"]
    row["n_clusters"] = int(clusters.max()) + 1
    row["n_seeds"] = len(runs)
    return row


def binary_row(runs, directions=("t2v", "v2t")):
    row = {"n_seeds": len(runs)}
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


def pairwise(methods, settings, unit):
    """Every pair of methods, R@1 text->video per setting: each a test of the family, to run
    (reporting/stats.py `run_family`) with its per-seed values and clusters."""
    column = METRICS["R@1"][0]
    tests = []
    for setting in settings:
        key = f"{setting}/t2v"
        clusters = query_clusters(next(iter(methods.values()))[0], key, unit)
        for method_a, method_b in itertools.combinations(methods, 2):
            runs_a, runs_b = methods[method_a], methods[method_b]
            tests.append(
                {
                    "setting": setting,
                    "a": method_a,
                    "b": method_b,
                    "metric": "R@1 t2v",
                    "seeds": [len(runs_a), len(runs_b)],
                    "paired": (per_seed(runs_a, key, column), per_seed(runs_b, key, column), clusters, False),
                }
            )
    return tests
