"""What no peer reports on RTime, computed from a method's result files (its seeds) alone.

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

Per-query values are averaged over a method's seeds (their queries are the same, in the same order).
"""

import numpy as np

from evaluation.results import seed_averaged
from evaluation.retrieval_stats import METRICS, paired_difference, percent_mean

R1 = "expected_recall@1"


def gold_items(run, setting: str) -> list[tuple[str, int]]:
    """(video id, reversed) of each query's own candidate, in query order."""
    gold, ids = run.load_array(f"{setting}_gold"), run.load_array(f"{setting}_ids")
    return [(ids["columns"][c]["video_id"], ids["columns"][c]["reversed"]) for c in gold.argmax(axis=1)]


def per_group(values: np.ndarray, groups: list) -> dict:
    """{group: mean of its values}, groups in first-seen order."""
    sums, counts = {}, {}
    for value, group in zip(values, groups, strict=True):
        sums[group] = sums.get(group, 0.0) + value
        counts[group] = counts.get(group, 0) + 1
    return {group: sums[group] / counts[group] for group in sums}


def direction_split(runs, seed: int, n_resamples: int) -> dict:
    """Hard t2v's metrics by the query's side, the paired difference of expected R@1 (%) over
    records (CI, p), Binary t2v accuracy by side, and the direction bias."""
    recall = seed_averaged(runs, "hard/t2v", R1)
    items = gold_items(runs[0], "hard")
    side_of = np.array([reversed_flag for _, reversed_flag in items])
    by_side = {
        name: {
            metric: float(statistic(seed_averaged(runs, "hard/t2v", column)[side_of == side]))
            for metric, (column, statistic) in METRICS.items()
        }
        for side, name in ((0, "forward"), (1, "reverse"))
    }
    sides = {
        side: per_group(recall[[i for i, (_, r) in enumerate(items) if r == side]], [v for v, r in items if r == side])
        for side in (0, 1)
    }
    records = [video for video in sides[0] if video in sides[1]]
    forward, reverse = (np.array([sides[side][video] for video in records]) for side in (0, 1))
    diff, low, high, p = paired_difference(forward, reverse, percent_mean, seed, n_resamples)
    # Binary per pair: right 1, tied 1/2, wrong 0, averaged over the seeds (each seed's pairs are the same)
    credit = np.mean(
        [np.where(m > 0, 1.0, np.where(m == 0, 0.5, 0.0)) for m in (r.margins["t2v"] for r in runs)], axis=0
    )
    margin_sides = runs[0].sides["t2v"]
    # a reverse caption's right answer is the reversal: there, a wrong answer ranked the original first
    original_first = np.where(margin_sides == 0, credit, 1.0 - credit)
    return {
        **by_side,
        "difference": diff,
        "ci": [low, high],
        "p": p,
        "n_records": len(records),
        "binary_forward": float(100.0 * credit[margin_sides == 0].mean()),
        "binary_reverse": float(100.0 * credit[margin_sides == 1].mean()),
        "bias_original_first": float(100.0 * original_first.mean()),
        "n_pairs": int(len(credit)),
    }


def paraphrase_drop(runs, seed: int, n_resamples: int) -> dict:
    """Hard t2v expected R@1 (%) with human captions and with rewrites as queries, and the drop
    (human - rewrites) paired by candidate, with its CI and p."""
    human = per_group(seed_averaged(runs, "hard/t2v", R1), gold_items(runs[0], "hard"))
    rewrites = per_group(seed_averaged(runs, "rewrites/t2v", R1), gold_items(runs[0], "rewrites"))
    items = [item for item in human if item in rewrites]
    a, b = np.array([human[item] for item in items]), np.array([rewrites[item] for item in items])
    drop, low, high, p = paired_difference(a, b, percent_mean, seed, n_resamples)
    return {
        "human_R@1": float(100.0 * a.mean()),
        "rewrites_R@1": float(100.0 * b.mean()),
        "drop": drop,
        "ci": [low, high],
        "p": p,
        "n_candidates": len(items),
    }


def order_sensitivity(runs) -> dict:
    """{change: {share_dropped: mean and std over seeds, mean_margin: likewise}}."""
    changes = runs[0].data["order"]
    return {
        change: {
            key: {
                "mean": float(np.mean([run.data["order"][change][key] for run in runs])),
                "std": float(np.std([run.data["order"][change][key] for run in runs], ddof=1))
                if len(runs) > 1
                else 0.0,
            }
            for key in ("share_dropped", "mean_margin")
        }
        for change in changes
    }
