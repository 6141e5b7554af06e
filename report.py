"""Markdown report with tables, CIs, pairwise tests and plots, from evaluate.py's result files.

    python report.py --results results/ --out report/

Methods are grouped by the `method` each result file names; several files of one method are its
seeds. Table cells are the tie-aware expected metrics: mean ± std over seeds, then a 95%
query-level bootstrap CI of the seed-averaged per-query values. Writes OUT/report.md, the PNG plots,
and OUT/report_numbers.json with every number in the tables.
"""

import argparse
import io
import itertools
import json
import os
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure  # figures straight to files: no pyplot, no display backend

from file_io import atomic_write_bytes, atomic_write_json
from retrieval_stats import CONFIDENCE, METRICS, N_RESAMPLES, bootstrap_ci, holm_adjust, paired_difference

SETTING_TITLES = {"origin": "Table A: RTime-Origin", "hard": "Table B: RTime-Hard", "all": "Retrieval"}
DIRECTION_TITLES = {"t2v": "text→video", "v2t": "video→text"}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help keeps the docstring's layout and shows every default."""


parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
parser.add_argument("--results", required=True, type=Path, help="folder of evaluate.py result files (*.json)")
parser.add_argument("--out", required=True, type=Path, help="folder for report.md, plots and report_numbers.json")
parser.add_argument(
    "--n-resamples", type=int, default=N_RESAMPLES, help="bootstrap and permutation resamples (>= 1000)"
)
parser.add_argument("--seed", type=int, default=0, help="seed of the resampling")


def main(argv=None):
    args = parser.parse_args(argv)
    methods = load_results(args.results)
    args.out.mkdir(parents=True, exist_ok=True)
    first = next(iter(methods.values()))[0]
    settings = [name for name in ("origin", "hard", "all") if name in first["result"]]
    numbers = {
        "tables": {},
        "binary": {},
        "pairwise": [],
        "sources": {m: [r["file"] for r in runs] for m, runs in methods.items()},
    }
    lines = [f"# Retrieval report: {first['result']['provenance']['split']} split", ""]
    for setting in settings:
        for direction in ("t2v", "v2t"):
            rows = {method: method_row(runs, setting, direction, args) for method, runs in methods.items()}
            numbers["tables"][f"{setting}/{direction}"] = rows
            lines += metric_table(f"{SETTING_TITLES[setting]}, {DIRECTION_TITLES[direction]}", rows)
    if "hard" in settings:
        numbers["binary"] = {method: binary_row(runs) for method, runs in methods.items()}
        lines += binary_table(numbers["binary"])
    numbers["pairwise"] = pairwise(methods, settings, args)
    lines += pairwise_table(numbers["pairwise"])
    plots = make_plots(methods, numbers, settings, args.out)
    lines += [f"![{name}]({name})" for name in plots] + [""]
    lines += footnotes(methods, args)
    atomic_write_json(args.out / "report_numbers.json", numbers)
    atomic_write_bytes(args.out / "report.md", "\n".join(lines).encode("utf-8"))
    print(f"report: {args.out / 'report.md'}")


def load_results(results_dir):
    """{method: [{"file", "result", "per_query": {setting/direction: array}}]}, seeds in file order."""
    methods = {}
    files = sorted(results_dir.glob("*.json"))
    if not files:
        raise SystemExit(f"no result files (*.json) in {results_dir}: run evaluate.py first")
    for path in files:
        result = json.loads(path.read_text())
        provenance = result["provenance"]
        columns = provenance["per_query_columns"]
        per_query = {}
        for key, array_path in provenance["arrays"].items():
            if key.endswith("_per_query"):
                table = np.load(array_path)
                per_query[key[: -len("_per_query")].replace("_", "/", 1)] = {
                    c: table[:, i] for i, c in enumerate(columns)
                }
        methods.setdefault(provenance["method"], []).append(
            {"file": str(path), "result": result, "per_query": per_query}
        )
    cache_hashes = {run["result"]["provenance"]["cache_meta_sha256"] for runs in methods.values() for run in runs}
    splits = {run["result"]["provenance"]["split"] for runs in methods.values() for run in runs}
    if len(cache_hashes) > 1 or len(splits) > 1:
        raise SystemExit(
            f"{results_dir} mixes caches or splits ({len(cache_hashes)} caches, splits {sorted(splits)}): "
            "a report compares methods on the same queries"
        )
    return methods


def mean_std(per_seed):
    """Mean and sample standard deviation (ddof 1) over seeds; 0 for a single seed."""
    return {"mean": float(np.mean(per_seed)), "std": float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else 0.0}


def seed_averaged(runs, key, column):
    return np.mean([run["per_query"][key][column] for run in runs], axis=0)


def method_row(runs, setting, direction, args):
    """{metric: {mean, std, ci}} over the seeds of one method, plus tied-query counts."""
    key = f"{setting}/{direction}"
    row = {}
    for metric, (column, statistic) in METRICS.items():
        per_seed = [run["result"][setting][direction]["expected"][metric] for run in runs]
        low, high = bootstrap_ci(seed_averaged(runs, key, column), statistic, args.seed, args.n_resamples)
        row[metric] = {**mean_std(per_seed), "ci": [low, high]}
    row["n_tied"] = float(np.mean([run["result"][setting][direction]["n_tied"] for run in runs]))
    row["n_queries"] = runs[0]["result"][setting][direction]["n_queries"]
    row["n_seeds"] = len(runs)
    return row


def cell(value):
    return f"{value['mean']:.2f} ± {value['std']:.2f} [{value['ci'][0]:.2f}, {value['ci'][1]:.2f}]"


def metric_table(title, rows):
    lines = [
        f"## {title}",
        "",
        "| Method | R@1 | R@5 | R@10 | MdR | MnR | tied queries | seeds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method, row in rows.items():
        metrics = " | ".join(cell(row[metric]) for metric in METRICS)
        lines.append(f"| {method} | {metrics} | {row['n_tied']:.1f} / {row['n_queries']} | {row['n_seeds']} |")
    return lines + [""]


def binary_row(runs):
    row = {}
    for direction in ("t2v", "v2t"):
        accuracy = [run["result"]["binary"][direction]["accuracy"] for run in runs]
        row[direction] = {
            **mean_std(accuracy),
            "n_tied": float(np.mean([run["result"]["binary"][direction]["n_tied"] for run in runs])),
            "n_pairs": runs[0]["result"]["binary"][direction]["n_pairs"],
        }
    return row


def binary_table(rows):
    lines = [
        "## Binary: original vs its reversal",
        "",
        "| Method | text→video accuracy | tied | video→text accuracy | tied |",
        "|---|---|---|---|---|",
    ]
    for method, row in rows.items():
        t2v, v2t = row["t2v"], row["v2t"]
        lines.append(
            f"| {method} | {t2v['mean']:.2f} ± {t2v['std']:.2f} | {t2v['n_tied']:.1f} / {t2v['n_pairs']} | "
            f"{v2t['mean']:.2f} ± {v2t['std']:.2f} | {v2t['n_tied']:.1f} / {v2t['n_pairs']} |"
        )
    return lines + ["", "An exact tie counts one half.", ""]


def pairwise(methods, settings, args):
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
                args.seed,
                args.n_resamples,
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
                }
            )
    for comparison, adjusted in zip(comparisons, holm_adjust([c["p"] for c in comparisons]), strict=True):
        comparison["p_holm"] = float(adjusted)
    return comparisons


def pairwise_table(comparisons):
    lines = [
        "## Pairwise comparisons (text→video R@1, expected)",
        "",
        "| Setting | A | B | A − B | 95% CI | p | p (Holm) |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in comparisons:
        lines.append(
            f"| {c['setting']} | {c['a']} | {c['b']} | {c['difference']:.2f} | "
            f"[{c['ci'][0]:.2f}, {c['ci'][1]:.2f}] | {c['p']:.4f} | {c['p_holm']:.4f} |"
        )
    return lines + [""]


def subplots(n_columns, figsize):
    figure = Figure(figsize=figsize)
    return figure, figure.subplots(1, n_columns, squeeze=False)[0]


def save_figure(figure, path):
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())
    return path.name


def make_plots(methods, numbers, settings, out_dir):
    names = list(methods)
    plots = []
    figure, axes = subplots(len(settings), (5 * len(settings), 3.5))
    for ax, setting in zip(axes, settings, strict=True):
        rows = numbers["tables"][f"{setting}/t2v"]
        for offset, metric in enumerate(("R@1", "R@5", "R@10")):
            means = [rows[m][metric]["mean"] for m in names]
            errors = np.array(
                [
                    [rows[m][metric]["mean"] - rows[m][metric]["ci"][0] for m in names],
                    [rows[m][metric]["ci"][1] - rows[m][metric]["mean"] for m in names],
                ]
            )
            ax.bar(
                np.arange(len(names)) + 0.27 * (offset - 1),
                means,
                0.27,
                yerr=np.clip(errors, 0, None),
                capsize=3,
                label=metric,
            )
        ax.set_xticks(np.arange(len(names)), names, rotation=20)
        ax.set_title(f"{setting}: text→video (95% CI)")
        ax.set_ylabel("recall (%)")
        ax.legend()
    plots.append(save_figure(figure, out_dir / "recall_at_k.png"))

    figure, axes = subplots(len(settings), (5 * len(settings), 3.5))
    for ax, setting in zip(axes, settings, strict=True):
        for method in names:
            ranks = np.sort(seed_averaged(methods[method], f"{setting}/t2v", "expected_rank"))
            ax.step(ranks, np.arange(1, len(ranks) + 1) / len(ranks), where="post", label=method)
        ax.set_xscale("log")
        ax.set_title(f"{setting}: CDF of expected text→video rank")
        ax.set_xlabel("rank")
        ax.legend()
    plots.append(save_figure(figure, out_dir / "rank_cdf.png"))

    if {"origin", "hard"} <= set(settings):
        figure, (ax,) = subplots(1, (5, 3.5))
        for method in names:
            values = [numbers["tables"][f"{s}/t2v"][method]["R@1"]["mean"] for s in ("origin", "hard")]
            ax.plot(["Origin", "Hard"], values, marker="o", label=method)
        ax.set_title("Origin → Hard: text→video R@1")
        ax.set_ylabel("R@1 (%)")
        ax.legend()
        plots.append(save_figure(figure, out_dir / "origin_to_hard.png"))

    figure, (ax,) = subplots(1, (6, 3.5))
    colours = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, method in enumerate(names):
        for seed_index, run in enumerate(methods[method]):  # one colour per method, one line per seed
            training = run["result"]["provenance"].get("training")
            if training:
                history = training["history"]
                ax.plot(
                    [r["epoch"] for r in history],
                    [r["selection"] for r in history],
                    alpha=0.7,
                    color=colours[index % len(colours)],
                    label=method if seed_index == 0 else None,
                )
    ax.set_title("Training: valid Hard text→video R@1 (expected), one line per seed")
    ax.set_xlabel("epoch")
    if ax.lines:
        ax.legend(fontsize=7)
    plots.append(save_figure(figure, out_dir / "training_curves.png"))
    return plots


def footnotes(methods, args):
    first = next(iter(methods.values()))[0]["result"]["provenance"]
    sampling, clip = first["sampling"], first["clip"]
    frames = sorted({run["result"]["provenance"]["frames"] for runs in methods.values() for run in runs})
    seeds = {m: [run["result"]["provenance"]["seed"] for run in runs] for m, runs in methods.items()}
    return [
        "## Notes",
        "",
        f"1. CLIP checkpoint: `{clip['file']}`, sha256 `{clip['sha256']}`, config "
        f"{json.dumps(clip['config'])}; compute {first['compute']}.",
        f"2. Preprocessing: {json.dumps(first['preprocessing'])}.",
        f"3. Frame sampling: fps {sampling['fps']}, t_max {sampling['t_max']}, rule: {sampling['rule']}. "
        f"Frames used by the heads: {frames} (evenly spaced, mirror-symmetric subset).",
        f"4. Cache dtype: {first['storage_dtype']}; cache meta sha256 `{first['cache_meta_sha256']}`.",
        "5. Cells are the tie-aware expected metrics (the mean over all orders of tied items); R@K in %, "
        "MdR the median of expected ranks. Stable-sort, optimistic and pessimistic values are in the result "
        f"files. Stable-sort tie order: {first['tie_order']}. "
        "'tied queries': queries whose target ties another candidate.",
        f"6. Seeds: {json.dumps(seeds)}; mean ± std over seeds (std with ddof 1; 0 for one seed).",
        f"7. CIs: {CONFIDENCE:.0%} percentile bootstrap over queries of the seed-averaged per-query values, "
        f"{args.n_resamples} resamples, seed {args.seed} (scipy.stats.bootstrap). Pairwise: paired bootstrap CI "
        "of the difference; two-sided p from a paired sign-flip permutation test "
        f"(scipy.stats.permutation_test, {args.n_resamples} resamples); "
        "Holm–Bonferroni over all comparisons in the table.",
        "8. Sources: "
        + "; ".join(
            f"{m}: " + ", ".join(f"`{os.path.relpath(run['file'])}`" for run in runs) for m, runs in methods.items()
        )
        + ". All numbers: `report_numbers.json`.",
        "",
    ]


if __name__ == "__main__":
    main()
