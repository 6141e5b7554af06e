"""Markdown report with tables, CIs, pairwise tests and plots, from evaluate.py's result files.

    python report.py --results results/ --out report/

Results are grouped by dataset (the label evaluate.py gave: the dataset's name and split; one
section each) and, within a dataset, by the `method` each result file names; several files of one
method are its seeds, and must agree on every other setting (a zero-shot and a trained head, or two
frame counts, are two methods). Every number comes from a result's own arrays: each array must
match the sha256 its result recorded, and every metric in the JSON must recompute from them
(evaluation/results.py); a file that fails is refused, by name. Table cells are the tie-aware
expected metrics: mean ± std over seeds, then a 95% CI that draws the clusters (a query's video:
a record's captions together) and the seeds. Every test a dataset's section prints is one
Holm-Bonferroni family, stated with its size (reporting/stats.py). A methods table states how
each method was trained (what all share goes in one note), and a cost table what each stage took,
on which device. Writes OUT/report.md, the plots (PNG, each with a PDF twin), OUT/tables.tex for a
paper, OUT/results.csv, and OUT/report_numbers.json with every number in the tables.
"""

import argparse
import json
import os
from dataclasses import asdict
from pathlib import Path

from corpus.annotations import FORMATS, SPLITS
from corpus.feature_cache import SETUP, features_mismatch
from evaluation.conventions import CONVENTIONS, convention_description
from evaluation.postprocess import METHOD_SUFFIX
from evaluation.results import ResultError, file_label, read_result, seed_averaged
from infra import cli
from infra.cli import HelpFormatter, whole_number
from infra.file_io import (
    atomic_folder,
    atomic_write_bytes,
    atomic_write_csv,
    atomic_write_json,
    check_replaceable,
    exclusive_folder,
    remove_stale_outputs,
)
from infra.records import first_difference
from reporting import plots
from reporting.latex import dataset_tables
from reporting.published import PUBLISHED
from reporting.rtime_analyses import direction_split, order_sensitivity, paraphrase_drop
from reporting.seeds import CLUSTER_UNITS, binary_row, convention_row, method_row, pairwise
from reporting.stats import CONFIDENCE, METRICS, MIN_RESAMPLES, N_RESAMPLES, design_difference, run_family
from reporting.tables import (
    CSV_HEADER,
    DIRECTION_TITLES,
    POSTPROCESS_TITLES,
    backbone_table,
    binary_table,
    cell,
    code,
    convention_table,
    cost_table,
    csv_rows,
    direction_table,
    facts,
    family_note,
    md,
    mean_std_text,
    methods_table,
    metric_table,
    number,
    order_table,
    pairwise_table,
    paraphrase_table,
    postprocess_note,
    published_table,
    trivial_metrics,
)

# How a method was trained, as the methods table shows it: (column, reader of the training settings)
TRAINING_COLUMNS = (
    ("trained on", lambda s: Path(s["cache"]).name),
    ("frames read, at most", lambda s: s["frames"]),
    ("epochs", lambda s: s["epochs"]),
    ("batch", lambda s: s["batch_size"]),
    ("lr", lambda s: s["lr"]),
    ("weight decay", lambda s: s["weight_decay"]),
    ("warm-up", lambda s: s["warmup"]),
    ("reverse negatives", lambda s: "yes" if s["reverse_negatives"] else "no"),
    ("temperature", lambda s: temperature(s)),
    ("text input", lambda s: s["text_input"]),
    ("frames selected", lambda s: f"{s['select_frames']} learned" if s.get("select_frames") else "all"),
    ("started from", lambda s: Path(s["init_from"]).name if s.get("init_from") else "CLIP text layers"),
    ("selection", lambda s: s["selection_metric"]),
    ("settings chosen by", lambda s: s.get("settings_note", "given on the command line")),
)
# Training settings that may differ between the seeds of one method: the seed, and where files were.
PER_SEED_SETTINGS = {"seed", "clip", "backbone", "init_from", "cache", "cache_meta_sha256"}
BACKBONES_NOTE = (
    "Each cell is the head's number on that backbone's cache, as its dataset section below gives it (mean ± std "
    "over seeds [95% CI over clusters and seeds]); that section holds every metric, Binary, the analyses and the "
    "tests. Heads are compared within a backbone there; across backbones only these summaries are set side by side."
)


def temperature(settings):
    if settings["scores_are_logits"]:
        return "none (its score is a logit)"
    return f"{'learned from' if settings['learn_temp'] else 'fixed at'} {settings['logit_scale']:.4g}"


parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
parser.add_argument("--results", required=True, type=Path, help="folder of evaluate.py result files (*.json)")
parser.add_argument("--out", required=True, type=Path, help="folder for report.md, plots and report_numbers.json")
parser.add_argument(
    "--n-resamples",
    type=whole_number(MIN_RESAMPLES),
    default=N_RESAMPLES,
    help=f"bootstrap draws of each CI (at least {MIN_RESAMPLES}: fewer leave a 95%% CI's tails to chance); "
    "the tests draw more where their family needs it (docs/report.md)",
)
parser.add_argument("--seed", type=int, default=0, help="seed of the resampling")
parser.add_argument(
    "--cluster-by",
    choices=CLUSTER_UNITS,
    default="video",
    help="what every CI and test resamples as one unit: " + "; ".join(f"{k}: {v}" for k, v in CLUSTER_UNITS.items()),
)
parser.add_argument(
    "--examples",
    type=whole_number(1),
    default=None,
    help="N: also an HTML page (and a PNG) of the N Hard queries where the heads part ways, with their frames",
)
parser.add_argument(
    "--videos", type=Path, help="with --examples: the folder of the video files the cache was made from"
)
parser.add_argument(
    "--convention",
    action="append",
    choices=CONVENTIONS,
    default=[],
    help="also a table of each method under a peer's protocol, beside ours (repeatable; evaluation/conventions.py)",
)


def main(argv=None):
    args = parser.parse_args(argv)
    check_arguments(args)
    check_replaceable(args.out)  # before any work: a folder holding a user's files is never written over
    datasets = load_results(args.results)
    if args.examples:
        from reporting.examples import evaluated_cache  # torch, for decoding: only with --examples

        for methods in datasets.values():  # each page shows a cache's captions: it must be the one evaluated
            evaluated_cache(next(iter(methods.values()))[0])
    # the lock sits beside the folder, which is written whole under a temporary name, then swapped in
    with exclusive_folder(args.out.parent, f".{args.out.name}.lock"):
        remove_stale_outputs(args.out)  # what a report killed half-way left
        with atomic_folder(args.out, "report.py") as folder:
            write_report(datasets, args, folder)
    print(f"report: {args.out / 'report.md'}")


def check_arguments(args):
    """Refuse flags that make no sense together, before any work, naming them."""
    if args.examples and not args.videos:
        parser.error("--examples needs --videos: the frames are decoded again from the video files")


def write_report(datasets, args, folder):
    """Every file of the report into `folder` (links in them are relative to args.out, where it goes)."""
    methods_lines, method_numbers = methods_section(datasets)
    numbers = {"methods": method_numbers, "datasets": {}}
    lines = ["# Retrieval report", "", *methods_lines]
    stems = file_stems(datasets)
    colour_of = plots.method_colours(method_numbers)  # one colour per method in every figure
    sections = []
    for label, methods in datasets.items():
        section, numbers["datasets"][label] = dataset_section(label, methods, args, folder, stems[label], colour_of)
        sections += section
    backbone_lines, numbers["backbones"] = backbones_section(datasets, numbers["datasets"])
    lines += backbone_lines + sections
    trained = {method: info["trainings"] for method, info in method_numbers.items() if info["trainings"]}
    if trained:
        metrics = sorted({training["selection_metric"] for trainings in trained.values() for training in trainings})
        figure = plots.training_figure(trained, " / ".join(metrics), colour_of)
        name = plots.save_figure(figure, folder / "training_valid_r1_and_loss_by_epoch.png")
        lines += ["## Training", "", f"![validation R@1 and training loss by epoch]({name})", ""]
    lines += cost_table(cost_rows(datasets, method_numbers))
    lines += general_notes(args)
    for info in method_numbers.values():
        del info["trainings"]  # histories are in the result files; the numbers file keeps the tables
    atomic_write_json(folder / "report_numbers.json", numbers)
    atomic_write_bytes(folder / "report.md", "\n".join(lines).encode("utf-8"))
    write_paste_tables(datasets, numbers, folder)


def backbone_name(provenance):
    backbone = provenance["backbone"]
    return f"{backbone['source']} ({backbone['kind']})"


def backbones_section(datasets, dataset_numbers):
    """A heads × backbones table for each test set evaluated on caches of two or more backbones (the
    same annotation files and split: one dataset section per backbone holds its full statistics).
    Returns (markdown lines, numbers)."""
    groups = {}
    for label, methods in datasets.items():
        provenance = next(iter(methods.values()))[0].provenance
        key = (json.dumps(provenance["annotations"], sort_keys=True), provenance["split"])  # one test set
        groups.setdefault(key, {})[label] = backbone_name(provenance)
    lines, numbers = [], []
    for columns in groups.values():
        if len(set(columns.values())) < 2:
            continue
        methods = datasets[next(iter(columns))]
        split = next(iter(methods.values()))[0].provenance["split"]
        title = f"Backbones × heads: {split} split of {', '.join(md(label) for label in columns)}"
        group = {"columns": columns, "tables": {}, "binary": {}}
        for label in columns:
            for key, rows in dataset_numbers[label]["tables"].items():
                if key.endswith("/t2v"):
                    for method, row in rows.items():
                        group["tables"].setdefault(key, {}).setdefault(method, {})[label] = row
            for method, row in dataset_numbers[label]["binary"].items():
                group["binary"].setdefault(method, {})[label] = row
        lines += [f"## {title}", "", BACKBONES_NOTE, ""]
        for key, cells in group["tables"].items():
            title = f"{setting_title(methods, key.split('/')[0])}, text→video R@1"
            lines += backbone_table(title, columns, cells, lambda row: cell(row["R@1"], "R@1", row["n_seeds"]))
        if group["binary"]:
            title = "Binary: original vs its reversal, text→video accuracy"
            lines += backbone_table(
                title, columns, group["binary"], lambda row: mean_std_text(row["t2v"], row["n_seeds"])
            )
        numbers.append(group)
    return lines, numbers


def write_paste_tables(datasets, numbers, out_dir):
    """tables.tex (reporting/latex.py: every table of each dataset, for a two-column paper) and
    results.csv (tables.csv_rows: every table cell, Binary and the rewrites' R@1), post-processed
    methods apart."""
    latex_lines, csv_lines = [], []
    for label, dataset in numbers["datasets"].items():
        methods = datasets[label]
        all_tables = [dataset["tables"], *(group["tables"] for group in dataset.get("postprocessed", {}).values())]
        settings = list(dict.fromkeys(key.split("/")[0] for tables in all_tables for key in tables))
        titles = {setting: setting_title(methods, setting).split(": ")[-1] for setting in settings}
        candidates = setting_candidates(methods, settings)
        latex_lines += dataset_tables(label, dataset, titles, candidates, POSTPROCESS_TITLES)
        seeds = {m: [run.provenance["seed"] for run in runs] for m, runs in methods.items()}
        csv_lines += csv_rows(label, None, dataset, seeds, candidates)
        for post, group in dataset.get("postprocessed", {}).items():
            csv_lines += csv_rows(label, post, group, seeds, candidates)
    atomic_write_bytes(out_dir / "tables.tex", "\n".join(latex_lines).encode("utf-8"))
    atomic_write_csv(out_dir / "results.csv", CSV_HEADER, csv_lines)


def load_results(results_dir):
    """{dataset: {method: [Result, ...]}}, seeds in file order. Refuses, naming the file: a JSON
    that is not a result or that its arrays do not back, two caches under one dataset label, a
    method name given to two heads or to runs on one backbone that differ in more than the seed, a
    seed twice."""
    datasets, cache_of, identity_of, head_of, seen = {}, {}, {}, {}, {}
    files = sorted(results_dir.glob("*.json"))
    if not files:
        raise ResultError(f"no result files (*.json) in {results_dir}: run evaluate.py first")
    for path in files:
        result = read_result(path)
        provenance = result.provenance
        label, method = provenance["dataset"], provenance["method"]
        if cache_of.setdefault(label, provenance["cache_content_sha256"]) != provenance["cache_content_sha256"]:
            raise ResultError(
                f"{results_dir} mixes caches for dataset {label!r} ({path.name} was evaluated on other cache "
                "content): a section compares methods on the same queries; give each cache its own label "
                "(evaluate.py --cache PATH:SPLIT=LABEL, or extract.py --dataset)"
            )
        check_features(path, provenance)
        identity = method_identity(provenance)
        # a method is a head trained one way; on another backbone's cache it is the same method on other
        # features (a column of the backbones table), so its seeds agree within a backbone
        first_path, first_identity = identity_of.setdefault((method, backbone_name(provenance)), (path, identity))
        difference = first_difference(first_identity, identity, (f"{first_path.name} has", f"{path.name} has"))
        if difference:
            raise ResultError(
                f"method {method!r} names results that differ in {difference}: they are two methods, not "
                "seeds of one; give each its own evaluate.py --method"
            )
        first_path, head = head_of.setdefault(method, (path, provenance["head"]))
        if head != provenance["head"]:
            raise ResultError(
                f"method {method!r} names a {head} head in {first_path.name} and a {provenance['head']} head in "
                f"{path.name}: give each its own evaluate.py --method"
            )
        run = (label, method, provenance["seed"])
        if run in seen:
            raise ResultError(
                f"{path} and {seen[run]} are both {method!r} seed {provenance['seed']} on {label}: "
                "one result per seed (they would be averaged as two seeds)"
            )
        seen[run] = path.name
        datasets.setdefault(label, {}).setdefault(method, []).append(result)
    return datasets


def check_features(path, provenance):
    """A trained head's result must come from a cache of the features it was trained on (the one
    rule, heads/checkpoints.py's, applied again to what the result records)."""
    training = provenance["training"]
    if training is None:
        return
    mismatch = features_mismatch(
        training["settings"]["feature_contract"],
        provenance["feature_contract"],
        ("its training cache has", "the cache has"),
    )
    if mismatch:
        raise ResultError(f"{path}: the head was trained on other features than it was evaluated on ({mismatch})")


def setting_title(methods, setting):
    """The report's title of a setting, as the results' annotation format names it."""
    provenance = next(iter(methods.values()))[0].provenance
    return FORMATS[provenance["annotation_format"]].settings[setting].title


def setting_candidates(methods, settings):
    """{setting: the candidates each of its queries ranks} (the same for every method's results)."""
    first = next(iter(methods.values()))[0]
    return {setting: first.data[setting]["n_candidates"] for setting in settings}


def method_identity(provenance):
    """What makes a method: its head, zero-shot or trained, the frames it reads, and every training
    setting but the per-seed ones. Seeds of one method must share all of it."""
    training = provenance["training"]
    post = {
        "postprocess": provenance.get("postprocess"),
        "postprocess_settings": provenance.get("postprocess_settings"),
    }
    if training is None:
        return {"head": provenance["head"], "trained": False, "frames": provenance["frames"], **post}
    settings = {key: value for key, value in training["settings"].items() if key not in PER_SEED_SETTINGS}
    return {"trained": True, **post, **settings}


def methods_section(datasets):
    """The table of how each method was trained: settings that differ between methods as columns,
    the ones all share in a note; the selected epoch of each seed always shown."""
    info = {}
    for methods in datasets.values():
        for method, runs in methods.items():
            entry = info.setdefault(method, {"head": runs[0].provenance["head"], "trainings": {}, "backbones": {}})
            for run in runs:
                if run.provenance["training"]:  # one checkpoint evaluated on several datasets counts once
                    entry["trainings"][run.provenance["ckpt_sha256"]] = run.provenance["training"]
                    entry["backbones"][run.provenance["ckpt_sha256"]] = backbone_name(run.provenance)
                else:
                    entry["zero_shot_frames"] = run.provenance["frames"]
    for entry in info.values():
        entry["trainings"] = list(entry["trainings"].values())
        entry["settings"] = method_settings(entry)
        entry["selected_epochs"] = [training["selected_epoch"] for training in entry["trainings"]]
        entry["backbones"] = list(entry["backbones"].values())  # each training's, in the same order
    names = [name for name, _ in TRAINING_COLUMNS]
    trained = [entry for entry in info.values() if entry["trainings"]]
    shared = {
        name: trained[0]["settings"][name]
        for name in names
        if trained and len({str(entry["settings"][name]) for entry in trained}) == 1
    }
    differing = [name for name in names if name not in shared]
    shared_text = "; ".join(f"{name}: {md(number(value))}" for name, value in shared.items())
    lines = [
        "## Methods",
        "",
        *methods_table(info, differing),
        f"Shared by every trained method: {shared_text or 'nothing'}.",
        "",
    ]
    return lines, {
        method: {key: entry[key] for key in ("head", "settings", "selected_epochs", "trainings")}
        for method, entry in info.items()
    }


def check_enough_queries(run, settings):
    """Refuse a dataset whose setting has fewer than two queries in a direction: no confidence
    interval or test can be drawn from one value (a one-video test split)."""
    for setting in settings:
        for direction in ("t2v", "v2t"):
            count = run.data[setting].get(direction, {}).get("n_queries", 2)
            if count < 2:
                raise ResultError(
                    f"{run.path}: {setting} {direction} has {count} query; a confidence interval needs at least "
                    "two: evaluate on a split of more videos"
                )


def overlap_counts(methods):
    """{method: {"train": n, "valid": n}} of the methods evaluated with --allow-overlap on videos they
    were trained or selected on (evaluate.py refuses that by default)."""
    seen = {}
    for method, runs in methods.items():
        counts = [{split: len(ids) for split, ids in (run.provenance.get("overlap") or {}).items()} for run in runs]
        if any(sum(count.values()) for count in counts):
            seen[method] = {split: max(count.get(split, 0) for count in counts) for split in ("train", "valid")}
    return seen


def overlap_warning(seen, split):
    """A warning above a dataset's tables naming each method that saw its test videos."""
    if not seen:
        return []
    named = "; ".join(
        f"{md(method)} was trained on {count['train']} and selected its epoch on {count['valid']} of them"
        for method, count in seen.items()
    )
    return [
        f"**Not test scores:** some {split} videos were seen in training (evaluated with --allow-overlap): {named}. "
        "Their numbers measure memory, not retrieval of unseen videos.",
        "",
    ]


def method_settings(entry):
    """{column: value} of a method; values that differ between its seeds are joined with ' / '."""
    if not entry["trainings"]:
        zero_shot = {name: "—" for name, _ in TRAINING_COLUMNS}
        return {**zero_shot, "trained on": "— (zero-shot)", "frames read, at most": entry["zero_shot_frames"]}
    settings = {}
    for name, read in TRAINING_COLUMNS:
        values = list(dict.fromkeys(read(training["settings"]) for training in entry["trainings"]))
        settings[name] = values[0] if len(values) == 1 else " / ".join(str(value) for value in values)
    return settings


def dataset_section(label, methods, args, folder, stem, colour_of):
    """One dataset's tables, plots and notes; returns (markdown lines, numbers). Methods with a
    post-processing (DSL, QB-Norm) get tables of their own, never mixed with raw numbers. Every test
    the section prints (pairwise, direction, paraphrase, post-processed pairwise) is one family."""
    groups = {}
    for method, runs in methods.items():
        groups.setdefault(runs[0].provenance.get("postprocess"), {})[method] = runs
    raw = groups.pop(None, {})
    first = next(iter(methods.values()))[0]
    provenance = first.provenance
    annotation = FORMATS[provenance["annotation_format"]]
    # the format's settings, in its order, that the results hold; those run on request have analyses of their own
    settings = [name for name, rule in annotation.settings.items() if name in first.data and not rule.on_request]
    binary = next((name for name in settings if annotation.settings[name].binary), None)
    check_enough_queries(first, settings)
    numbers = {
        "tables": {},
        "binary": {},
        "sources": source_files(raw, args.out),
        "seen_test_videos": overlap_counts(methods),
    }
    tests = []  # every test of this dataset, for one Holm family
    if raw:
        numbers["tables"], numbers["binary"] = result_tables(raw, settings, binary, ("t2v", "v2t"), args)
        if len(raw) > 1:
            numbers["pairwise"] = pairwise(raw, settings, args.cluster_by)
            tests += numbers["pairwise"]
        numbers.update(analyses(raw, annotation, binary, args))
        tests += [row for name in ("direction_split", "paraphrase") for row in numbers.get(name, {}).values()]
    for post, group in groups.items():
        tables, binary_rows = result_tables(group, settings, binary, ("t2v",), args)
        numbers.setdefault("postprocessed", {})[post] = {
            "tables": tables,
            "binary": binary_rows,
            "pairwise": pairwise(group, settings, args.cluster_by) if len(group) > 1 else [],
            "settings": postprocess_settings(group),
            "sources": source_files(group, args.out),
        }
        tests += numbers["postprocessed"][post]["pairwise"]
    numbers["family"] = family_of_tests(tests, numbers, settings, args)
    lines = [f"## Dataset {md(label)}: {provenance['split']} split ({provenance['annotation_format']} annotations)", ""]
    lines += overlap_warning(numbers["seen_test_videos"], provenance["split"])
    if raw:
        lines += table_lines(raw, numbers, settings, ("t2v", "v2t"))
        lines += family_note(numbers["family"])
        if "pairwise" in numbers:
            lines += pairwise_table(numbers["pairwise"], numbers["family"])
        lines += analysis_lines(numbers, annotation)
        peers, peer_lines = peer_sections(raw, numbers, settings, binary, annotation, args)
        numbers.update(peers)
        lines += peer_lines
        lines += dataset_plots(label, stem, raw, numbers["tables"], settings, annotation, folder, colour_of)
        if args.examples and binary:
            # imported here: the page decodes frames again with extraction's decoder, which preprocesses
            # with torch; a report without --examples loads no torch at all
            from reporting.examples import write_examples

            page, picture = write_examples(label, raw, binary, args.videos, folder, args.examples, stem)
            lines += [f"Where the heads part ways: [{page}]({page})", "", f"![examples]({picture})", ""]
        elif args.examples:
            note = (
                f"Examples (--examples): not applicable to {label}: its {provenance['annotation_format']} annotations "
                "have no setting with each video's reversal among the candidates, where the page shows the heads "
                "part ways."
            )
            print(note)
            lines += [note, ""]
    for post, group in groups.items():
        post_numbers = numbers["postprocessed"][post]
        lines += [f"### {POSTPROCESS_TITLES[post]}", "", postprocess_note(post, post_numbers["settings"]), ""]
        lines += table_lines(group, post_numbers, settings, ("t2v",), POSTPROCESS_TITLES[post])
        if post_numbers["pairwise"]:
            lines += pairwise_table(post_numbers["pairwise"], numbers["family"])
    return lines + dataset_notes(methods, args), numbers


def family_of_tests(tests, numbers, settings, args):
    """Runs every test of a dataset as one family (reporting/stats.py `run_family`) and describes it:
    its size by kind, draws, level, resampling unit, and the design's detectable difference per
    setting from the raw pairwise comparisons."""
    family = run_family(tests, args.seed, args.n_resamples)
    family["kinds"] = {
        "pairwise": len(numbers.get("pairwise", [])),
        "direction": len(numbers.get("direction_split", {})),
        "paraphrase": len(numbers.get("paraphrase", {})),
        **{
            f"pairwise{METHOD_SUFFIX[post]}": len(group["pairwise"])
            for post, group in numbers.get("postprocessed", {}).items()
        },
    }
    family["unit"] = args.cluster_by
    family["design"] = {}
    for setting in settings:
        compared = [c for c in numbers.get("pairwise", []) if c["setting"] == setting]
        if compared:
            difference = design_difference(compared, len(tests))
            family["design"][setting] = {"difference": difference, "n_clusters": compared[0]["n_clusters"]}
    return family


def postprocess_settings(group):
    """What a post-processing was run with (the DSL temperature; QB-Norm's beta and bank), as the
    results record it, per method: {method: settings or None for a result from before they were recorded}."""
    return {method: runs[0].provenance.get("postprocess_settings") for method, runs in group.items()}


def source_files(methods, out_dir):
    """{method: its result files, relative to the report}."""
    return {method: [os.path.relpath(run.path, out_dir) for run in runs] for method, runs in methods.items()}


def result_tables(methods, settings, binary, directions, args):
    """(tables, Binary rows) of a group of methods: each setting and direction, and Binary where a
    setting (`binary`) has originals and reversals as candidates."""
    tables = {
        f"{setting}/{direction}": {
            method: method_row(runs, setting, direction, args.cluster_by, args.seed, args.n_resamples)
            for method, runs in methods.items()
        }
        for setting in settings
        for direction in directions
    }
    rows = {method: binary_row(runs, directions) for method, runs in methods.items()} if binary else {}
    return tables, rows


def table_lines(methods, numbers, settings, directions, prefix=""):
    """The markdown of result_tables' numbers."""
    lines = []
    first = next(iter(methods.values()))[0]
    for setting in settings:
        for direction in directions:
            title = f"{setting_title(methods, setting)}, {DIRECTION_TITLES[direction]}"
            title = f"{prefix}: {title}" if prefix else title
            rows = numbers["tables"][f"{setting}/{direction}"]
            lines += metric_table(title, rows, trivial_recall_note(first.data[setting]))
    if numbers["binary"]:
        lines += binary_table(numbers["binary"], directions)
    return lines


def analyses(methods, annotation, binary, args):
    """The direction split and bias (on the Binary setting), paraphrase robustness (a setting whose
    queries paraphrase another's) and order sensitivity, where the results hold them; their tests
    are left for the family to run."""
    numbers = {}
    runs_of = methods.values()
    if binary and all(binary in runs[0].data and runs[0].sides for runs in runs_of):
        numbers["direction_split"] = {m: direction_split(runs, binary) for m, runs in methods.items()}
    for setting, rule in annotation.settings.items():
        if rule.paraphrases_of and all(setting in runs[0].data for runs in runs_of):
            numbers["paraphrase"] = {
                m: paraphrase_drop(runs, rule.paraphrases_of, setting, args.cluster_by) for m, runs in methods.items()
            }
    if all("order" in runs[0].data for runs in runs_of):
        numbers["order_sensitivity"] = {m: order_sensitivity(runs) for m, runs in methods.items()}
    return numbers


def analysis_lines(numbers, annotation):
    lines = []
    if "direction_split" in numbers:
        lines += direction_table(numbers["direction_split"])
    if "paraphrase" in numbers:
        lines += paraphrase_table(numbers["paraphrase"])
    if "order_sensitivity" in numbers:
        lines += order_table(numbers["order_sensitivity"], annotation.settings[annotation.selection].title)
    return lines


def peer_sections(methods, numbers, settings, binary, annotation, args):
    """Each --convention's numbers beside ours, and the literature's figures where this dataset's test
    file is the one they were published on (reporting/published.py), with ours under their convention."""
    first = next(iter(methods.values()))[0]
    published = PUBLISHED.get((first.provenance.get("annotations") or {}).get("sha256"), ())
    names = list(dict.fromkeys([*args.convention, *(entry.convention for entry in published)]))
    rows = {name: {m: convention_row(runs, name) for m, runs in methods.items()} for name in names}
    columns = [(f"binary/{d}", f"Binary {DIRECTION_TITLES[d]}", "accuracy") for d in ("t2v", "v2t") if binary]
    columns += [
        (f"{setting}/{d}", f"{annotation.settings[setting].title.split(': ')[-1]} {DIRECTION_TITLES[d]} R@1", "R@1")
        for setting in settings
        for d in ("t2v", "v2t")
    ]
    ours = {
        m: {
            key: numbers["binary"][m][key.split("/")[1]]["mean"]
            if metric == "accuracy"
            else numbers["tables"][key][m]["R@1"]["mean"]
            for key, _, metric in columns
        }
        for m in methods
    }
    lines = []
    for name in args.convention:
        lines += convention_table(name, convention_description(name, binary is not None), columns, ours, rows[name])
    peers = {"conventions": rows} if rows else {}
    if published:
        videos = first.data[settings[0]]["n_candidates"]
        lines += published_table(published, {entry.convention: rows[entry.convention] for entry in published}, videos)
        peers["published"] = [asdict(entry) for entry in published]
    return peers, lines


def file_stems(datasets):
    """{dataset label: the start of its files' names}, "RTime test" -> "RTime_test_": two labels that
    read alike as file names ("a b", "a_b") get "-2", "-3" in turn, so no figure overwrites another's."""
    stems, taken = {}, set()
    for label in datasets:
        stem, count = file_label(label), 1
        while stem in taken:
            count += 1
            stem = f"{file_label(label)}-{count}"
        taken.add(stem)
        stems[label] = f"{stem}_"
    return stems


def dataset_plots(label, prefix, methods, tables, settings, annotation, out_dir, colour_of):
    titles = {setting: annotation.settings[setting].title.split(": ")[-1] for setting in settings}
    names = list(methods)
    candidates = setting_candidates(methods, settings)
    ranks = {s: {m: seed_averaged(methods[m], f"{s}/t2v", METRICS["MnR"][0]) for m in names} for s in settings}
    figures = [
        (
            "text→video recall at 1, 5, 10",
            "t2v_recall_at_1_5_10",
            plots.recall_figure(tables, names, settings, titles, label, candidates),
        ),
        ("text→video rank CDF", "t2v_rank_cdf", plots.rank_cdf_figure(ranks, settings, titles, colour_of, label)),
    ]
    contrast = annotation.reversal_contrast
    if contrast and set(contrast) <= set(settings):
        figures.append(
            (
                f"text→video R@1, {titles[contrast[0]]} to {titles[contrast[1]]}",
                f"t2v_r1_{contrast[0]}_to_{contrast[1]}",
                plots.contrast_figure(tables, names, contrast, titles, colour_of, label),
            )
        )
    lines = []
    for caption, stem, figure in figures:
        lines.append(f"![{caption}]({plots.save_figure(figure, out_dir / f'{prefix}{stem}.png')})")
    return lines + [""]


def trivial_recall_note(setting_result):
    """A footnote when R@K cannot fail: K at least the candidates a query ranks."""
    n_candidates = setting_result.get("n_candidates")
    trivial = trivial_metrics(n_candidates)
    if not trivial:
        return ""
    names, verb = " and ".join(trivial), "is" if len(trivial) == 1 else "are"
    return f"Each query ranks only {n_candidates} candidates here, so {names} {verb} 100 for any method."


def spread_text(spread):
    low, high = spread["min"], spread["max"]
    return f"{low}" if low == high else f"{low}–{high} (median {spread['median']:g})"


def dataset_notes(methods, args):
    first = next(iter(methods.values()))[0].provenance
    sampling, backbone = first["sampling"], first["backbone"]
    seen = "; ".join(f"{md(m)}: {spread_text(runs[0].provenance['frames_seen'])}" for m, runs in methods.items())
    seeds = "; ".join(
        f"{md(m)}: "
        + ", ".join("— (zero-shot)" if run.provenance["seed"] is None else str(run.provenance["seed"]) for run in runs)
        for m, runs in methods.items()
    )
    sources = "; ".join(
        f"{md(m)}: " + ", ".join(code(os.path.relpath(run.path, args.out)) for run in runs)
        for m, runs in methods.items()
    )
    return [
        f"- Backbone: {backbone_text(backbone)}; compute: {facts(first['compute'])}.",
        f"- Preprocessing: {facts(first['preprocessing'])}.",
        f"- Frame sampling: fps {sampling['fps']}, t_max {sampling['t_max']}, rule: {sampling['rule']}.",
        f"- Captions: {captions_text(first)}",
        f"- Frames cached per video: {spread_text(first['frames_cached'])}. Frames each head read per video "
        f"(an evenly spaced, mirror-symmetric subset where it reads fewer than cached): {seen}.",
        f"- Cache dtype: {first['storage_dtype']}; cache content sha256 `{first['cache_content_sha256']}`.",
        f"- Seeds: {seeds}. Sources (relative to this report): {sources}.",
        "",
    ]


def backbone_text(backbone):
    """The backbone a dataset's features come from: its name, kind and library, weights and shape."""
    weights = backbone["weights_sha256"]
    weights = f"`{weights}`" if isinstance(weights, str) else facts(weights)
    return (
        f"{code(backbone['source'])} ({backbone['kind']}, {md(backbone['library'])}), weights sha256 {weights}, "
        f"{backbone['parameters']:,} parameters, width {backbone['embed_dim']}, "
        f"{'token features' if backbone['token_features'] else 'no token features'}; "
        f"config: {facts(backbone['config'])}"
    )


def captions_text(provenance):
    """What the queries are: one per annotated caption or a video's sentences joined (paragraph
    mode), and how a caption longer than the text encoder's context was read (the long-text rule)."""
    annotations, tokenizer = provenance["annotations"], provenance["feature_contract"]["tokenizer"]
    length, counted = tokenizer["context_length"], provenance.get("captions")
    if annotations.get("paragraphs"):
        queries = "paragraph mode (extract.py --paragraphs): each video's sentences joined into its one caption"
    else:
        queries = "one query per annotated caption (no paragraph mode)"
    if tokenizer.get("long_text") == "windows":  # caches from before --long-text existed truncated
        rule = f"read whole, as the mean of the embeddings of its {length}-token windows (--long-text windows)"
    elif counted:
        rule = (
            f"cut to its first {length}, as CLIP4Clip does (--long-text truncate): {counted['truncated']} of this "
            f"split's {counted['count']} captions were cut"
        )
    else:
        rule = f"cut to its first {length}, as CLIP4Clip does (--long-text truncate; how many not recorded)"
    return f"{queries}; a caption over {length} tokens is {rule}."


def cost_rows(datasets, method_numbers):
    """(stage, what, device, seconds, of which start-up) from the result files: each cache's
    extraction, split by split, and its set-up (process start, CLIP, annotations, the video index);
    training of each method (all epochs of all seeds, and each process's start before its first
    epoch); evaluation of each method on each dataset (with its process's start)."""
    rows, caches = [], set()
    for label, methods in datasets.items():
        provenance = next(iter(methods.values()))[0].provenance
        if provenance["cache_content_sha256"] in caches:
            continue  # two datasets of one cache (its valid and test splits): its extraction once
        caches.add(provenance["cache_content_sha256"])
        rows += extraction_rows(label, provenance)
    for method, info in method_numbers.items():
        epochs = [record for training in info["trainings"] for record in training["history"]]
        if epochs:
            devices = sorted({record.get("device", "?") for record in epochs})
            startup = recorded_startup(epochs)
            rows.append(
                (
                    "train",
                    f"{method} ({len(info['trainings'])} seed(s), {len(epochs)} epochs)",
                    ", ".join(devices),
                    sum(record.get("seconds", 0.0) for record in epochs) + (startup or 0.0),
                    startup,
                )
            )
    for label, methods in datasets.items():
        for method, runs in methods.items():
            costs = [run.provenance["cost"]["evaluate"] for run in runs]
            startup = recorded_startup(costs)
            rows.append(
                (
                    "evaluate",
                    f"{method} on {label} ({len(runs)} seed(s))",
                    costs[0]["device"],
                    sum(cost["seconds"] for cost in costs) + (startup or 0.0),
                    startup,
                )
            )
    return rows


def recorded_startup(records):
    """The start-up seconds the records hold, summed; None where none holds it (results from before
    it was recorded: the table says "—", not 0)."""
    values = [record["startup_seconds"] for record in records if "startup_seconds" in record]
    return sum(values) if values else None


def extraction_rows(label, provenance):
    """The cost rows of the extraction of a dataset's cache: every split it holds, and its set-up."""
    timings = provenance["cost"]["extract"]
    if not timings:
        return [("extract", f"{label}'s cache", "not recorded", None, None)]
    if "seconds" in timings:  # a result from before every split was recorded: its own split's
        timings = {provenance["split"]: timings}
    rows = []
    for split in sorted(timings, key=[SETUP, *SPLITS].index):  # set-up first, then the splits in order
        timing = timings[split]
        if split == SETUP:
            what = f"{label}'s cache: set-up ({timing['starts']} process start(s), CLIP, annotations, video index)"
            rows.append(("extract", what, timing["device"], timing["seconds"], timing["seconds"]))
        else:
            what = f"{label}'s cache: {split} split ({timing['videos']} videos, {timing['frames']} frames)"
            rows.append(("extract", what, timing["device"], timing["seconds"], None))
    return rows


def general_notes(args):
    return [
        "## Notes",
        "",
        "1. The CLIP backbone is frozen: its features were extracted once into the cache, and only the heads "
        "(and a learned temperature) were trained, on those features.",
        "2. Cells are the tie-aware expected metrics (the mean over all orders of tied items); R@K in %, MdR the "
        "median of expected ranks. Stable-sort, optimistic and pessimistic values are in the result files, with the "
        "stable-sort tie order. 'tied queries': queries whose target ties another candidate. Mean ± std over seeds "
        "(std with ddof 1; a one-seed method shows its value alone).",
        "3. Video→text follows CLIP4Clip: each candidate's caption set is scored by its best caption, and a video's "
        "query is right when its own set ranks first (the result files also hold `v2t_per_caption`, which ranks "
        "single captions).",
        f"4. CIs ({CONFIDENCE:.0%}, percentile, {args.n_resamples} draws, seed {args.seed}): a two-level bootstrap "
        f"that draws the clusters (unit: {CLUSTER_UNITS[args.cluster_by]}) and, for a method with two seeds or "
        "more, its seeds, then takes the cell's statistic (MdR: the mean of the drawn seeds' medians); for one seed "
        "the checkpoint is held fixed. The tests of each dataset form one family, stated above its pairwise table.",
        "5. Every number was recomputed from the per-query arrays each result names by sha256. All numbers: "
        "`report_numbers.json`; the tables to paste: `tables.tex` (booktabs) and `results.csv`.",
        "",
    ]


if __name__ == "__main__":
    cli.run(main)
