"""What no peer reports on RTime, computed from a method's result files (its seeds) alone. Each
analysis is told which settings to read (the report asks the annotation format which they are).

- Direction split: Hard text->video by the query's side (a forward caption, whose video is the
  original, or a reverse caption, whose video is the reversal), with the paired difference per
  record (each record has both sides), and Binary by side.
- Direction bias: the share of Binary text->video pairs where the head scores the original above
  the reversal whatever the caption (an exact tie counts one half). A head that always prefers the
  natural direction gets 100 and still looks fine on Binary's forward half; an unbiased one, 50.
- Paraphrase robustness: Hard text->video R@1 with the human captions as queries against the same
  with RTime's rewrites, paired by candidate (each original and each reversal has both).
- Order sensitivity: the share of queries whose score against their own video drops when its
  frames are changed, and the mean margin (evaluation/order_sensitivity.py).

Each seed's values are kept apart, so the tests draw seeds as the tables do (reporting/stats.py).
"""

import numpy as np

from evaluation.retrieval_metrics import binary_credit
from reporting.seeds import gold_items, mean_std, per_seed
from reporting.stats import METRICS, cell_value, cluster_index

R1 = "expected_recall@1"


def per_group(values: np.ndarray, groups: list) -> dict:
    """{group: mean of its values}, groups in first-seen order."""
    sums, counts = {}, {}
    for value, group in zip(values, groups, strict=True):
        sums[group] = sums.get(group, 0.0) + value
        counts[group] = counts.get(group, 0) + 1
    return {group: sums[group] / counts[group] for group in sums}


def group_values(values: np.ndarray, groups: list, keys: list) -> np.ndarray:
    """[n_seeds, len(keys)]: each seed's mean over the queries of each group in `keys`."""
    means = [per_group(row, groups) for row in values]
    return np.array([[seed_means[key] for key in keys] for seed_means in means])


def direction_split(runs, setting: str) -> dict:
    """`setting`'s t2v metrics (its candidates hold originals and reversals) by the query's side,
    the test of forward - reverse expected R@1 (%) paired by record (one cluster each; "paired": for
    reporting/stats.py `run_family`), Binary t2v accuracy by side, and the direction bias."""
    key = f"{setting}/t2v"
    items = gold_items(runs[0], setting)
    side_of = np.array([reversed_flag for _, reversed_flag in items])
    by_side = {
        name: {
            metric: cell_value(per_seed(runs, key, column)[:, side_of == side], statistic)
            for metric, (column, statistic) in METRICS.items()
        }
        for side, name in ((0, "forward"), (1, "reverse"))
    }
    recall = per_seed(runs, key, R1)
    videos = [video for video, _ in items]
    records = [video for video in dict.fromkeys(videos) if {(video, 0), (video, 1)} <= set(items)]
    forward, reverse = (
        group_values(recall[:, side_of == side], [v for v, r in items if r == side], records) for side in (0, 1)
    )
    # Binary per pair, averaged over the seeds (each seed's pairs are the same)
    credit = np.mean([binary_credit(run.margins["t2v"]) for run in runs], axis=0)
    margin_sides = runs[0].sides["t2v"]
    # a reverse caption's right answer is the reversal: there, a wrong answer ranked the original first
    original_first = np.where(margin_sides == 0, credit, 1.0 - credit)
    return {
        **by_side,
        "paired": (forward, reverse, np.arange(len(records)), True),
        "n_records": len(records),
        "binary_forward": float(100.0 * credit[margin_sides == 0].mean()),
        "binary_reverse": float(100.0 * credit[margin_sides == 1].mean()),
        "bias_original_first": float(100.0 * original_first.mean()),
        "n_pairs": int(len(credit)),
    }


def paraphrase_drop(runs, human_setting: str, rewrite_setting: str, unit: str) -> dict:
    """t2v expected R@1 (%) with the human captions of `human_setting` and with the rewrites of
    `rewrite_setting` as queries, and the test of the drop (human - rewrites) paired by candidate,
    candidates clustered by the --cluster-by unit ("paired": for reporting/stats.py `run_family`)."""
    human_items, rewrite_items = gold_items(runs[0], human_setting), gold_items(runs[0], rewrite_setting)
    items = [item for item in dict.fromkeys(human_items) if item in set(rewrite_items)]
    human = group_values(per_seed(runs, f"{human_setting}/t2v", R1), human_items, items)
    rewrites = group_values(per_seed(runs, f"{rewrite_setting}/t2v", R1), rewrite_items, items)
    clusters = cluster_index(video for video, _ in items) if unit == "video" else np.arange(len(items))
    return {
        "human_R@1": float(100.0 * human.mean()),
        "rewrites_R@1": float(100.0 * rewrites.mean()),
        "paired": (human, rewrites, clusters, True),
        "n_candidates": len(items),
    }


def order_sensitivity(runs) -> dict:
    """{change: {share_dropped: mean and std over seeds, mean_margin: likewise}}."""
    return {
        change: {
            key: mean_std([run.data["order"][change][key] for run in runs]) for key in ("share_dropped", "mean_margin")
        }
        for change in runs[0].data["order"]
    }
