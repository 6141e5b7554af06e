"""What the report's statistics cost, and how many of their digits stay put: every cell's CI and
one dataset's family of tests, as report.py computes them, on synthetic per-query values at the
demo's size and at RTime's, side by side with 1000 draws (the count the report used before the
tests drew what their family needs).

    python -m bench.report_stats                    # the demo (24 records) and RTime's test split (1000)
    python -m bench.report_stats --records 24 1000 --methods 6 --stability-seeds 5

For each size: seconds for the cells (5 metrics x Origin/Hard x t2v/v2t per method) and for the
family (pairwise R@1 per setting, direction and paraphrase per method), at the default draws and at
1000; then, over --stability-seeds resampling seeds, the largest move of a CI end and of a p value,
and the share of CI ends whose printed digits (reporting/tables.py CI_DIGITS) change; last, the
power of the design statement in simulated designs (fixtures/simulated_design.py) as seed variance grows.
"""

import argparse
import itertools
import time

import numpy as np

from fixtures.simulated_design import planted_power
from reporting.stats import METRICS, N_RESAMPLES, bootstrap_cis, run_family
from reporting.tables import CI_DIGITS

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--records", type=int, nargs="+", default=[24, 1000], help="test records (2 Hard captions each)")
parser.add_argument("--methods", type=int, default=6, help="methods compared (one zero-shot, the rest 3 seeds)")
parser.add_argument("--stability-seeds", type=int, default=5, help="resampling seeds compared for stable digits")
parser.add_argument(
    "--power-designs",
    type=int,
    default=300,
    help="simulated designs per power figure (24 records, 3 seeds per method; 0: no power figures)",
)


def synthetic_method(rng, records, seeds, strength):
    """{"setting/direction": {metric: [seeds, queries]}}: hits that follow a record effect and the
    method's strength, ranks that follow the hits; Origin one caption per record, Hard two."""
    data = {}
    for setting, per_record in (("origin", 1), ("hard", 2)):
        easy = np.repeat(rng.normal(0, 1, records), per_record)
        for direction in ("t2v", "v2t"):
            shift = rng.normal(0, 0.3, (seeds, 1))
            latent = easy + strength + shift + rng.normal(0, 1, (seeds, len(easy)))
            ranks = np.maximum(1.0, np.round(np.exp(1.5 - latent)))
            data[f"{setting}/{direction}"] = {
                metric: (np.minimum(1.0, k / ranks) if metric.startswith("R@") else ranks)
                for metric, k in (("R@1", 1), ("R@5", 5), ("R@10", 10), ("MdR", 0), ("MnR", 0))
            }
    return data


def cells_and_tests(rng, records, n_methods):
    methods = [synthetic_method(rng, records, 1 if m == 0 else 3, 0.3 * m) for m in range(n_methods)]
    clusters = {key: np.repeat(np.arange(records), 2 if key.startswith("hard") else 1) for key in methods[0]}
    cells = [
        ([(method[key][metric], METRICS[metric][1]) for metric in METRICS], clusters[key])
        for method in methods
        for key in method
    ]

    def tests():
        family = [
            {"paired": (a[f"{s}/t2v"]["R@1"], b[f"{s}/t2v"]["R@1"], clusters[f"{s}/t2v"], False)}
            for s in ("origin", "hard")
            for a, b in itertools.combinations(methods, 2)
        ]
        for method in methods:  # direction (per record) and paraphrase (per candidate), same runs
            hard = method["hard/t2v"]["R@1"]
            family.append({"paired": (hard[:, 0::2], hard[:, 1::2], np.arange(records), True)})
            family.append({"paired": (hard, np.roll(hard, 1, axis=0), clusters["hard/t2v"], True)})
        return family

    return cells, tests


def timed(function):
    start = time.perf_counter()
    value = function()
    return value, time.perf_counter() - start


def run_cells(cells, seed, draws):
    return [ci for cell, clusters in cells for ci in bootstrap_cis(cell, clusters, seed, draws)]


def main(argv=None):
    args = parser.parse_args(argv)
    for records in args.records:
        cells, tests = cells_and_tests(np.random.default_rng(records), records, args.methods)
        print(f"{records} records, {args.methods} methods: {len(cells) * len(METRICS)} cells, {len(tests())} tests")
        for draws in (N_RESAMPLES, 1000):
            _, cell_seconds = timed(lambda draws=draws, cells=cells: run_cells(cells, 0, draws))
            family = tests()
            described, test_seconds = timed(lambda draws=draws, family=family: run_family(family, 0, draws))
            label = "default" if draws == N_RESAMPLES else "1000 (before)"
            print(
                f"  draws {draws:>6} {label:<13} cells {cell_seconds:6.2f} s, family ({described['resamples']} "
                f"draws) {test_seconds:6.2f} s"
            )
        if args.stability_seeds < 2:
            continue
        ends, p_values = [], []
        for seed in range(args.stability_seeds):
            ends.append(np.array(run_cells(cells, seed, N_RESAMPLES)).ravel())
            family = tests()
            run_family(family, seed, N_RESAMPLES)
            p_values.append([test["p"] for test in family])
        ends, p_values = np.array(ends), np.array(p_values)
        print(f"  over {args.stability_seeds} resampling seeds at {N_RESAMPLES} draws:")
        metric_of = np.tile(np.repeat(list(METRICS), 2), len(cells))  # each cell's two ends, metrics in order
        for metric in METRICS:
            moved = np.ptp(ends[:, metric_of == metric], axis=0)
            changed = {
                digits: np.mean(np.ptp(np.round(ends[:, metric_of == metric], digits), axis=0) > 0) for digits in (0, 1)
            }
            print(
                f"    {metric:<5} CI ends move by at most {moved.max():.3f} (median {np.median(moved):.3f}); "
                f"their printed value changes for {100 * changed[0]:.0f}% at 0 decimals, {100 * changed[1]:.0f}% "
                f"at 1 (printed: {CI_DIGITS[metric]})"
            )
        print(f"    p moves by at most {np.ptp(p_values, axis=0).max():.4f}")
    if args.power_designs:
        print(f"power of the design statement, {args.power_designs} simulated designs of 24 records, 3 seeds each:")
    for seed_sd in (0.0, 0.01, 0.02) if args.power_designs else ():
        for m in (12, 30):
            rng = np.random.default_rng(m)
            planted, power = planted_power(rng, m, n_clusters=24, seed_sd=seed_sd, n_designs=args.power_designs)
            print(f"  seed SD {100 * seed_sd:.0f} points, m = {m}: detectable {planted:.1f} points, power {power:.2f}")


if __name__ == "__main__":
    main()
