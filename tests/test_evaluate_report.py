import csv
import json
import re
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

import clip_vendor
import evaluate
import report
import train_head
from corpus.feature_cache import write_meta
from evaluation.retrieval_metrics import binary_accuracy, retrieval_metrics
from evaluation.retrieval_stats import METRICS, bootstrap_ci, two_level_bootstrap_ci
from fixtures.synthetic_cache import write_order_only_cache
from make_demo_data import write_tiny_clip

PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """A synthetic order-only cache, meanP, and seqTransf trained with two seeds, all evaluated."""
    root = tmp_path_factory.mktemp("evaluated")
    clip_path = root / "clip.pt"
    write_tiny_clip(clip_path, seed=0, matrix_std=0.05)
    cache = root / "cache"
    write_order_only_cache(
        cache, clip_path, asdict(clip_vendor.load(clip_path)[0].config), n_train=64, n_valid=16, n_test=12, n_frames=4
    )
    results = root / "results"
    evaluate.main(["--cache", str(cache), "--head", "meanP", "--out", str(results / "meanP.json")])
    for seed in (0, 1):
        run = root / f"seqTransf_seed{seed}"
        train_head.main(
            [
                "--cache",
                str(cache),
                "--head",
                "seqTransf",
                "--seed",
                str(seed),
                "--out",
                str(run),
                "--clip",
                str(clip_path),
                "--epochs",
                "3",
                "--batch-size",
                "16",
                "--reverse-negatives",
            ]
        )
        evaluate.main(
            [
                "--cache",
                str(cache),
                "--ckpt",
                str(run / "best.pt"),
                "--method",
                "seqTransf",
                "--out",
                str(results / f"seqTransf_seed{seed}.json"),
            ]
        )
    return cache, results


def load(results, name):
    return json.loads((results / f"{name}.json").read_text())


def test_result_file_structure_and_meanp_ties(evaluated):
    _, results = evaluated
    result = load(results, "meanP")
    assert set(result) == {"origin", "hard", "binary", "order", "provenance"}
    for setting in ("origin", "hard"):
        for direction in ("t2v", "v2t"):
            block = result[setting][direction]
            assert {
                "R@1",
                "R@5",
                "R@10",
                "MdR",
                "MnR",
                "expected",
                "optimistic",
                "pessimistic",
                "n_queries",
                "n_tied",
            } <= set(block)
    assert result["origin"]["t2v"]["n_queries"] == 12 and result["hard"]["t2v"]["n_queries"] == 24
    assert result["hard"]["t2v"]["n_tied"] == 24  # meanP shows its ties on Hard
    assert result["origin"]["t2v"]["n_tied"] == 0
    assert result["binary"]["t2v"] == {"accuracy": 50.0, "n_pairs": 24, "n_tied": 24}


def test_every_statistic_recomputes_from_the_saved_arrays(evaluated):
    _, results = evaluated
    result = load(results, "seqTransf_seed0")
    arrays = results / "seqTransf_seed0"
    for setting in ("origin", "hard"):
        scores, gold = np.load(arrays / f"{setting}_scores.npy"), np.load(arrays / f"{setting}_gold.npy")
        t2v, _ = retrieval_metrics(scores, gold)
        # video->text ranks the candidates' caption sets, each scored by its best caption
        set_scores = np.array(
            [[scores[gold[:, g], v].max() for g in range(gold.shape[1])] for v in range(gold.shape[1])]
        )
        v2t, _ = retrieval_metrics(set_scores, np.eye(gold.shape[1], dtype=bool))
        assert t2v == result[setting]["t2v"] and v2t == result[setting]["v2t"]
        assert result[setting]["v2t_per_caption"] == retrieval_metrics(scores.T, gold.T)[0]
        ids = json.loads((arrays / f"{setting}_ids.json").read_text())
        assert len(ids["rows"]) == scores.shape[0] and len(ids["columns"]) == scores.shape[1]
        per_query = np.load(arrays / f"{setting}_t2v_per_query.npy")
        assert per_query.shape == (len(scores), 7)
        assert 100 * per_query[:, 4].mean() == pytest.approx(result[setting]["t2v"]["expected"]["R@1"])
    for direction in ("t2v", "v2t"):
        margins = np.load(arrays / f"binary_{direction}_margins.npy")
        assert binary_accuracy(margins) == result["binary"][direction]


def test_binary_margins_compare_each_caption_and_video_with_the_reversal():
    from evaluation.scoring import setting_from_pairs

    pairs = [
        {"caption_row": 0, "caption_id": "v#forward#human#0", "video_row": 0, "video_id": "v", "reversed": 0},
        {"caption_row": 1, "caption_id": "v#reverse#human#0", "video_row": 0, "video_id": "v", "reversed": 1},
    ]
    setting = setting_from_pairs(pairs)  # candidates: (0, 0), (0, 1)
    scores = np.array(
        [
            [0.9, 0.4],  # forward caption: original 0.9, reversal 0.4
            [0.7, 0.2],
        ]
    )  # reverse caption: original 0.7, reversal 0.2
    margins = evaluate.binary_margins(scores, setting)
    np.testing.assert_allclose(margins["t2v"][0], [0.9 - 0.4, 0.2 - 0.7])
    np.testing.assert_allclose(margins["v2t"][0], [0.9 - 0.7, 0.2 - 0.4])
    assert margins["t2v"][1].tolist() == [0, 1] and margins["v2t"][1].tolist() == [0, 1]  # forward, then reverse


def copy_cache(cache, destination, **contract_changes):
    """A copy of `cache` whose contract has the given {section: {field: value}} changes."""
    shutil.copytree(cache, destination)
    meta = json.loads((destination / "cache_meta.json").read_text())
    meta["git_commit"] = "another commit"
    for section, fields in contract_changes.items():
        meta["contract"][section].update(fields)
    write_meta(destination, meta)
    return destination


def test_checkpoint_is_refused_on_a_cache_with_other_features_naming_the_field(evaluated, tmp_path):
    cache, results = evaluated
    other = copy_cache(cache, tmp_path / "other_cache", sampling={"fps": 2.0})
    ckpt = load(results, "seqTransf_seed0")["provenance"]["ckpt"]
    with pytest.raises(SystemExit, match=r"features differ in sampling\.fps: the checkpoint's training cache has 1\.0"):
        evaluate.main(["--cache", str(other), "--ckpt", ckpt, "--out", str(tmp_path / "x.json")])


def test_one_command_evaluates_a_checkpoint_on_several_datasets_and_reports_each(evaluated, tmp_path):
    cache, results = evaluated
    # same features, another cache (as another dataset extracted with the same CLIP and sampling)
    other = copy_cache(cache, tmp_path / "other_dataset", compute={"batch_videos": 7})
    ckpt = load(results, "seqTransf_seed0")["provenance"]["ckpt"]
    out = tmp_path / "multi" / "seqTransf.json"
    evaluate.main(["--ckpt", ckpt, "--cache", f"{cache}:test", "--cache", f"{other}:valid", "--out", str(out)])
    first = json.loads((tmp_path / "multi" / "seqTransf.synthetic_test.json").read_text())
    second = json.loads((tmp_path / "multi" / "seqTransf.synthetic_valid.json").read_text())
    assert first["provenance"]["dataset"] == "synthetic test" and second["provenance"]["dataset"] == "synthetic valid"
    assert first["hard"] == load(results, "seqTransf_seed0")["hard"]  # the same split scores as before
    assert second["hard"]["t2v"]["n_queries"] == 32  # the valid split: 16 videos x 2 directions
    assert second["provenance"]["training"]["selected_epoch"] == first["provenance"]["training"]["selected_epoch"]
    evaluate.main(
        [
            "--head",
            "meanP",
            "--cache",
            f"{cache}:test",
            "--cache",
            f"{other}:valid",
            "--out",
            str(tmp_path / "multi" / "meanP.json"),
        ]
    )
    report.main(["--results", str(tmp_path / "multi"), "--out", str(tmp_path / "report")])
    numbers = json.loads((tmp_path / "report" / "report_numbers.json").read_text())
    assert sorted(numbers["datasets"]) == ["synthetic test", "synthetic valid"]
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "## Dataset synthetic test: test split" in markdown and "## Dataset synthetic valid: valid split" in markdown


def test_parametric_head_needs_a_checkpoint(evaluated, tmp_path):
    cache, _ = evaluated
    with pytest.raises(SystemExit, match="train it with train_head.py"):
        evaluate.main(["--cache", str(cache), "--head", "seqTransf", "--out", str(tmp_path / "x.json")])


def test_generic_dataset_has_one_setting_and_no_binary(evaluated, tmp_path):
    cache, _ = evaluated
    generic = tmp_path / "generic"
    shutil.copytree(cache, generic)
    pair_file = generic / "test" / "test_pairs.csv"
    with open(pair_file) as f:
        rows = [row for row in csv.reader(f)]
    with open(pair_file, "w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([rows[0]] + [row for row in rows[1:] if row[4] == "0"])
    (generic / "test" / "test_origin_pairs.csv").unlink()
    meta = json.loads((generic / "cache_meta.json").read_text())
    meta["contract"]["annotations"]["test"]["format"] = "generic"
    write_meta(generic, meta)
    evaluate.main(["--cache", str(generic), "--head", "meanP", "--out", str(tmp_path / "generic.json")])
    result = json.loads((tmp_path / "generic.json").read_text())
    assert set(result) == {"all", "order", "provenance"} and result["all"]["t2v"]["n_queries"] == 12


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
            runs = [load(results, name) for name in names]
            for column, metric in enumerate(METRICS):
                per_seed = [run[setting]["t2v"]["expected"][metric] for run in runs]
                std = np.std(per_seed, ddof=1) if len(per_seed) > 1 else 0.0
                per_query = [np.load(results / name / f"{setting}_t2v_per_query.npy") for name in names]
                source_column = 1 if metric in ("MdR", "MnR") else 4 + ("R@1", "R@5", "R@10").index(metric)
                values = np.stack([table[:, source_column] for table in per_query])
                if len(names) > 1:  # seeds: the two-level bootstrap, over seeds and queries
                    low, high = two_level_bootstrap_ci(values, METRICS[metric][1], seed=0)
                else:
                    low, high = bootstrap_ci(values[0], METRICS[metric][1], seed=0)
                assert cells[method][column] == f"{np.mean(per_seed):.2f} ± {std:.2f} [{low:.2f}, {high:.2f}]"
            assert cells[method][5] == f"{runs[0][setting]['t2v']['n_tied']}/{runs[0][setting]['t2v']['n_queries']}"
    binary = table_cells(markdown, "Binary: original vs its reversal")
    assert binary["meanP zero-shot"][0] == f"{load(results, 'meanP')['binary']['t2v']['accuracy']:.2f} ± 0.00"
    for plot in (
        "synthetic_test_t2v_recall_at_1_5_10.png",
        "synthetic_test_t2v_rank_cdf.png",
        "synthetic_test_t2v_r1_origin_to_hard.png",
        "training_valid_r1_and_loss_by_epoch.png",
    ):
        assert (tmp_path / "report" / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
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
    result = load(mixed, "meanP")
    result["provenance"]["cache_content_sha256"] = "0" * 64
    (mixed / "meanP.json").write_text(json.dumps(result))
    with pytest.raises(SystemExit, match="mixes caches for dataset .synthetic test."):
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
    trained = {name: load(results, name)["provenance"]["training"] for name in ("seqTransf_seed0", "seqTransf_seed1")}
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
