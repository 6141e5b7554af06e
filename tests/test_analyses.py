"""What no peer reports, each number checked against an independent computation: the direction
split and bias, paraphrase robustness and order sensitivity, the two-level bootstrap and the power
of the pairwise tests, DSL and QB-Norm, the tables people paste, the examples page in a real
browser, and search.py."""

import csv
import itertools
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch

import evaluate
import report
from evaluation.order_sensitivity import frame_order, order_margins
from evaluation.postprocess import dual_softmax, querybank_normalise
from evaluation.results import PERMUTATIONS, read_result
from evaluation.scoring import read_setting
from heads import architectures
from heads.checkpoints import head_from_checkpoint, load_checkpoint
from heads.loaded_split import load_split_tensors
from infra.cli import StageError
from reporting.seeds import pairwise, query_clusters
from reporting.stats import run_family
from reporting.tables import number
from tests.helpers import copied, copy_cache

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=5000",
]


def numbers(demo):
    return json.loads((demo / "report" / "report_numbers.json").read_text())["datasets"]["RTime test"]


def runs_of(demo, method):
    names = {"meanP zero-shot": ["meanP"], "mlpScore": ["mlpScore_0"], "seqTransf": ["seqTransf_0", "seqTransf_1"]}
    return [read_result(demo / "results" / f"{name}.json") for name in names[method]]


def gold_pairs(run, setting):
    """Per query: its own column and the column of the same video in the other direction."""
    gold, columns = run.load_array(f"{setting}_gold"), run.load_array(f"{setting}_ids")["columns"]
    column_of = {(c["video_id"], c["reversed"]): i for i, c in enumerate(columns)}
    own = gold.argmax(axis=1)
    other = [column_of[(columns[c]["video_id"], 1 - columns[c]["reversed"])] for c in own]
    return own, np.array(other), np.array([columns[c]["reversed"] for c in own]), [columns[c]["video_id"] for c in own]


def expected_hit(scores, own):
    """Expected R@1 of each query by brute force over the orders of its ties: 1 / (tied best) if
    its own candidate is among the best, else 0."""
    best = scores.max(axis=1, keepdims=True)
    return np.where(scores[np.arange(len(own)), own] == best[:, 0], 1.0 / (scores == best).sum(axis=1), 0.0)


def test_direction_split_and_bias_recompute_from_the_score_matrices(demo):
    for method in ("meanP zero-shot", "seqTransf"):
        runs = runs_of(demo, method)
        own, other, side, videos = gold_pairs(runs[0], "hard")
        hits = np.mean([expected_hit(run.load_array("hard_scores"), own) for run in runs], axis=0)
        row = numbers(demo)["direction_split"][method]
        assert row["forward"]["R@1"] == pytest.approx(100 * hits[side == 0].mean())
        assert row["reverse"]["R@1"] == pytest.approx(100 * hits[side == 1].mean())
        assert row["difference"] == pytest.approx(100 * (hits[side == 0].mean() - hits[side == 1].mean()))
        credits = []
        for run in runs:  # the original above the reversal, whatever the caption; a tie counts half
            scores = run.load_array("hard_scores")
            original = np.where(side == 0, own, other)
            reversal = np.where(side == 0, other, own)
            diff = scores[np.arange(len(own)), original] - scores[np.arange(len(own)), reversal]
            credits.append(np.where(diff > 0, 1.0, np.where(diff == 0, 0.5, 0.0)))
        assert row["bias_original_first"] == pytest.approx(100 * np.mean(np.mean(credits, axis=0)))
    assert numbers(demo)["direction_split"]["meanP zero-shot"]["bias_original_first"] == 50.0  # all tied


def test_paraphrase_drop_recomputes_from_the_score_matrices(demo):
    runs = runs_of(demo, "seqTransf")
    per_setting = {}
    for setting in ("hard", "rewrites"):
        own, _, side, videos = gold_pairs(runs[0], setting)
        hits = np.mean([expected_hit(run.load_array(f"{setting}_scores"), own) for run in runs], axis=0)
        per_item = {}
        for hit, item in zip(hits, zip(videos, side, strict=True), strict=True):
            per_item.setdefault(item, []).append(hit)
        per_setting[setting] = {item: np.mean(values) for item, values in per_item.items()}
    row = numbers(demo)["paraphrase"]["seqTransf"]
    items = sorted(per_setting["hard"])
    assert row["n_candidates"] == len(items) == 8
    assert row["human_R@1"] == pytest.approx(100 * np.mean([per_setting["hard"][i] for i in items]))
    assert row["rewrites_R@1"] == pytest.approx(100 * np.mean([per_setting["rewrites"][i] for i in items]))
    assert row["difference"] == pytest.approx(row["human_R@1"] - row["rewrites_R@1"])


def test_order_sensitivity_equals_a_direct_computation_and_order_blind_heads_stay_at_zero(demo):
    for method in ("meanP zero-shot", "mlpScore"):
        for run in runs_of(demo, method):
            for change in PERMUTATIONS:
                assert np.all(run.order[change] == 0.0), (method, change)
            assert run.order["repeated_frame"].any()  # a change of content does move them
    checkpoint = load_checkpoint(demo / "seqTransf_0" / "best.pt")
    head = head_from_checkpoint(checkpoint, "seqTransf_0", 8192).eval()
    data = load_split_tensors(demo / "cache", "test", 8, "cpu")
    setting = read_setting(demo / "cache", "test", "hard")
    margins = order_margins(head, data, setting)
    with torch.no_grad():  # a direct computation, no training
        for query in range(0, len(setting.caption_rows), 7):  # each query alone, its frames rearranged by hand
            row, flag = setting.candidates[setting.gold[query].argmax()]
            frames, mask = data.video_batch(torch.tensor([row]), torch.tensor([flag]))
            n_real = int(mask.sum())
            text, text_mask = data.text_input(torch.tensor([setting.caption_rows[query]]), "pooled")
            cached = head.score_matrix(text, text_mask, *head.video_index(frames, mask))[0, 0]
            for change in margins:
                order = frame_order(change, n_real, row, frames.shape[1])
                changed = head.score_matrix(text, text_mask, *head.video_index(frames[:, order], mask))[0, 0]
                assert margins[change][query] == pytest.approx(float(cached - changed), abs=1e-6), (query, change)
    table = numbers(demo)["order_sensitivity"]["seqTransf"]
    runs = runs_of(demo, "seqTransf")
    for change in margins:
        shares = [100 * np.mean(run.order[change] > 0) for run in runs]
        assert table[change]["share_dropped"]["mean"] == pytest.approx(np.mean(shares))


def test_a_head_that_should_be_order_blind_but_moves_is_refused(demo, tmp_path, monkeypatch):
    monkeypatch.setattr(
        architectures, "order_free_sum", lambda x, dim: x.select(dim, 0) + x.sum(dim)
    )  # first frame counts twice
    with pytest.raises(StageError, match="built-in check failed: a head that is order-free scored a query differently"):
        evaluate.main(["--cache", str(demo / "cache"), "--head", "meanP", "--out", str(tmp_path / "r.json")])
    assert not (tmp_path / "r.json").exists()


def test_dual_softmax_and_querybank_normalisation_follow_their_formulas():
    rng = np.random.default_rng(0)
    scores, bank = rng.uniform(-0.3, 0.6, (5, 4)), rng.uniform(-0.3, 0.6, (9, 4))
    expected = np.empty_like(scores)
    for q, c in itertools.product(range(5), range(4)):
        expected[q, c] = scores[q, c] * np.exp(30 * scores[q, c]) / sum(np.exp(30 * scores[p, c]) for p in range(5))
    np.testing.assert_allclose(dual_softmax(scores, 30.0), expected, rtol=1e-12)

    hubs = {int(np.argmax(bank[b])) for b in range(9)}
    expected = scores.copy()
    for q in range(5):
        if int(np.argmax(scores[q])) in hubs:
            for c in range(4):
                expected[q, c] = np.exp(20 * scores[q, c]) / sum(np.exp(20 * bank[b, c]) for b in range(9))
    np.testing.assert_allclose(querybank_normalise(scores, iter([bank[:4], bank[4:]])), expected, rtol=1e-12)


def test_dual_softmax_for_binary_leaves_the_alternative_caption_out_of_each_normaliser():
    """The statistics review (finding 6): Binary under DSL normalised over every test caption, the
    record's own other caption included, which gave about a third of seqTransf's Binary gain."""
    rng = np.random.default_rng(1)
    scores = rng.uniform(-0.3, 0.6, (6, 4))
    left_out = [np.array([3]), np.array([], dtype=np.int64), np.array([4, 5]), np.array([0]), [2], [2]]
    expected = np.empty_like(scores)
    for q, c in itertools.product(range(6), range(4)):
        kept = [p for p in range(6) if p not in set(np.asarray(left_out[q]).tolist())]
        expected[q, c] = scores[q, c] * np.exp(30 * scores[q, c]) / sum(np.exp(30 * scores[p, c]) for p in kept)
    np.testing.assert_allclose(dual_softmax(scores, 30.0, left_out), expected, rtol=1e-12)


def test_binary_under_dsl_reads_no_other_caption_of_the_record_and_states_its_temperature(demo):
    run = read_result(demo / "results" / "seqTransf_0_dsl.json")
    checkpoint = load_checkpoint(demo / "seqTransf_0" / "best.pt")
    temperature = float(checkpoint["log_scale"].exp())
    assert run.provenance["postprocess_settings"] == {"temperature": pytest.approx(temperature)}
    raw = run.load_array("hard_scores").astype(np.float64)
    own, other, _, _ = gold_pairs(run, "hard")
    margins = []
    for q in range(len(raw)):  # each caption's pair, DSL over the test captions but its record's other side
        kept = [p for p in range(len(raw)) if not (own[p] == other[q])]
        prior = np.exp(temperature * raw[kept])
        normaliser = prior.sum(axis=0)
        dsl = raw[q] * np.exp(temperature * raw[q]) / normaliser
        margins.append(dsl[own[q]] - dsl[other[q]])
    assert sorted(run.margins["t2v"]) == pytest.approx(sorted(margins), rel=1e-9)
    markdown = (demo / "report" / "report.md").read_text()
    assert "**Transductive**" in markdown and f"temperature {number(temperature)}" in markdown


def test_the_unit_of_resampling_is_the_record_and_a_flag_changes_it(demo):
    run = read_result(demo / "results" / "meanP.json")
    clusters = query_clusters(run, "hard/t2v", "video")
    _, _, _, videos = gold_pairs(run, "hard")
    assert len(set(clusters)) == len(set(videos)) == 4 and len(clusters) == 8  # a record's two captions: one
    assert all(clusters[i] == clusters[j] for i, j in itertools.combinations(range(8), 2) if videos[i] == videos[j])
    assert len(set(query_clusters(run, "hard/v2t", "video"))) == 4  # an original and its reversal: one
    family = numbers(demo)["family"]
    kinds = family["kinds"]
    assert kinds == {"pairwise": 6, "direction": 3, "paraphrase": 3, "pairwise +DSL": 0}
    assert family["n_tests"] == 12 and family["unit"] == "video"
    assert 2 / (family["resamples"] + 1) < 0.05 / 12 / 10
    markdown = (demo / "report" / "report.md").read_text()
    assert "One family of m = 12 tests (pairwise 6, direction 3, paraphrase 3)" in markdown
    methods = {"meanP zero-shot": [run], "seqTransf": runs_of(demo, "seqTransf")}
    by_query = pairwise(methods, ["origin", "hard"], "query")  # --cluster-by query: each query alone
    run_family(by_query, seed=0, n_resamples=1000)
    assert [c["n_clusters"] for c in by_query] == [4, 8]  # Origin's 4 queries, Hard's 8


def test_postprocessed_results_are_reported_apart_from_the_raw_ones(demo):
    markdown = (demo / "report" / "report.md").read_text()
    raw_tables, dsl_tables = markdown.split("### With dual softmax (DSL)", 1)
    assert "+DSL" not in raw_tables.split("## Dataset")[1]  # the raw tables hold no DSL row
    assert "| seqTransf +DSL |" in dsl_tables.split("## Training")[0]
    dsl = numbers(demo)["postprocessed"]["dsl"]
    assert sorted(dsl["tables"]) == ["hard/t2v", "origin/t2v"] and "seqTransf +DSL" in dsl["tables"]["hard/t2v"]
    assert "seqTransf +DSL" not in numbers(demo)["tables"]["hard/t2v"]


def test_the_tables_to_paste_hold_the_reported_numbers(demo):
    tex = (demo / "report" / "tables.tex").read_text()
    hard = numbers(demo)["tables"]["hard/t2v"]
    best = max(hard, key=lambda m: hard[m]["R@1"]["mean"])
    table = tex.split("\\label{tab:rtime-test-hard-t2v}")[1].split("\\end{table*}")[0]
    row = next(line for line in table.splitlines() if line.startswith(best))
    mean, std = hard[best]["R@1"]["mean"], hard[best]["R@1"]["std"]
    assert row.split(" & ")[1].startswith(f"\\textbf{{{mean:.1f}$\\pm${std:.1f}}}")
    assert r"\toprule" in tex and "zero-shot" in tex
    with open(demo / "report" / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    raw = [r for r in rows if r["postprocess"] == "none" and r["setting"] in ("origin", "hard")]
    assert len(raw) == 3 * 2 * 2 * 5  # methods x settings x directions x metrics
    seq = next(
        r
        for r in raw
        if r["method"] == "seqTransf" and r["setting"] == "hard" and r["metric"] == "MnR" and r["direction"] == "t2v"
    )
    assert float(seq["mean"]) == pytest.approx(hard["seqTransf"]["MnR"]["mean"]) and seq["seeds"] == "0;1"
    assert [float(seq["ci_low"]), float(seq["ci_high"])] == pytest.approx(hard["seqTransf"]["MnR"]["ci"])
    assert seq["ci_over"] == "seeds and clusters" and float(seq["n_tied"]) == 0 and seq["trivial"] == "False"
    # issue 29: no Binary, rewrites, tie counts or trivial flag; an all-NaN postprocess column; "± 0.00"
    origin = {
        r["metric"]: r
        for r in raw
        if (r["method"], r["setting"], r["direction"]) == ("meanP zero-shot", "origin", "t2v")
    }
    assert [origin[m]["trivial"] for m in ("R@1", "R@5", "R@10")] == ["False", "True", "True"]  # 4 candidates
    assert origin["R@1"]["std"] == "" and origin["R@1"]["n_seeds"] == "1"  # one seed: no spread
    binary = {(r["method"], r["direction"]): r for r in rows if r["setting"] == "binary" and r["postprocess"] == "none"}
    assert float(binary[("seqTransf", "t2v")]["mean"]) == pytest.approx(
        numbers(demo)["binary"]["seqTransf"]["t2v"]["mean"]
    )
    rewrites = {r["method"]: r for r in rows if r["setting"] == "rewrites"}
    assert float(rewrites["seqTransf"]["mean"]) == pytest.approx(
        numbers(demo)["paraphrase"]["seqTransf"]["rewrites_R@1"]
    )
    assert {r["postprocess"] for r in rows} == {"none", "dsl"}


def test_the_examples_page_opens_in_a_browser_with_every_image_loaded(demo, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip(
            "no chromium: tests/run.sh installs Debian's package when it runs as root; else apt-get install chromium"
        )
    page = demo / "report" / "RTime_test_examples.html"
    html = page.read_text()
    assert html.count("<section>") == 2 and html.count("<img ") > 0

    def loaded(path):
        command = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", path.as_uri()]
        dom = subprocess.run(command, capture_output=True, text=True, timeout=120).stdout
        body = re.search(r'<body data-images-loaded="(\d+)" data-images-total="(\d+)"', dom)
        assert body, dom[:500]
        return int(body.group(1)), int(body.group(2))

    assert loaded(page) == (html.count("<img "),) * 2
    copy = tmp_path / "copy"
    shutil.copytree(demo / "report", copy)
    next((copy / "RTime_test_examples").glob("*.png")).unlink()  # the check can fail
    images_loaded, total = loaded(copy / page.name)
    assert images_loaded == total - 1


def test_the_report_says_which_frames_the_cache_holds_and_each_head_read(demo):
    markdown = (demo / "report" / "report.md").read_text()
    # the demo's videos hold 12 frames at 4 fps; trained without --frames, a head reads them all (t_max is 24)
    assert "Frames cached per video: 12." in markdown
    # issue 29: footnotes printed raw JSON, `null` for a zero-shot method's seed
    assert "null" not in markdown and '{"' not in markdown
    assert "- Seeds: meanP zero-shot: — (zero-shot); mlpScore: 0; seqTransf: 0, 1;" in markdown
    assert "; config: context\\_length 77, embed\\_dim " in markdown
    assert "seqTransf: 12" in markdown.split("Frames each head read per video")[1].split("\n")[0]
    assert json.loads((demo / "results" / "seqTransf_0.json").read_text())["provenance"]["frames_seen"] == {
        "min": 12,
        "median": 12.0,
        "max": 12,
    }


def test_the_cost_table_counts_every_split_and_each_process_start(demo):
    """Issue 29: the cost table counted the test split's extraction only (0.5 s of a 6.9 s
    extraction) and left each process's start-up out of training and evaluation."""
    markdown = (demo / "report" / "report.md").read_text()
    rows = [line.split(" | ") for line in markdown.split("## Cost\n", 1)[1].split("\n") if line.startswith("| ")]
    assert rows[0] == ["| Stage", "what", "device", "seconds", "of which start-up |"]
    extraction = [row[1] for row in rows if row[0] == "| extract"]
    assert [what.split(": ", 1)[1].split(" (")[0] for what in extraction] == [
        "set-up",
        "train split",
        "valid split",
        "test split",
    ]
    counts = json.loads((demo / "cache" / "cache_meta.json").read_text())["counts"]["train"]
    assert f"train split ({counts['videos']} videos, {counts['frames']} frames)" in extraction[1]
    trained = [row for row in rows if row[0] == "| train"]
    assert trained and all(float(row[4].rstrip(" |")) > 0 for row in trained)  # each process's start counted
    assert all(float(row[3]) >= float(row[4].rstrip(" |")) for row in trained)  # start-up is part of it


def results_on_cache(demo, tmp_path, cache):
    """A copy of the demo's results (meanP and seqTransf) whose provenance names `cache` as the one evaluated."""
    results = tmp_path / "results"
    for name in ("meanP", "seqTransf_0"):
        shutil.copytree(demo / "results" / name, results / name)
        data = json.loads((demo / "results" / f"{name}.json").read_text())
        data["provenance"]["cache"] = str(cache)
        (results / f"{name}.json").write_text(json.dumps(data))
    return results


def examples_report(results, out, videos):
    report.main(["--results", str(results), "--out", str(out), "--examples", "2", "--videos", str(videos)])


def test_the_examples_page_shows_only_what_was_evaluated(demo, demo_data, tmp_path):
    """Round four: the examples page showed captions re-extracted after the evaluation, and frames
    of a wrong --videos folder (the reversed files), with no check; a moved cache or a missing video
    was a traceback. The page now checks the cache's content digest against the result's, and each
    video file's fingerprint against the one the cache recorded at extraction."""
    videos = demo_data / "videos"
    reextracted = copy_cache(demo / "cache", tmp_path / "reextracted", sampling={"fps": 2.0})
    with pytest.raises(StageError, match=r"the cache at .*reextracted is not the one .* was evaluated on"):
        examples_report(results_on_cache(demo, tmp_path / "a", reextracted), tmp_path / "a" / "report", videos)
    with pytest.raises(StageError, match=r"was evaluated on the cache at .*moved, which cannot be read"):
        examples_report(results_on_cache(demo, tmp_path / "b", tmp_path / "moved"), tmp_path / "b" / "report", videos)

    results = results_on_cache(demo, tmp_path / "c", (demo / "cache").resolve())
    with pytest.raises(StageError, match=r"--videos .*videos_reversed: video '[^']+' .*give the folder the cache was"):
        examples_report(results, tmp_path / "c" / "report", demo_data / "videos_reversed")
    none_left = copied(videos, tmp_path / "none_left")
    for path in none_left.iterdir():
        path.unlink()
    with pytest.raises(StageError, match=r"--videos .*none_left: video '[^']+' is not the file the cache was"):
        examples_report(results, tmp_path / "c" / "report", none_left)
    assert not (tmp_path / "c" / "report").exists()  # the demo fixture's report shows the page when all is right
