"""Markdown report with tables, CIs, pairwise tests and plots, from evaluate.py's result files.

    python report.py --results results/ --out report/

Results are grouped by dataset (the cache folder and split they were evaluated on; one section
each) and, within a dataset, by the `method` each result file names; several files of one method
are its seeds. Table cells are the tie-aware expected metrics: mean ± std over seeds, then a 95%
query-level bootstrap CI of the seed-averaged per-query values. A methods table states how each
method was trained (what all share goes in one note). Writes OUT/report.md, the PNG plots, and
OUT/report_numbers.json with every number in the tables. Reads nothing but the result files.
"""

import argparse
import itertools
import json
import os
from pathlib import Path

import numpy as np

from evaluation.report_plots import dataset_plots, seed_averaged, training_curves
from evaluation.retrieval_stats import CONFIDENCE, METRICS, N_RESAMPLES, bootstrap_ci, holm_adjust, paired_difference
from infra.file_io import atomic_write_bytes, atomic_write_json
from infra.runtime import HelpFormatter

SETTING_TITLES = {"origin": "Table A: RTime-Origin", "hard": "Table B: RTime-Hard", "all": "Retrieval, all captions"}
DIRECTION_TITLES = {"t2v": "text→video", "v2t": "video→text"}
# How a method was trained, as the methods table shows it: (column, reader of the training settings)
TRAINING_COLUMNS = (
    ("trained on", lambda s: Path(s["cache"]).name),
    ("frames", lambda s: s["frames"]),
    ("epochs", lambda s: s["epochs"]),
    ("batch", lambda s: s["batch_size"]),
    ("lr", lambda s: s["lr"]),
    ("weight decay", lambda s: s["weight_decay"]),
    ("warm-up", lambda s: s["warmup"]),
    ("reverse negatives", lambda s: "yes" if s["reverse_negatives"] else "no"),
    ("temperature", lambda s: f"{'learned from' if s['learn_temp'] else 'fixed at'} {s.get('logit_scale', 100):.4g}"),
    ("text input", lambda s: s["text_input"]),
    ("frames selected", lambda s: f"{s['select_frames']} learned" if s.get("select_frames") else "all"),
    ("started from", lambda s: Path(s["init_from"]).name if s.get("init_from") else "CLIP text layers"),
    ("selection", lambda s: s["selection_metric"]),
    ("settings chosen by", lambda s: s.get("settings_note", "given on the command line")),
)


parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
parser.add_argument("--results", required=True, type=Path, help="folder of evaluate.py result files (*.json)")
parser.add_argument("--out", required=True, type=Path, help="folder for report.md, plots and report_numbers.json")
parser.add_argument(
    "--n-resamples", type=int, default=N_RESAMPLES, help="bootstrap and permutation resamples (>= 1000)"
)
parser.add_argument("--seed", type=int, default=0, help="seed of the resampling")


def main(argv=None):
    args = parser.parse_args(argv)
    datasets = load_results(args.results)
    args.out.mkdir(parents=True, exist_ok=True)
    methods_table, method_numbers = methods_section(datasets)
    numbers = {"methods": method_numbers, "datasets": {}}
    lines = ["# Retrieval report", "", *methods_table]
    for label, methods in datasets.items():
        section, numbers["datasets"][label] = dataset_section(label, methods, args)
        lines += section
    trained = {method: info["trainings"] for method, info in method_numbers.items() if info["trainings"]}
    if trained:
        lines += [f"![training curves]({training_curves(trained, args.out)})", ""]
    lines += general_notes(args)
    for info in method_numbers.values():
        del info["trainings"]  # histories are in the result files; the numbers file keeps the tables
    atomic_write_json(args.out / "report_numbers.json", numbers)
    atomic_write_bytes(args.out / "report.md", "\n".join(lines).encode("utf-8"))
    print(f"report: {args.out / 'report.md'}")


def load_results(results_dir):
    """{dataset: {method: [{"file", "result", "per_query": {setting/direction: columns}}]}}, seeds in
    file order. Refuses, naming the file: a JSON that is not a result, a non-finite number, two
    caches under one dataset name, a method name given to two heads, and a seed given twice."""
    datasets, cache_of, head_of, seen = {}, {}, {}, {}
    files = sorted(results_dir.glob("*.json"))
    if not files:
        raise SystemExit(f"no result files (*.json) in {results_dir}: run evaluate.py first")
    for path in files:
        result, per_query = read_result(path)
        provenance = result["provenance"]
        label, method = provenance["dataset"], provenance["method"]
        if cache_of.setdefault(label, provenance["cache_meta_sha256"]) != provenance["cache_meta_sha256"]:
            raise SystemExit(
                f"{results_dir} mixes caches for dataset {label!r} ({path.name} was evaluated on another "
                "cache_meta.json): a section compares methods on the same queries"
            )
        if head_of.setdefault(method, provenance["head"]) != provenance["head"]:
            raise SystemExit(
                f"{path}: method {method!r} is a {provenance['head']} here and a {head_of[method]} in "
                "another result; give each head its own --method name"
            )
        run = (label, method, provenance["seed"])
        if run in seen:
            raise SystemExit(
                f"{path} and {seen[run]} are both {method!r} seed {provenance['seed']} on {label}: "
                "one result per seed (they would be averaged as two seeds)"
            )
        seen[run] = path.name
        methods = datasets.setdefault(label, {})
        methods.setdefault(method, []).append({"file": str(path), "result": result, "per_query": per_query})
    return datasets


def read_result(path):
    """A result file and its per-query arrays, or a refusal naming the file and what is wrong."""
    try:
        result = json.loads(path.read_text())
        provenance = result["provenance"]
        columns, arrays = provenance["per_query_columns"], provenance["arrays"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise SystemExit(
            f"{path} is not an evaluate.py result (no provenance with per-query arrays); "
            "keep only result files in the results folder"
        ) from None
    bad = first_non_finite(result)
    if bad:
        raise SystemExit(f"{path}: {bad} is not a finite number; no table is made from it")
    per_query = {}
    for key, array_path in arrays.items():
        if key.endswith("_per_query"):
            table = np.load(array_path)
            if not np.isfinite(table).all():
                raise SystemExit(f"{path}: its per-query array {array_path} holds NaN or Inf")
            per_query[key[: -len("_per_query")].replace("_", "/", 1)] = {c: table[:, i] for i, c in enumerate(columns)}
    return result, per_query


def first_non_finite(value, where="result"):
    """The path of the first NaN or infinite number in a JSON value, or None."""
    if isinstance(value, float) and not np.isfinite(value):
        return where
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    return next((found for key, child in children if (found := first_non_finite(child, f"{where}.{key}"))), None)


def methods_section(datasets):
    """The table of how each method was trained: settings that differ between methods as columns,
    the ones all share in a note; the selected epoch of each seed always shown."""
    info = {}
    for methods in datasets.values():
        for method, runs in methods.items():
            entry = info.setdefault(method, {"head": runs[0]["result"]["provenance"]["head"], "trainings": {}})
            for run in runs:
                provenance = run["result"]["provenance"]
                if provenance["training"]:  # one checkpoint evaluated on several datasets counts once
                    entry["trainings"][provenance["ckpt_sha256"]] = provenance["training"]
                else:
                    entry["zero_shot_frames"] = provenance["frames"]
    for entry in info.values():
        entry["trainings"] = list(entry["trainings"].values())
        entry["settings"] = method_settings(entry)
        entry["selected_epochs"] = [training["selected_epoch"] for training in entry["trainings"]]
    names = [name for name, _ in TRAINING_COLUMNS]
    trained = [entry for entry in info.values() if entry["trainings"]]
    shared = {
        name: trained[0]["settings"][name]
        for name in names
        if trained and len({entry["settings"][name] for entry in trained}) == 1
    }
    differing = [name for name in names if name not in shared]
    lines = [
        "## Methods",
        "",
        "| Method | head | " + " | ".join(differing + ["selected epoch per seed"]) + " |",
        "|---" * (3 + len(differing)) + "|",
    ]
    for method, entry in info.items():
        cells = [str(entry["settings"][name]) for name in differing]
        epochs = ", ".join(str(epoch) for epoch in entry["selected_epochs"]) or "— (zero-shot)"
        lines.append(f"| {method} | {entry['head']} | " + " | ".join(cells + [epochs]) + " |")
    shared_text = "; ".join(f"{name}: {value}" for name, value in shared.items())
    lines += ["", f"Shared by every trained method: {shared_text or 'nothing'}.", ""]
    return lines, {
        method: {key: entry[key] for key in ("head", "settings", "selected_epochs", "trainings")}
        for method, entry in info.items()
    }


def method_settings(entry):
    """{column: value} of a method; values that differ between its seeds are joined with ' / '."""
    if not entry["trainings"]:
        zero_shot = {name: "—" for name, _ in TRAINING_COLUMNS}
        return {**zero_shot, "trained on": "— (zero-shot)", "frames": entry["zero_shot_frames"]}
    settings = {}
    for name, read in TRAINING_COLUMNS:
        values = list(dict.fromkeys(read(training["settings"]) for training in entry["trainings"]))
        settings[name] = values[0] if len(values) == 1 else " / ".join(str(value) for value in values)
    return settings


def dataset_section(label, methods, args):
    """One dataset's tables, plots and notes; returns (markdown lines, numbers)."""
    first = next(iter(methods.values()))[0]["result"]
    provenance = first["provenance"]
    settings = [name for name in ("origin", "hard", "all") if name in first]
    numbers = {"tables": {}, "binary": {}, "sources": {m: [r["file"] for r in runs] for m, runs in methods.items()}}
    lines = [f"## Dataset {label}: {provenance['split']} split ({provenance['annotation_format']} annotations)", ""]
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
    titles = {setting: SETTING_TITLES[setting].split(": ")[-1] for setting in settings}
    plots = dataset_plots(methods, numbers["tables"], settings, titles, args.out, prefix=f"{label}_")
    lines += [f"![{name}]({name})" for name in plots] + [""]
    return lines + dataset_notes(methods), numbers


def mean_std(per_seed):
    """Mean and sample standard deviation (ddof 1) over seeds; 0 for a single seed."""
    return {"mean": float(np.mean(per_seed)), "std": float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else 0.0}


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
        f"### {title}",
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
        "### Binary: original vs its reversal",
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
        "### Pairwise comparisons (text→video R@1, expected)",
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


def dataset_notes(methods):
    first = next(iter(methods.values()))[0]["result"]["provenance"]
    sampling, clip = first["sampling"], first["clip"]
    frames = sorted({run["result"]["provenance"]["frames"] for runs in methods.values() for run in runs})
    seeds = {m: [run["result"]["provenance"]["seed"] for run in runs] for m, runs in methods.items()}
    sources = "; ".join(
        f"{m}: " + ", ".join(f"`{os.path.relpath(run['file'])}`" for run in runs) for m, runs in methods.items()
    )
    return [
        f"- CLIP checkpoint: `{clip['file']}`, sha256 `{clip['sha256']}`, config {json.dumps(clip['config'])}; "
        f"compute {first['compute']}.",
        f"- Preprocessing: {json.dumps(first['preprocessing'])}.",
        f"- Frame sampling: fps {sampling['fps']}, t_max {sampling['t_max']}, rule: {sampling['rule']}. "
        f"Frames used by the heads: {frames} (evenly spaced, mirror-symmetric subset).",
        f"- Cache dtype: {first['storage_dtype']}; cache `{first['cache']}`, "
        f"meta sha256 `{first['cache_meta_sha256']}`.",
        f"- Seeds: {json.dumps(seeds)}. Sources: {sources}.",
        "",
    ]


def general_notes(args):
    return [
        "## Notes",
        "",
        "1. The CLIP backbone is frozen: its features were extracted once into the cache, and only the heads "
        "(and a learned temperature) were trained, on those features.",
        "2. Cells are the tie-aware expected metrics (the mean over all orders of tied items); R@K in %, MdR the "
        "median of expected ranks. Stable-sort, optimistic and pessimistic values are in the result files, with the "
        "stable-sort tie order. 'tied queries': queries whose target ties another candidate. Mean ± std over seeds "
        "(std with ddof 1; 0 for one seed).",
        "3. Video→text follows CLIP4Clip: each candidate's caption set is scored by its best caption, and a video's "
        "query is right when its own set ranks first (the result files also hold `v2t_per_caption`, which ranks "
        "single captions).",
        f"4. CIs: {CONFIDENCE:.0%} percentile bootstrap over queries of the seed-averaged per-query values, "
        f"{args.n_resamples} resamples, seed {args.seed} (scipy.stats.bootstrap). Pairwise: paired bootstrap CI of "
        "the difference; two-sided p from a paired sign-flip permutation test (scipy.stats.permutation_test, "
        f"{args.n_resamples} resamples); Holm–Bonferroni over the comparisons of each dataset.",
        "5. All numbers: `report_numbers.json`.",
        "",
    ]


if __name__ == "__main__":
    main()
