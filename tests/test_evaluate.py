import csv
import json
import re
import shutil

import numpy as np
import pytest
import torch

import evaluate
import extract
import report
import train_head
from corpus.feature_cache import CacheError, read_meta, split_file_digests, write_meta
from evaluation import results as result_files
from evaluation.results import ResultError
from evaluation.retrieval_metrics import binary_accuracy, retrieval_metrics
from heads.checkpoints import CheckpointError
from infra.cli import StageError
from infra.file_io import ForeignFiles
from tests.helpers import (
    RunsShell,
    copied,
    copy_cache,
    extract_args,
    order_only_cache,
    planted,
    recorded_anew,
    train_args,
    usage_error,
)


def result_json(results, name):
    return json.loads((results / f"{name}.json").read_text())


def test_result_file_structure_and_meanp_ties(evaluated):
    _, results = evaluated
    result = result_json(results, "meanP")
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
    result = result_json(results, "seqTransf_seed0")
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


def test_checkpoint_is_refused_on_a_cache_with_other_features_naming_the_field(evaluated, tmp_path):
    cache, results = evaluated
    other = copy_cache(cache, tmp_path / "other_cache", sampling={"fps": 2.0})
    ckpt = result_json(results, "seqTransf_seed0")["provenance"]["ckpt"]
    with pytest.raises(
        CheckpointError, match=r"features differ in sampling\.fps: the checkpoint's training cache has 1\.0"
    ):
        evaluate.main(["--cache", str(other), "--ckpt", ckpt, "--out", str(tmp_path / "x.json")])


def test_one_command_evaluates_a_checkpoint_on_several_datasets_and_reports_each(evaluated, tmp_path):
    cache, results = evaluated
    # same features, another cache (as another dataset extracted with the same CLIP and sampling)
    other = copy_cache(cache, tmp_path / "other_dataset", compute={"batch_videos": 7})
    ckpt = result_json(results, "seqTransf_seed0")["provenance"]["ckpt"]
    out = tmp_path / "multi" / "seqTransf.json"
    targets = ["--cache", f"{cache}:test", "--cache", f"{other}:valid", "--out", str(out)]
    with pytest.raises(StageError, match=r"has seen 16 of the 16 videos of .*other_dataset \(valid\)"):
        evaluate.main(["--ckpt", ckpt, *targets])  # its epoch was selected on those videos
    assert not (tmp_path / "multi").exists()  # refused before any target was scored
    evaluate.main(["--ckpt", ckpt, *targets, "--allow-overlap"])
    first = json.loads((tmp_path / "multi" / "seqTransf.synthetic_test.json").read_text())
    second = json.loads((tmp_path / "multi" / "seqTransf.synthetic_valid.json").read_text())
    assert first["provenance"]["dataset"] == "synthetic test" and second["provenance"]["dataset"] == "synthetic valid"
    assert first["hard"] == result_json(results, "seqTransf_seed0")["hard"]  # the same split scores as before
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


def test_a_head_with_parameters_needs_a_checkpoint(evaluated, tmp_path, capsys):
    cache, _ = evaluated
    args = ["--cache", str(cache), "--head", "seqTransf", "--out", str(tmp_path / "x.json")]
    message = usage_error(evaluate.main, args, capsys)
    assert "argument --head: invalid choice: 'seqTransf' (choose from 'meanP')" in message


def test_keep_finished_leaves_this_evaluations_result_alone_and_redoes_any_other(order, tmp_path, capsys):
    """Issue 29: after a cluster's array had written every result, the final run_all.sh evaluated all
    of them again. With --keep-finished a result that reads back whole and records the same
    checkpoint, cache content, flags and code is kept; a changed flag, checkpoint or array is not."""
    results = copied(order / "results", tmp_path / "results")
    ckpt = ["--cache", str(order / "cache"), "--ckpt", str(order / "seqTransf" / "best.pt")]
    out = results / "seqTransf.json"
    written = out.stat().st_mtime_ns
    capsys.readouterr()
    evaluate.main([*ckpt, "--out", str(out), "--keep-finished"])
    assert capsys.readouterr().out.startswith(f"kept {out}: finished with the same checkpoint, cache, flags")
    assert out.stat().st_mtime_ns == written
    evaluate.main([*ckpt, "--out", str(out), "--keep-finished", "--method", "renamed"])  # another flag
    assert result_json(results, "seqTransf")["provenance"]["method"] == "renamed"
    rewritten = out.stat().st_mtime_ns
    evaluate.main([*ckpt, "--out", str(out), "--keep-finished", "--method", "renamed"])
    assert out.stat().st_mtime_ns == rewritten and "kept" in capsys.readouterr().out
    array = next((results / "seqTransf").glob("*_per_query.npy"))
    array.write_bytes(array.read_bytes()[:-8] + bytes(8))  # damaged after it was written
    evaluate.main([*ckpt, "--out", str(out), "--keep-finished", "--method", "renamed"])
    assert out.stat().st_mtime_ns != rewritten and "kept" not in capsys.readouterr().out
    result_files.read_result(out)  # whole again
    other = tmp_path / "other.pt"  # the same run, another checkpoint file's bytes
    checkpoint = torch.load(order / "seqTransf" / "best.pt", weights_only=True)
    checkpoint["epoch"] = checkpoint["epoch"] + 1
    torch.save(checkpoint, other)
    evaluate.main(["--cache", str(order / "cache"), "--ckpt", str(other), "--out", str(out), "--keep-finished"])
    assert "kept" not in capsys.readouterr().out


def test_generic_dataset_has_one_setting_and_no_binary(evaluated, tmp_path, capsys):
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
    meta["files"]["test"] = split_file_digests(generic, "test")  # the cache as extract.py would write it
    write_meta(generic, meta)
    capsys.readouterr()
    out = tmp_path / "generic_result.json"
    evaluate.main(["--cache", str(generic), "--head", "meanP", "--rewrites", "--out", str(out)])
    # issue 29: --rewrites and --examples did nothing on such data, silently; they say so now
    assert "--rewrites: not applicable: generic annotations have no rewritten captions" in capsys.readouterr().out
    result = json.loads(out.read_text())
    assert set(result) == {"all", "order", "provenance"} and result["all"]["t2v"]["n_queries"] == 12
    examples = ["--examples", "2", "--videos", "x", "--convention", "carebench"]
    report.main(["--results", str(tmp_path), "--out", str(tmp_path / "report"), *examples])
    markdown = (tmp_path / "report" / "report.md").read_text()  # issue 29: its order note said "Hard queries"
    assert "Queries of Retrieval, all captions; mean over seeds." in markdown and "Hard" not in markdown
    assert "Examples (--examples): not applicable to synthetic test: its generic annotations" in markdown
    assert not list((tmp_path / "report").glob("*examples*"))
    # CaReBench's RTime rules for Binary and the reversed candidates have nothing to act on: not claimed
    assert "Binary on the forward side" not in markdown and "a reversal for every video" not in markdown
    assert "; its rules for reversals do not apply here: no video's reversal is among the candidates" in markdown
    assert (
        "- Captions: one query per annotated caption (no paragraph mode); a caption over 77 tokens is cut to its "
        "first 77, as CLIP4Clip does (--long-text truncate): 0 of this split's 24 captions were cut." in markdown
    )


def test_evaluate_refuses_nan_scores_and_writes_no_result(small_clip, tmp_path):
    cache = order_only_cache(small_clip, tmp_path / "cache", n_train=8, n_valid=4, n_test=6, n_frames=4)
    feats = np.load(cache / "test" / "video_feats.npy")
    feats[5] = np.nan
    planted(cache, "test", "video_feats.npy", feats)
    out = tmp_path / "meanP.json"
    with pytest.raises(StageError, match=r"queries have NaN or Inf scores .*no result was written"):
        evaluate.main(["--cache", str(cache), "--head", "meanP", "--out", str(out)])
    assert not out.exists()


def test_checkpoints_and_results_name_the_cache_bytes_they_came_from(demo_data, lone_cache, tmp_path):
    meta = read_meta(lone_cache)
    run = tmp_path / "run"
    train_head.main(
        [
            "--cache",
            str(lone_cache),
            "--head",
            "mlpScore",
            "--out",
            str(run),
            "--epochs",
            "1",
            "--batch-size",
            "4",
            "--frames",
            "4",
        ]
    )
    checkpoint = torch.load(run / "best.pt", weights_only=True)
    assert checkpoint["config"]["cache_content_sha256"] == meta["content_sha256"]
    evaluate.main(["--cache", str(lone_cache), "--ckpt", str(run / "best.pt"), "--out", str(tmp_path / "r.json")])
    provenance = json.loads((tmp_path / "r.json").read_text())["provenance"]
    assert provenance["cache_content_sha256"] == meta["content_sha256"]


@pytest.mark.parametrize(
    "extra,flag",
    [(["--ckpt", "best.pt", "--frames", "4"], "--frames"), (["--head", "meanP", "--out", "results/meanP"], "--out")],
)
def test_evaluate_refuses_nonsense_before_any_scoring_naming_the_flag(tmp_path, capsys, extra, flag):
    args = ["--cache", str(tmp_path), "--out", str(tmp_path / "x.json"), *extra]
    with pytest.raises(SystemExit) as stop:
        evaluate.main(args)
    assert stop.value.code == 2 and flag in capsys.readouterr().err


def test_a_malicious_checkpoint_is_refused_and_runs_nothing(small_clip, tmp_path):
    marker = tmp_path / "code_ran"
    crafted = tmp_path / "best.pt"
    torch.save({"head": {}, "config": RunsShell(marker), "log_scale": torch.tensor(1.0)}, crafted)
    with pytest.raises(CheckpointError, match=r"best.pt is not a plain checkpoint .*nothing in it ran"):
        evaluate.main(["--cache", str(tmp_path), "--ckpt", str(crafted), "--out", str(tmp_path / "x.json")])
    cache = order_only_cache(small_clip, tmp_path / "cache", n_train=16, n_valid=4, n_test=4, n_frames=4)
    with pytest.raises(CheckpointError, match=r"best.pt is not a plain checkpoint"):
        train_head.main(
            train_args(cache, small_clip, tmp_path / "run", "seqTransf", "--init-from", str(crafted), batch_size=16)
        )
    assert not marker.exists()
    torch.load(crafted, weights_only=False)  # the file really is malicious: an unrestricted load runs its code
    assert marker.exists()


def test_an_evaluation_killed_before_its_json_leaves_no_mixed_result(order, tmp_path, monkeypatch):
    results = copied(order / "results", tmp_path / "results")
    args = ["--cache", str(order / "cache"), "--head", "meanP", "--frames", "2", "--out", str(results / "meanP.json")]

    def die(*_):  # the moment between the new arrays and the new JSON
        raise KeyboardInterrupt

    monkeypatch.setattr(result_files, "atomic_write_json", die)
    with pytest.raises(KeyboardInterrupt):
        evaluate.main(args)
    monkeypatch.undo()
    with pytest.raises(ResultError, match="meanP.json: its array .* is not the one it was computed with"):
        report.main(["--results", str(results), "--out", str(tmp_path / "report")])
    evaluate.main(args)  # a rerun makes the result whole again
    report.main(["--results", str(results), "--out", str(tmp_path / "report")])


def test_a_checkpoint_holding_another_heads_weights_is_named(order, tmp_path):
    checkpoint = torch.load(order / "seqTransf" / "best.pt", weights_only=True)
    checkpoint["config"]["head"] = "tightTransf"
    torch.save(checkpoint, tmp_path / "mislabelled.pt")
    with pytest.raises(CheckpointError, match=r"mislabelled.pt holds no 'cross\..*not weights of a TightTransf head"):
        evaluate.main(
            [
                "--cache",
                str(order / "cache"),
                "--ckpt",
                str(tmp_path / "mislabelled.pt"),
                "--out",
                str(tmp_path / "r.json"),
            ]
        )


def test_an_output_never_replaces_what_a_user_put_there(order, tmp_path):
    """Round four: `--out project/data.json` deleted a user's `project/data/` (the array folder's
    name), and an OUT.json that was not a result was overwritten. An output replaces only a folder
    whose manifest says evaluate.py wrote every file in it, or a result file."""
    args = ["--cache", str(order / "cache"), "--head", "meanP", "--out"]
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "data" / "thesis.tex").write_text("chapter one")
    with pytest.raises(ForeignFiles, match=r"project/data holds 'thesis.tex' and was not written by this project"):
        evaluate.main([*args, str(project / "data.json")])
    assert (project / "data" / "thesis.tex").read_text() == "chapter one" and not (project / "data.json").exists()

    (project / "notes.json").write_text('{"mine": 1}')
    with pytest.raises(ForeignFiles, match=r"notes.json exists and is not an evaluate.py result"):
        evaluate.main([*args, str(project / "notes.json")])
    assert (project / "notes.json").read_text() == '{"mine": 1}'

    evaluate.main([*args, str(project / "ours.json")])
    evaluate.main([*args, str(project / "ours.json")])  # its own earlier result is replaced
    (project / "ours" / "draft.txt").write_text("added by hand")  # ...but not once a user file is inside
    with pytest.raises(ForeignFiles, match=r"holds 'draft.txt', which this project did not write there"):
        evaluate.main([*args, str(project / "ours.json")])
    assert (project / "ours" / "draft.txt").exists()


def test_two_labels_that_make_one_file_name_are_refused_before_any_work(order, tmp_path):
    cache = str(order / "cache")
    out = tmp_path / "r.json"
    with pytest.raises(StageError, match=r"labels 'small a/b' and 'small a_b' would both write r.small_a_b.json"):
        evaluate.main(
            ["--cache", f"{cache}:test=small a/b", "--cache", f"{cache}:test=small a_b", "--head", "meanP"]
            + ["--out", str(out)]
        )
    assert list(tmp_path.iterdir()) == []


def test_cache_bytes_changed_after_extraction_are_refused_by_evaluate(order, tmp_path, capsys):
    """Round four: test frames edited in place after extraction gave Origin R@1 100.00 instead of
    16.67 under an unchanged cache_content_sha256; only verify.py noticed. Every stage that opens a
    split now checks its files against the meta's sha256 (the fast path: a file whose inode, size and
    times equal those of its last successful check is not hashed again)."""
    cache = copied(order / "cache", tmp_path / "cache")
    args = ["--cache", str(cache), "--head", "meanP", "--out"]
    evaluate.main([*args, str(tmp_path / "first.json")])
    assert re.search(r"checked .*test: [\d.]+ MB against cache_meta.json's sha256 in", capsys.readouterr().out)
    evaluate.main([*args, str(tmp_path / "again.json")])
    assert "checked " not in capsys.readouterr().out  # unchanged since its check: not hashed again
    frames = np.load(cache / "test" / "video_feats.npy", mmap_mode="r+")
    frames[:] = frames[::-1].copy()  # in place: the same inode and size
    frames.flush()
    del frames
    with pytest.raises(CacheError, match=r"test/video_feats.npy: its sha256 is not the one cache_meta.json records"):
        evaluate.main([*args, str(tmp_path / "edited.json")])
    assert not (tmp_path / "edited.json").exists()


def test_a_head_that_saw_the_test_videos_is_refused_unless_allowed_and_then_marked(order, tmp_path):
    """Round four: a head trained on a cache whose train split is this test split's videos (the same
    file fingerprints under other names) was accepted, and the report said only "trained on: leak".
    The checkpoint records the content keys of the videos it trained and selected on; evaluate
    compares them with the evaluated split's."""
    leak = copied(order / "cache", tmp_path / "leak")
    test_files = json.loads((order / "cache" / "test" / "video_files.json").read_text())
    train_files = json.loads((leak / "train" / "video_files.json").read_text())
    for train_id, entry in zip(
        list(train_files)[: len(test_files)], test_files.values(), strict=True
    ):  # the test files, renamed
        train_files[train_id] = {**entry, "file": f"{train_id}.mp4"}
    (leak / "train" / "video_files.json").write_text(json.dumps(train_files))
    recorded_anew(leak, "train")
    run = tmp_path / "run"
    train_head.main(train_args(leak, order / "clip.pt", run, "seqTransf", "--epochs", "1", batch_size=8))
    args = ["--cache", str(order / "cache"), "--ckpt", str(run / "best.pt"), "--out", str(tmp_path / "r" / "leak.json")]
    with pytest.raises(StageError) as refused:
        evaluate.main(args)
    assert f"{run / 'best.pt'} has seen 6 of the 6 videos of {order / 'cache'} (test), by file content: 6 in " in str(
        refused.value
    )
    assert "0 in epoch selection (e.g. 'test0', 'test1', 'test2')" in str(refused.value)
    assert not (tmp_path / "r" / "leak.json").exists()

    evaluate.main([*args, "--allow-overlap"])
    assert result_json(tmp_path / "r", "leak")["provenance"]["overlap"]["train"] == [f"test{i}" for i in range(6)]
    shutil.copy(order / "results" / "meanP.json", tmp_path / "r")
    shutil.copytree(order / "results" / "meanP", tmp_path / "r" / "meanP")
    report.main(["--results", str(tmp_path / "r"), "--out", str(tmp_path / "report")])
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert (
        "**Not test scores:** some test videos were seen in training (evaluated with --allow-overlap): seqTransf "
        in (markdown)
    )
    numbers = json.loads((tmp_path / "report" / "report_numbers.json").read_text())
    assert numbers["datasets"]["synthetic test"]["seen_test_videos"] == {"seqTransf": {"train": 6, "valid": 0}}


def test_rewrites_rank_the_same_candidates_as_hard_or_are_left_out_saying_so(demo_data, tmp_path, capsys):
    """Round four: with rewrites for half the records, the rewrites ranked 6 candidates instead of
    Hard's 12, so the paraphrase "drop" was an artefact; with none, --rewrites was a TypeError. A
    setting that paraphrases another now ranks that setting's candidates; an empty one is left out."""
    annotations = copied(demo_data / "annotations", tmp_path / "annotations")
    test = json.loads((annotations / "test.json").read_text())
    for record in list(test.values())[:2]:
        record["forward_rewrites"], record["reverse_rewrites"] = [], []
    (annotations / "test.json").write_text(json.dumps(test))
    extract.main(extract_args(demo_data, tmp_path / "half", "--splits", "test", annotations=annotations))
    out = tmp_path / "results" / "half.json"
    evaluate.main(["--cache", str(tmp_path / "half"), "--head", "meanP", "--rewrites", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["rewrites"]["n_candidates"] == result["hard"]["n_candidates"] == 8  # not the 4 with rewrites
    assert result["rewrites"]["v2t"]["n_queries"] == 4  # the videos some rewrite describes
    report.main(["--results", str(tmp_path / "results"), "--out", str(tmp_path / "report")])
    numbers = json.loads((tmp_path / "report" / "report_numbers.json").read_text())
    paraphrase = next(iter(numbers["datasets"].values()))["paraphrase"]["meanP zero-shot"]
    assert paraphrase["n_candidates"] == 4  # the drop pairs the 4 candidates both kinds of query describe

    for record in test.values():
        record["forward_rewrites"], record["reverse_rewrites"] = [], []
    (annotations / "test.json").write_text(json.dumps(test))
    extract.main(extract_args(demo_data, tmp_path / "none", "--splits", "test", annotations=annotations))
    out = tmp_path / "none_result.json"
    capsys.readouterr()
    evaluate.main(["--cache", str(tmp_path / "none"), "--head", "meanP", "--rewrites", "--out", str(out)])
    assert "rewrites: " in capsys.readouterr().out
    assert "rewrites" not in json.loads(out.read_text())


def test_a_checkpoint_from_before_seen_videos_were_recorded_is_checked_against_its_training_cache(order, tmp_path):
    checkpoint = torch.load(order / "seqTransf" / "best.pt", weights_only=True)
    del checkpoint["seen_videos"]
    torch.save(checkpoint, tmp_path / "old.pt")
    args = ["--cache", str(order / "cache"), "--ckpt", str(tmp_path / "old.pt"), "--out"]
    evaluate.main([*args, str(tmp_path / "r" / "old.json")])  # its training cache is there: read from it
    assert result_json(tmp_path / "r", "old")["provenance"]["overlap"] == {"train": [], "valid": []}
    checkpoint["config"]["cache"] = str(tmp_path / "moved")
    torch.save(checkpoint, tmp_path / "moved.pt")
    args[args.index(str(tmp_path / "old.pt"))] = str(tmp_path / "moved.pt")
    with pytest.raises(CheckpointError, match=r"moved.pt records no training videos .* training cache .*moved is not"):
        evaluate.main([*args, str(tmp_path / "r" / "moved.json")])
    evaluate.main([*args, str(tmp_path / "r" / "moved.json"), "--allow-overlap"])
    assert result_json(tmp_path / "r", "moved")["provenance"]["overlap"] is None
