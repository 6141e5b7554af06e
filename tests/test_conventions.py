"""The peers' RTime protocols (evaluation/conventions.py) against the peers' own rules, restated in
tests/peers_restated.py and run on the demo's saved score matrices: CaReBench's Binary exactly,
its ranks between the bounds its unstable sort allows (exactly where nothing ties, and each bound
reached with the ties ordered for it), CLIP4Clip's compute_metrics exactly, ties included. Then
evaluate.py recording a convention, and the report's tables beside ours and beside the literature."""

import json

import numpy as np
import pytest

import evaluate
import report
from evaluation.conventions import convention_numbers
from evaluation.results import ResultError, read_result
from reporting.published import PUBLISHED, RTIME_TEST_SHA256
from tests.helpers import copied, usage_error
from tests.peers_restated import (
    binary_similarities,
    carebench_binary,
    carebench_ranks,
    carebench_recalls,
    clip4clip_compute_metrics,
    first_caption_matrix,
)


def raw_runs(results):
    """The demo's results without post-processing, read and checked."""
    runs = [read_result(path) for path in sorted(results.glob("*.json"))]
    return [run for run in runs if not run.provenance["postprocess"]]


def each_direction(results, name, setting):
    """(the run's file name and direction, the peers' query x candidate matrix with the gold on its
    diagonal, our convention's metrics) for every raw result, both directions."""
    for run in raw_runs(results):
        numbers = convention_numbers(name, run.load_array, "rtime")[setting]
        text_by_video = first_caption_matrix(run.load_array(f"{setting}_scores"), run.load_array(f"{setting}_ids"))
        for direction, matrix in (("t2v", text_by_video), ("v2t", text_by_video.T)):
            yield (run.path.name, direction), matrix, numbers[direction]


def test_carebench_binary_is_the_peer_rule_on_every_head_and_seed(demo):
    runs = raw_runs(demo / "results")
    assert [run.provenance["method"] for run in runs] == ["meanP zero-shot", "mlpScore", "seqTransf", "seqTransf"]
    for run in runs:
        ours = convention_numbers("carebench", run.load_array, "rtime")["binary"]
        similarities = binary_similarities(run.load_array("hard_scores"), run.load_array("hard_ids"))
        peer = carebench_binary(similarities)
        for direction in ("t2v", "v2t"):
            assert ours[direction]["accuracy"] == pytest.approx(100.0 * peer[f"{direction}_acc"], abs=1e-9)
            assert ours[direction]["n_pairs"] == len(similarities) == 4  # one pair per video, forward side
    # an order-blind head ties the original and its reversal for every caption: a tie is wrong there, one half here
    meanP = runs[0]
    assert convention_numbers("carebench", meanP.load_array, "rtime")["binary"]["t2v"]["accuracy"] == 0.0
    assert meanP.data["binary"]["t2v"]["accuracy"] == 50.0


@pytest.mark.parametrize("setting", ["origin", "hard"])
def test_carebench_ranks_lie_between_the_bounds_and_equal_them_where_nothing_ties(demo, setting):
    tied = 0
    for where, matrix, bounds in each_direction(demo / "results", "carebench", setting):
        peer = carebench_recalls(carebench_ranks(matrix, np.arange(len(matrix))))
        assert bounds["n_queries"] == len(matrix)
        for metric, value in peer.items():
            low, high = bounds["pessimistic"][metric], bounds["optimistic"][metric]
            assert low - 1e-9 <= value <= high + 1e-9, (where, metric)
            if bounds["n_tied"] == 0:
                assert low == pytest.approx(value, abs=1e-9) and high == pytest.approx(value, abs=1e-9)
        tied += bounds["n_tied"]
    if setting == "hard":  # the order-blind heads tie every caption's original and reversal
        assert tied > 0


def test_both_bounds_are_what_the_peer_gives_with_the_gold_last_or_first_among_its_ties():
    # text x video, gold on the diagonal: text 0 ties its gold with two others, text 1 with one below another
    # above it, texts 2 and 3 tie nothing
    scores = np.array([[0.5, 0.5, 0.5, 0.1], [0.2, 0.7, 0.9, 0.7], [0.1, 0.2, 0.3, 0.0], [0.4, 0.3, 0.2, 0.9]])
    ids = {
        "rows": [f"v{i}#forward#human#0" for i in range(4)],
        "columns": [{"video_id": f"v{i}", "reversed": 0} for i in range(4)],
    }
    arrays = {"all_scores": scores, "all_ids": ids, "all_gold": np.eye(4, dtype=bool)}
    bounds = convention_numbers("carebench", arrays.__getitem__, "generic")["all"]["t2v"]
    stable = {"argsort": lambda row: np.argsort(row, kind="stable")}
    # a stable ascending sort reversed puts the last of tied columns first: the gold moved last is optimistic
    for moved_to, bound in ((-1, "optimistic"), (0, "pessimistic")):
        ranks = []
        for query, row in enumerate(scores):
            others = [column for column in range(4) if column != query]
            order = others + [query] if moved_to == -1 else [query] + others
            ranks.append(carebench_ranks(row[order][None, :], [order.index(query)], **stable)[0])
        assert carebench_recalls(np.array(ranks)) == pytest.approx(bounds[bound])
    assert bounds["optimistic"]["R@1"] == 75.0 and bounds["pessimistic"]["R@1"] == 50.0


@pytest.mark.parametrize("setting", ["origin", "hard"])
def test_clip4clip_convention_is_compute_metrics_ties_included(demo, setting):
    entries_beyond_queries = 0
    for where, matrix, ours in each_direction(demo / "results", "clip4clip", setting):
        peer = clip4clip_compute_metrics(matrix)
        for metric, peer_metric in (("R@1", "R1"), ("R@5", "R5"), ("R@10", "R10"), ("MdR", "MR"), ("MnR", "MeanR")):
            assert ours[metric] == pytest.approx(peer[peer_metric], abs=1e-9), (where, metric)
        entries_beyond_queries += ours["n_entries"] - ours["n_queries"]
    if setting == "hard":
        assert entries_beyond_queries > 0  # ties were there to count


def rtime_arrays(n_videos, second_forward=(), without_reversal=(), seed=0):
    """Saved arrays of RTime's origin and hard settings for `n_videos` videos, random scores: one
    forward and one reverse caption each, a second forward caption for `second_forward`, and no
    reversal (no reverse caption) for `without_reversal`."""
    rng = np.random.default_rng(seed)
    videos = [f"v{i}" for i in range(n_videos)]
    arrays = {}
    for setting, with_reversals in (("origin", False), ("hard", True)):
        columns = [(video, 0) for video in videos]
        if with_reversals:
            columns += [(video, 1) for video in videos if video not in without_reversal]
        rows = []
        for video, flag in columns:
            direction = "reverse" if flag else "forward"
            rows += [(f"{video}#{direction}#human#0", (video, flag))]
            if video in second_forward and not flag:
                rows += [(f"{video}#forward#human#1", (video, flag))]
        gold = np.array([[target == column for column in columns] for _, target in rows])
        arrays[f"{setting}_scores"] = rng.normal(size=gold.shape)
        arrays[f"{setting}_gold"] = gold
        arrays[f"{setting}_ids"] = {
            "rows": [caption_id for caption_id, _ in rows],
            "columns": [{"video_id": video, "reversed": flag} for video, flag in columns],
        }
    return arrays


def test_only_first_captions_are_queries_as_both_peers_take_them():
    arrays = rtime_arrays(6, second_forward=("v0", "v3"))
    for name in ("carebench", "clip4clip"):
        numbers = convention_numbers(name, arrays.__getitem__, "rtime")
        assert numbers["origin"]["t2v"]["n_queries"] == 6 and numbers["hard"]["t2v"]["n_queries"] == 12
    first = first_caption_matrix(arrays["origin_scores"], arrays["origin_ids"])
    peer = clip4clip_compute_metrics(first)
    assert convention_numbers("clip4clip", arrays.__getitem__, "rtime")["origin"]["t2v"]["R@1"] == pytest.approx(
        peer["R1"]
    )


def test_carebench_hard_is_unavailable_when_a_video_has_no_reversal():
    arrays = rtime_arrays(5, without_reversal=("v2",))
    carebench = convention_numbers("carebench", arrays.__getitem__, "rtime")
    assert carebench["hard"] == {
        "unavailable": "1 of the videos have no reversal (not marked reversible); CaReBench's Hard adds one for "
        "every video"
    }
    assert "binary" not in carebench and carebench["origin"]["t2v"]["n_queries"] == 5
    assert convention_numbers("clip4clip", arrays.__getitem__, "rtime")["hard"]["t2v"]["n_queries"] == 9


def test_evaluate_records_a_convention_that_reading_checks_again(demo, tmp_path, capsys):
    out = tmp_path / "meanP.json"
    evaluate.main(["--cache", str(demo / "cache"), "--head", "meanP", "--convention", "carebench", "--out", str(out)])
    assert "carebench convention: Binary t2v 0.00, Binary v2t" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data["conventions"]["carebench"] == convention_numbers("carebench", read_result(out).load_array, "rtime")
    data["conventions"]["carebench"]["binary"]["t2v"]["accuracy"] = 50.0
    out.write_text(json.dumps(data))
    with pytest.raises(ResultError, match=r"conventions\.carebench\.binary\.t2v\.accuracy: the file says 50\.0"):
        read_result(out)
    args = ["--cache", str(demo / "cache"), "--head", "meanP", "--out", str(tmp_path / "dsl.json")]
    message = usage_error(evaluate.main, [*args, "--convention", "carebench", "--postprocess", "dsl"], capsys)
    assert "--convention: the peers' protocols score raw similarities" in message


def section(text, title):
    """The lines of a report section, from its title to the next title."""
    lines = text.split("\n")
    start = lines.index(title)
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("#"))
    return lines[start:end]


def row_of(lines, method):
    return next(line for line in lines if line.startswith(f"| {method} |"))


def test_report_sets_a_convention_beside_ours_and_the_literature_only_beside_rtime_test(demo, tmp_path):
    results = copied(demo / "results", tmp_path / "results")
    report.main(["--results", str(results), "--out", str(tmp_path / "demo"), "--convention", "carebench"])
    text = (tmp_path / "demo" / "report.md").read_text()
    table = section(text, "### Beside the carebench convention")
    # meanP: Binary 50 / 0 (ties), Hard text->video R@1 a range over its tie bounds
    assert row_of(table, "meanP zero-shot").startswith("| meanP zero-shot | 50.00 / 0.00 | 50.00 / ")
    assert "–" in row_of(table, "meanP zero-shot").split("|")[6]  # Hard text->video
    assert not any("+DSL" in line for line in table)  # the peers score raw similarities
    assert "Published figures" not in text  # the demo's test.json is not RTime's

    numbers = json.loads((tmp_path / "demo" / "report_numbers.json").read_text())
    (dataset,) = numbers["datasets"].values()
    seqtransf = dataset["conventions"]["carebench"]["seqTransf"]
    runs = [run for run in raw_runs(results) if run.provenance["method"] == "seqTransf"]
    per_seed = [convention_numbers("carebench", run.load_array, "rtime")["binary"]["t2v"]["accuracy"] for run in runs]
    assert seqtransf["binary/t2v"]["accuracy"]["mean"] == pytest.approx(np.mean(per_seed))

    # the same results as if evaluated on RTime's released test file: the literature's figures, ours beside them
    for path in results.glob("*.json"):
        data = json.loads(path.read_text())
        data["provenance"]["annotations"]["sha256"] = RTIME_TEST_SHA256
        path.write_text(json.dumps(data))
    report.main(["--results", str(results), "--out", str(tmp_path / "rtime")])
    published = section((tmp_path / "rtime" / "report.md").read_text(), "### Published figures on this test set")
    for entry in PUBLISHED[RTIME_TEST_SHA256]:
        assert any(entry.source in line and f"| {entry.numbers['hard/t2v']:.2f} |" in line for line in published)
    ours = row_of(published, "seqTransf (this report)").split(" | ")
    assert ours[1] == f"{np.mean(per_seed):.2f}" and ours[-2:] == ["4", "this report's result files |"]
