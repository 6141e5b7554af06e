"""report.py: every number from its result files, and every refusal."""

import csv
import json
import re
import shutil

import numpy as np
import pytest

import evaluate
import extract
import report
import train_head
from evaluation.results import ResultError, read_result
from infra.file_io import ForeignFiles, OutOfSpace
from reporting.seeds import query_clusters
from reporting.stats import METRICS, bootstrap_cis
from reporting.tables import CI_DIGITS
from tests.helpers import copied, extract_args, order_only_cache, result_json, train_args, usage_error


def table_cells(markdown, title):
    """{method: [cell text, ...]} of the markdown table under the heading `title`."""
    table = markdown.split(f" {title}\n", 1)[1].strip().split("\n\n", 1)[0]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines()[2:]]
    return {row[0]: row[1:] for row in rows}


def test_report_numbers_equal_the_result_files(evaluated, tmp_path):
    _, results = evaluated
    report.main(["--results", str(results), "--out", str(tmp_path / "report")])
    markdown = (tmp_path / "report" / "report.md").read_text()
    files = {"meanP zero-shot": ["meanP"], "seqTransf": ["seqTransf_seed0", "seqTransf_seed1"]}
    for setting, title in (
        ("origin", "Table A: RTime-Origin, text→video"),
        ("hard", "Table B: RTime-Hard, text→video"),
    ):
        cells = table_cells(markdown, title)
        for method, names in files.items():
            runs = [result_json(results, name) for name in names]
            per_query = [np.load(results / name / f"{setting}_t2v_per_query.npy") for name in names]
            # every metric's CI from one draw of the clusters (a record's captions) and the seeds
            clusters = query_clusters(read_result(results / f"{names[0]}.json"), f"{setting}/t2v", "video")
            sources = [
                1 if metric in ("MdR", "MnR") else 4 + ("R@1", "R@5", "R@10").index(metric) for metric in METRICS
            ]
            values = [
                (np.stack([table[:, column] for table in per_query]), METRICS[m][1])
                for column, m in zip(sources, METRICS, strict=True)
            ]
            cis = bootstrap_cis(values, clusters, seed=0)
            for column, (metric, (low, high)) in enumerate(zip(METRICS, cis, strict=True)):
                per_seed = [run[setting]["t2v"]["expected"][metric] for run in runs]
                # a one-seed method has no spread to show: its value alone, never "± 0.00"
                spread = f" ± {np.std(per_seed, ddof=1):.2f}" if len(per_seed) > 1 else ""
                digits = CI_DIGITS[metric]
                assert cells[method][column] == f"{np.mean(per_seed):.2f}{spread} [{low:.{digits}f}, {high:.{digits}f}]"
            assert cells[method][5] == f"{runs[0][setting]['t2v']['n_tied']}/{runs[0][setting]['t2v']['n_queries']}"
    binary = table_cells(markdown, "Binary: original vs its reversal")
    assert binary["meanP zero-shot"][0] == f"{result_json(results, 'meanP')['binary']['t2v']['accuracy']:.2f}"
    for plot in (
        "synthetic_test_t2v_recall_at_1_5_10.png",
        "synthetic_test_t2v_rank_cdf.png",
        "synthetic_test_t2v_r1_origin_to_hard.png",
        "training_valid_r1_and_loss_by_epoch.png",
    ):
        assert (tmp_path / "report" / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (tmp_path / "report" / plot).with_suffix(".pdf").read_bytes()[:5] == b"%PDF-"  # its vector twin
    assert re.search(r"sha256 `[0-9a-f]{64}`", markdown)
    numbers = json.loads((tmp_path / "report" / "report_numbers.json").read_text())
    pairwise = numbers["datasets"]["synthetic test"]["pairwise"]
    assert [(c["setting"], c["a"], c["b"]) for c in pairwise] == [
        ("origin", "meanP zero-shot", "seqTransf"),
        ("hard", "meanP zero-shot", "seqTransf"),
    ]
    assert all(c["p_holm"] >= c["p"] for c in pairwise)


def test_report_refuses_results_of_different_caches(evaluated, tmp_path):
    _, results = evaluated
    mixed = tmp_path / "mixed"
    shutil.copytree(results, mixed)
    result = result_json(mixed, "meanP")
    result["provenance"]["cache_content_sha256"] = "0" * 64
    (mixed / "meanP.json").write_text(json.dumps(result))
    with pytest.raises(ResultError, match="mixes caches for dataset .synthetic test."):
        report.main(["--results", str(mixed), "--out", str(tmp_path / "report")])


def test_report_states_how_each_method_was_trained(evaluated, tmp_path):
    cache, results = evaluated
    # a third method trained differently: the differences become columns, the rest one note
    run = tmp_path / "seqTransf_lr"
    train_head.main(
        [
            "--cache",
            str(cache),
            "--head",
            "seqTransf",
            "--out",
            str(run),
            "--clip",
            str(cache.parent / "clip.pt"),
            "--epochs",
            "2",
            "--batch-size",
            "16",
            "--lr",
            "3e-4",
        ]
    )
    mixed = tmp_path / "results"
    shutil.copytree(results, mixed)
    evaluate.main(
        [
            "--cache",
            str(cache),
            "--ckpt",
            str(run / "best.pt"),
            "--method",
            "seqTransf-lr3e-4",
            "--out",
            str(mixed / "seqTransf_lr.json"),
        ]
    )
    report.main(["--results", str(mixed), "--out", str(tmp_path / "report")])
    markdown = (tmp_path / "report" / "report.md").read_text()
    methods = table_cells(markdown, "Methods")
    header = markdown.split("## Methods\n", 1)[1].strip().splitlines()[0]
    columns = [cell.strip() for cell in header.strip("|").split("|")][1:]
    trained = {
        name: result_json(results, name)["provenance"]["training"] for name in ("seqTransf_seed0", "seqTransf_seed1")
    }
    assert methods["seqTransf"][columns.index("selected epoch per seed")] == ", ".join(
        str(trained[name]["selected_epoch"]) for name in ("seqTransf_seed0", "seqTransf_seed1")
    )
    for column, expected in (("epochs", ("3", "2", "—")), ("lr", ("1e-4", "3e-4", "—"))):
        assert [
            methods[m][columns.index(column)] for m in ("seqTransf", "seqTransf-lr3e-4", "meanP zero-shot")
        ] == list(expected)
    assert methods["meanP zero-shot"][columns.index("selected epoch per seed")] == "— (zero-shot)"
    note = markdown.split("Shared by every trained method: ", 1)[1].split("\n", 1)[0]
    shared = dict(item.split(": ", 1) for item in note.rstrip(".").split("; "))
    assert shared["text input"] == "pooled" and shared["batch"] == "16"
    assert "lr" not in shared and "epochs" not in shared
    assert "The CLIP backbone is frozen" in markdown
    assert "valid hard text->video R@1" in markdown  # the selection metric names its setting


def test_report_refuses_a_result_with_a_non_finite_number(small_clip, tmp_path):
    cache = order_only_cache(small_clip, tmp_path / "cache", n_train=8, n_valid=4, n_test=6, n_frames=4)
    results = tmp_path / "results"
    evaluate.main(["--cache", str(cache), "--head", "meanP", "--out", str(results / "meanP.json")])
    result = json.loads((results / "meanP.json").read_text())
    result["hard"]["t2v"]["expected"]["R@1"] = float("nan")
    (results / "meanP.json").write_text(json.dumps(result))
    with pytest.raises(ResultError, match=r"meanP.json: result.hard.t2v.expected.R@1 is not a finite number"):
        report.main(["--results", str(results), "--out", str(tmp_path / "report")])


@pytest.fixture(scope="module")
def two_results(small_clip, tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    cache = order_only_cache(small_clip, root / "cache", n_train=16, n_valid=4, n_test=6, n_frames=4)
    train_head.main(
        train_args(cache, small_clip, root / "run", "mlpScore", "--epochs", "1", "--batch-size", "8", batch_size=16)
    )
    results = root / "results"
    evaluate.main(["--cache", str(cache), "--head", "meanP", "--out", str(results / "meanP.json")])
    evaluate.main(["--cache", str(cache), "--ckpt", str(root / "run" / "best.pt"), "--out", str(results / "mlp.json")])
    return results


def test_report_refuses_one_seed_twice(two_results, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(two_results, results)
    shutil.copy(results / "mlp.json", results / "mlp_again.json")
    with pytest.raises(ResultError, match=r"mlp.json are both 'mlpScore' seed 0 .*would be averaged as two seeds"):
        report.main(["--results", str(results), "--out", str(tmp_path / "report")])


def test_report_refuses_one_method_name_for_two_heads(two_results, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(two_results, results)
    result = json.loads((results / "meanP.json").read_text())
    result["provenance"]["method"] = "mlpScore"
    (results / "meanP.json").write_text(json.dumps(result))
    with pytest.raises(ResultError, match="method 'mlpScore' names results that differ in .* two methods, not seeds"):
        report.main(["--results", str(results), "--out", str(tmp_path / "report")])


def test_report_names_an_unrelated_json_file(two_results, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(two_results, results)
    (results / "notes.json").write_text('{"todo": "rerun"}')
    with pytest.raises(ResultError, match="notes.json is not an evaluate.py result"):
        report.main(["--results", str(results), "--out", str(tmp_path / "report")])


def test_a_hand_edited_metric_is_refused_naming_the_file_and_key(order, tmp_path):
    results = copied(order / "results", tmp_path / "results")
    data = json.loads((results / "seqTransf.json").read_text())
    data["hard"]["t2v"]["expected"]["R@1"] += 10.0
    (results / "seqTransf.json").write_text(json.dumps(data))
    with pytest.raises(
        ResultError,
        match=r"seqTransf.json: hard.t2v.expected.R@1: the file says .*, its arrays give .*, which its per-query",
    ):
        report.main(["--results", str(results), "--out", str(tmp_path / "report")])
    assert not (tmp_path / "report" / "report.md").exists()


def test_arrays_overwritten_by_another_evaluation_are_refused(order, tmp_path):
    results = copied(order / "results", tmp_path / "results")
    shutil.rmtree(results / "seqTransf")
    shutil.copytree(results / "meanP", results / "seqTransf")  # same names, another run's values
    with pytest.raises(
        ResultError, match=r"seqTransf.json: its array .*/seqTransf/\w+\.npy is not the one it was computed with"
    ):
        report.main(["--results", str(results), "--out", str(tmp_path / "report")])


def test_a_missing_per_query_array_is_named(order, tmp_path):
    results = copied(order / "results", tmp_path / "results")
    (results / "meanP" / "hard_t2v_per_query.npy").unlink()
    with pytest.raises(ResultError, match=r"meanP.json: its array hard_t2v_per_query \(.*\) is missing"):
        report.main(["--results", str(results), "--out", str(tmp_path / "report")])


def test_a_zero_shot_and_a_trained_head_are_never_seeds_of_one_method(order, tmp_path):
    results = copied(order / "results", tmp_path / "results")
    run = tmp_path / "meanP_trained"
    train_head.main(
        train_args(order / "cache", order / "clip.pt", run, "meanP", "--learn-temp", "--epochs", "1", batch_size=8)
    )
    evaluate.main(
        ["--cache", str(order / "cache"), "--ckpt", str(run / "best.pt"), "--method", "meanP zero-shot"]
        + ["--out", str(results / "meanP_trained.json")]
    )
    with pytest.raises(
        ResultError, match="method 'meanP zero-shot' names results that differ in .* two methods, not seeds"
    ):
        report.main(["--results", str(results), "--out", str(tmp_path / "report")])


@pytest.mark.parametrize("resamples", ["1", "0", "999"])
def test_too_few_resamples_are_refused(order, tmp_path, capsys, resamples):
    args = ["--results", str(order / "results"), "--out", str(tmp_path / "report"), "--n-resamples", resamples]
    assert f"--n-resamples: {resamples}: must be at least 1000" in usage_error(report.main, args, capsys)


def test_method_names_and_captions_cannot_break_a_row_or_a_file(demo_data, order, tmp_path):
    results = copied(order / "results", tmp_path / "results")
    for name, method in (("meanP", "mean|P\nzero-shot"), ("seqTransf", "seq\u2028Transf|x")):
        data = json.loads((results / f"{name}.json").read_text())
        data["provenance"]["method"] = method
        (results / f"{name}.json").write_text(json.dumps(data))
    report.main(["--results", str(results), "--out", str(tmp_path / "report")])
    markdown = (tmp_path / "report" / "report.md").read_text()
    for table in re.findall(r"(?:^\|.*\n)+", markdown, flags=re.M):  # every row has its header's cells
        cells = [len(line.replace("\\|", "").split("|")) for line in table.splitlines()]
        assert len(set(cells)) == 1, table
    assert markdown.count("| mean\\|P zero-shot |") >= 8 and markdown.count("| seq Transf\\|x |") >= 8
    numbers = json.loads((tmp_path / "report" / "report_numbers.json").read_text())
    assert {"mean|P\nzero-shot", "seq\u2028Transf|x"} <= set(numbers["methods"])

    annotations = copied(demo_data / "annotations", tmp_path / "annotations")
    test = json.loads((annotations / "test.json").read_text())
    first = next(iter(test))
    test[first]["forward_captions"][0] = "a shape grows\u2028and then\u2029fades"
    (annotations / "test.json").write_text(json.dumps(test))
    extract.main(extract_args(demo_data, tmp_path / "cache", "--splits", "test", annotations=annotations))
    captions = [
        json.loads(line) for line in (tmp_path / "cache" / "test" / "captions.jsonl").read_text().split("\n") if line
    ]
    assert captions[0]["text"] == "a shape grows\u2028and then\u2029fades"
    evaluate.main(["--cache", str(tmp_path / "cache"), "--head", "meanP", "--out", str(tmp_path / "r.json")])


HOSTILE_NAMES = {
    "meanP": "<img src=x onerror=alert(1)>",
    "seqTransf": '=HYPERLINK("http://e.x") [x](javascript:alert(1)) *b* `c`',
}
HOSTILE_LABEL = "</title><script>alert(2)</script> &amp; _t_"


def test_names_stay_text_in_markdown_and_csv(order, tmp_path):
    """Round four: a method named `<img src=x onerror=...>` reached report.md raw 13 times, a label
    `</title><script>` 4 times, a link `[x](javascript:...)` too; `=HYPERLINK(...)` reached
    results.csv as a formula. Every name now goes through `tables.md` (markup escaped) and the CSV
    writer (a text cell starting a formula is prefixed with a quote)."""
    results = copied(order / "results", tmp_path / "results")
    for name, method in HOSTILE_NAMES.items():
        data = json.loads((results / f"{name}.json").read_text())
        data["provenance"]["method"], data["provenance"]["dataset"] = method, HOSTILE_LABEL
        (results / f"{name}.json").write_text(json.dumps(data))
    report.main(["--results", str(results), "--out", str(tmp_path / "report")])
    markdown = (tmp_path / "report" / "report.md").read_text()
    text = "\n".join(line for line in markdown.splitlines() if not line.startswith("!["))  # not our figure files
    for raw in ("<img", "<script", "</title", "](javascript", "[x]", "*b*", "`c`", "&amp;", "_t_"):
        assert not re.search(r"(?<!\\)" + re.escape(raw), text), raw  # never without its escape
    assert markdown.count(r"\<img src=x onerror=alert(1)>") >= 8
    assert markdown.count(r'=HYPERLINK("http://e.x") \[x\](javascript:alert(1)) \*b\* \`c\`') >= 8
    assert r"\</title>\<script>alert(2)\</script> \&amp; \_t\_" in markdown
    rows = list(csv.reader((tmp_path / "report" / "results.csv").open()))
    methods = {row[1] for row in rows[1:]}
    assert methods == {HOSTILE_NAMES["meanP"], "'" + HOSTILE_NAMES["seqTransf"]}
    assert all(not cell.startswith(("=", "+", "-", "@", "\t", "\r")) for row in rows[1:] for cell in row[:5])
    numbers = json.loads((tmp_path / "report" / "report_numbers.json").read_text())
    assert set(HOSTILE_NAMES.values()) <= set(numbers["methods"])  # the data file keeps the names as given


def test_a_report_folder_is_replaced_whole_or_not_at_all(order, tmp_path, monkeypatch):
    """Round four: a report killed or out of space part-way left new figures beside the old
    report.md; and a report folder holding a user's file was written into. The report is now written
    as one folder under a temporary name and swapped in; a folder with files this project did not
    write there is refused before any work."""
    out = tmp_path / "report"
    args = ["--results", str(order / "results"), "--out", str(out)]
    report.main(args)
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    (out / "old_figure.png").write_bytes(b"a figure of an earlier report")
    manifest = json.loads((out / ".written_by.json").read_text())
    manifest["files"].append("old_figure.png")
    (out / ".written_by.json").write_text(json.dumps(manifest))  # as if an earlier report.py had written it

    def out_of_space(*_):  # after the figures, before report.md
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report, "atomic_write_json", out_of_space)
    with pytest.raises(OutOfSpace, match=r"no space left on the device writing .*report; nothing half-written"):
        report.main(args)
    monkeypatch.undo()
    assert (out / "report.md").read_bytes() == before["report.md"] and (out / "old_figure.png").exists()
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".report")]
    report.main(args)
    assert not (out / "old_figure.png").exists()  # replaced whole: nothing of the earlier report is left
    assert {path.name: path.read_bytes() for path in out.iterdir() if path.name != ".written_by.json"} == {
        name: data for name, data in before.items() if name != ".written_by.json"
    }

    (out / "thesis.tex").write_text("chapter one")
    with pytest.raises(ForeignFiles, match=r"report holds 'thesis.tex', which this project did not write there"):
        report.main(args)
    assert (out / "thesis.tex").read_text() == "chapter one" and (out / "report.md").exists()


def test_two_labels_that_read_alike_as_file_names_get_figures_of_their_own(order, tmp_path):
    """Round four: labels `small test` and `small_test` made the same figure names, one dataset's
    plots overwriting the other's."""
    results = tmp_path / "results"
    for label, name in (("small test", "a"), ("small_test", "b")):
        cache = f"{order / 'cache'}:test={label}"
        evaluate.main(["--cache", cache, "--head", "meanP", "--out", str(results / f"{name}.json")])
    report.main(["--results", str(results), "--out", str(tmp_path / "report")])
    markdown = (tmp_path / "report" / "report.md").read_text()
    sections = markdown.split("## Dataset ")[1:]
    figures = [re.findall(r"\]\(([^)]+\.png)\)", section) for section in sections]
    assert len(figures) == 2 and figures[0] and not set(figures[0]) & set(figures[1])
    assert all((tmp_path / "report" / name).exists() for names in figures for name in names)


def test_a_split_of_one_video_is_named_not_a_scipy_traceback(small_clip, tmp_path):
    """Round four: a one-video test split reached scipy's bootstrap, a ValueError traceback."""
    cache = order_only_cache(small_clip, tmp_path / "cache", n_train=8, n_valid=2, n_test=1, n_frames=4)
    evaluate.main(["--cache", str(cache), "--head", "meanP", "--out", str(tmp_path / "results" / "meanP.json")])
    with pytest.raises(ResultError, match=r"meanP.json: origin t2v has 1 query; a confidence interval needs at least"):
        report.main(["--results", str(tmp_path / "results"), "--out", str(tmp_path / "report")])
    assert not (tmp_path / "report").exists()
