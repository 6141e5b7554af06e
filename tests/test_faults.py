"""What happens when something is wrong: each bad input, fault or tampering ends in a clear error
(exit code, message naming the file, record or flag) or a byte-identical result after a rerun,
never in a confident wrong number. The README's table "What happens when something is wrong"
lists these cases; each has a test here or where noted there."""

import errno
import json
import os
import shutil
import signal
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

import clip_vendor
import evaluate
import extract
import report
import train_head
import verify
from corpus.feature_cache import content_digest, read_meta
from evaluation.retrieval_metrics import binary_accuracy, retrieval_metrics
from fixtures.synthetic_cache import write_order_only_cache
from heads.checkpoints import CheckpointError, save_checkpoint
from infra import file_io
from make_demo_data import write_tiny_clip
from tests.helpers import cache_files, extract_args, start_script, verify_args, wait_until


@pytest.fixture(scope="module")
def lone_cache(demo_data, tmp_path_factory):
    """The demo extracted by one uninterrupted run, one video per chunk (the reference bytes)."""
    out = tmp_path_factory.mktemp("lone") / "cache"
    extract.main(extract_args(demo_data, out, "--batch-videos", "1"))
    return out


def copy_videos(demo_data, tmp_path):
    videos = tmp_path / "videos"
    shutil.copytree(demo_data / "videos", videos)
    return videos


def ids_of(demo_data, split):
    return list(json.loads((demo_data / "annotations" / f"{split}.json").read_text()))


# --- silent wrong numbers: NaN and Inf -------------------------------------------------------


def test_metrics_refuse_non_finite_scores_naming_how_many_queries():
    scores = np.array([[0.9, 0.1], [np.nan, 0.2], [0.3, np.inf]])
    with pytest.raises(ValueError, match="2 of 3 queries have non-finite scores"):
        retrieval_metrics(scores, np.eye(3, 2, dtype=bool) | np.array([[0, 0], [0, 0], [1, 0]], dtype=bool))
    with pytest.raises(ValueError, match="1 of 2 binary margins are not finite"):
        binary_accuracy([0.5, np.nan])


def nan_clip(source, destination, key):
    """The checkpoint at `source` with one weight matrix set to NaN (a broken or diverged file)."""
    state = clip_vendor.read_state_dict(source)
    state[key] = torch.full_like(state[key], float("nan"))
    torch.save(state, destination)
    return destination


def test_extract_refuses_nan_video_features_naming_the_videos(demo_data, tmp_path):
    clip = nan_clip(demo_data / "clip_tiny.pt", tmp_path / "nan_visual.pt", "visual.proj")
    args = extract_args(demo_data, tmp_path / "cache", "--splits", "test")
    args[args.index("--clip") + 1] = str(clip)
    with pytest.raises(SystemExit, match=r"NaN or Inf features for video\(s\) " + ids_of(demo_data, "test")[0]):
        extract.main(args)
    assert not list((tmp_path / "cache").rglob("*.npz"))  # nothing of the chunk was written


def test_extract_refuses_nan_text_features_naming_the_captions(demo_data, tmp_path):
    clip = nan_clip(demo_data / "clip_tiny.pt", tmp_path / "nan_text.pt", "text_projection")
    args = extract_args(demo_data, tmp_path / "cache", "--splits", "test")
    args[args.index("--clip") + 1] = str(clip)
    first = ids_of(demo_data, "test")[0]
    with pytest.raises(SystemExit, match=rf"NaN or Inf features for caption\(s\) {first}#forward#human#0"):
        extract.main(args)
    assert not list((tmp_path / "cache").rglob("text_*.npz"))


@pytest.fixture(scope="module")
def small_clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("clip") / "clip.pt"
    write_tiny_clip(path, seed=0, matrix_std=0.05)
    return path


def order_cache(clip, out, **sizes):
    write_order_only_cache(out, clip, asdict(clip_vendor.load(clip)[0].config), **sizes)
    return out


def train_args(cache, clip, out, head="seqTransf", *extra):
    return [
        "--cache",
        str(cache),
        "--head",
        head,
        "--out",
        str(out),
        "--clip",
        str(clip),
        "--device",
        "cpu",
        "--batch-size",
        "16",
        *extra,
    ]


def test_training_stops_on_a_non_finite_loss_naming_epoch_and_step_and_saves_nothing(small_clip, tmp_path):
    cache = order_cache(small_clip, tmp_path / "cache", n_train=64, n_valid=8, n_test=4, n_frames=4)
    feats = np.load(cache / "train" / "video_feats.npy")
    feats[12] = np.inf  # one frame of one train video
    np.save(cache / "train" / "video_feats.npy", feats)
    with pytest.raises(SystemExit, match=r"loss is not finite at epoch 1, step [1-4] of 4"):
        train_head.main(train_args(cache, small_clip, tmp_path / "run", "seqTransf", "--epochs", "2"))
    assert not (tmp_path / "run" / "best.pt").exists() and not (tmp_path / "run" / "last.pt").exists()


def test_a_non_finite_head_is_never_saved(tmp_path):
    with pytest.raises(CheckpointError, match="not saving .*best.pt: head weight w holds NaN or Inf"):
        save_checkpoint(tmp_path / "best.pt", {"head": {"w": torch.tensor([1.0, float("nan")])}})
    assert not list(tmp_path.iterdir())


def test_evaluate_refuses_nan_scores_and_writes_no_result(small_clip, tmp_path):
    cache = order_cache(small_clip, tmp_path / "cache", n_train=8, n_valid=4, n_test=6, n_frames=4)
    feats = np.load(cache / "test" / "video_feats.npy")
    feats[5] = np.nan
    np.save(cache / "test" / "video_feats.npy", feats)
    out = tmp_path / "meanP.json"
    with pytest.raises(SystemExit, match=r"queries have NaN or Inf scores .*no result was written"):
        evaluate.main(["--cache", str(cache), "--head", "meanP", "--out", str(out)])
    assert not out.exists()


def test_verify_counts_nan_as_a_failure_not_as_zero_difference(demo_data, lone_cache, tmp_path, capsys):
    tampered = tmp_path / "tampered"
    shutil.copytree(lone_cache, tampered)
    feats = np.load(tampered / "test" / "video_feats.npy")
    feats[:] = np.nan  # every test video: whichever is drawn is NaN
    np.save(tampered / "test" / "video_feats.npy", feats)
    with pytest.raises(SystemExit):
        verify.main(verify_args(demo_data, tampered, 24))
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("re-extraction = cache"))
    assert " FAIL " in row and "FAIL for 4 of 16 videos" in row  # the 4 test videos: a NaN is never a difference of 0
    assert row.count("(NaN or Inf in the cached features)") == 4


def test_report_refuses_a_result_with_a_non_finite_number(small_clip, tmp_path):
    cache = order_cache(small_clip, tmp_path / "cache", n_train=8, n_valid=4, n_test=6, n_frames=4)
    results = tmp_path / "results"
    evaluate.main(["--cache", str(cache), "--head", "meanP", "--out", str(results / "meanP.json")])
    result = json.loads((results / "meanP.json").read_text())
    result["hard"]["t2v"]["expected"]["R@1"] = float("nan")
    (results / "meanP.json").write_text(json.dumps(result))
    with pytest.raises(SystemExit, match=r"meanP.json: result.hard.t2v.expected.R@1 is not a finite number"):
        report.main(["--results", str(results), "--out", str(tmp_path / "report")])


# --- stale or tampered caches ----------------------------------------------------------------


def test_swapped_videos_are_not_taken_for_a_finished_cache(demo_data, lone_cache, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(lone_cache, cache)
    videos = copy_videos(demo_data, tmp_path)
    first, second = (videos / f"{video_id}.avi" for video_id in ids_of(demo_data, "valid")[:2])
    first_bytes = first.read_bytes()
    first.write_bytes(second.read_bytes())
    second.write_bytes(first_bytes)
    with pytest.raises(
        SystemExit,
        match=rf"refusing to reuse .*valid: video '{first.stem}': "
        r"(size|head_tail_sha256) was .* at extraction, is .* now",
    ):
        extract.main(extract_args(demo_data, cache, "--batch-videos", "1", videos=videos))


def test_another_videos_folder_with_the_same_files_is_the_same_cache(demo_data, lone_cache, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(lone_cache, cache)
    before = cache_files(cache)
    extract.main(extract_args(demo_data, cache, "--batch-videos", "1", videos=copy_videos(demo_data, tmp_path)))
    assert cache_files(cache) == before


def test_a_restored_failed_video_is_noticed(demo_data, tmp_path):
    videos = copy_videos(demo_data, tmp_path)
    missing = videos / f"{ids_of(demo_data, 'test')[1]}.avi"
    kept = missing.read_bytes()
    missing.unlink()
    cache = tmp_path / "cache"
    args = extract_args(demo_data, cache, "--splits", "test", "--on-error", "skip", videos=videos)
    extract.main(args)
    missing.write_bytes(kept)
    with pytest.raises(SystemExit, match=f"video '{missing.stem}': file was None at extraction, is '{missing.name}'"):
        extract.main(args)


@pytest.mark.parametrize("name", ["video_feats.npy", "text_token_offsets.npy"])
def test_a_deleted_cache_file_is_not_already_complete(demo_data, lone_cache, tmp_path, name):
    cache = tmp_path / "cache"
    shutil.copytree(lone_cache, cache)
    (cache / "test" / name).unlink()
    with pytest.raises(SystemExit, match=f"{cache / 'test' / name} is missing; extract the cache again"):
        extract.main(extract_args(demo_data, cache, "--batch-videos", "1"))


def test_the_same_clip_file_under_another_name_is_the_same_checkpoint(demo_data, lone_cache, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(lone_cache, cache)
    renamed = tmp_path / "ViT-renamed.pt"
    shutil.copy(demo_data / "clip_tiny.pt", renamed)
    before = cache_files(cache)
    args = extract_args(demo_data, cache, "--batch-videos", "1")
    args[args.index("--clip") + 1] = str(renamed)
    extract.main(args)
    assert cache_files(cache) == before


def test_every_file_digest_is_recorded_and_verify_checks_all_of_them(demo_data, lone_cache, tmp_path, capsys):
    meta = read_meta(lone_cache)
    assert set(meta["files"]["test"]) >= {
        "video_feats.npy",
        "text_feats.npy",
        "captions.jsonl",
        "test_pairs.csv",
        "video_files.json",
    }
    assert meta["content_sha256"] == content_digest(meta)
    tampered = tmp_path / "tampered"
    shutil.copytree(lone_cache, tampered)
    feats = np.load(tampered / "train" / "video_feats.npy")
    feats[-1, 0] += 1.0  # the last frame of the last train video: not among the one video re-extracted
    np.save(tampered / "train" / "video_feats.npy", feats)
    with pytest.raises(SystemExit, match="train file sha256"):
        verify.main(verify_args(demo_data, tampered, 1))
    assert "changed or missing: video_feats.npy" in capsys.readouterr().out


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


# --- annotation mistakes ---------------------------------------------------------------------


def annotations_copy(demo_data, tmp_path):
    folder = tmp_path / "annotations"
    shutil.copytree(demo_data / "annotations", folder)
    return folder


def extract_with(demo_data, annotations, out, *extra):
    return extract.main(extract_args(demo_data, out, *extra, annotations=annotations))


def test_a_video_in_two_splits_is_refused_naming_both_files(demo_data, tmp_path):
    annotations = annotations_copy(demo_data, tmp_path)
    train = json.loads((annotations / "train.json").read_text())
    test = json.loads((annotations / "test.json").read_text())
    leaked = next(iter(test))
    train[leaked] = test[leaked]
    (annotations / "train.json").write_text(json.dumps(train))
    # refused even when only the test split is extracted
    with pytest.raises(SystemExit, match=f"video id '{leaked}' is in both .*train.json and .*test.json"):
        extract_with(demo_data, annotations, tmp_path / "cache", "--splits", "test")


def test_an_unknown_field_is_refused_naming_key_record_and_known_fields(demo_data, tmp_path):
    annotations = annotations_copy(demo_data, tmp_path)
    test = json.loads((annotations / "test.json").read_text())
    record_id = list(test)[2]
    test[record_id]["reverse_rewrite"] = test[record_id].pop("reverse_rewrites")  # a typo
    (annotations / "test.json").write_text(json.dumps(test))
    with pytest.raises(
        SystemExit,
        match=f"record '{record_id}' has an unknown field 'reverse_rewrite' "
        r"\(rtime records know forward_captions, .*reverse_rewrites, temporal, url\)",
    ):
        extract_with(demo_data, annotations, tmp_path / "cache", "--splits", "test")


def test_captions_cut_at_the_context_length_are_counted_and_recorded(demo_data, tmp_path, capsys):
    annotations = annotations_copy(demo_data, tmp_path)
    test = json.loads((annotations / "test.json").read_text())
    first = next(iter(test))
    test[first]["forward_rewrites"][0] = " ".join(["word"] * 100)  # 102 tokens with start and end
    (annotations / "test.json").write_text(json.dumps(test))
    extract_with(demo_data, annotations, tmp_path / "cache", "--splits", "test")
    assert read_meta(tmp_path / "cache")["counts"]["test"]["truncated_captions"] == 1
    assert "[test] 1 captions were longer than 77 tokens and were cut" in capsys.readouterr().out


# --- report ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_results(small_clip, tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    cache = order_cache(small_clip, root / "cache", n_train=16, n_valid=4, n_test=6, n_frames=4)
    train_head.main(train_args(cache, small_clip, root / "run", "mlpScore", "--epochs", "1", "--batch-size", "8"))
    results = root / "results"
    evaluate.main(["--cache", str(cache), "--head", "meanP", "--out", str(results / "meanP.json")])
    evaluate.main(["--cache", str(cache), "--ckpt", str(root / "run" / "best.pt"), "--out", str(results / "mlp.json")])
    return results


def test_report_refuses_one_seed_twice(two_results, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(two_results, results)
    shutil.copy(results / "mlp.json", results / "mlp_again.json")
    with pytest.raises(SystemExit, match=r"mlp.json are both 'mlpScore' seed 0 .*would be averaged as two seeds"):
        report.main(["--results", str(results), "--out", str(tmp_path / "report")])


def test_report_refuses_one_method_name_for_two_heads(two_results, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(two_results, results)
    result = json.loads((results / "meanP.json").read_text())
    result["provenance"]["method"] = "mlpScore"
    (results / "meanP.json").write_text(json.dumps(result))
    with pytest.raises(SystemExit, match="method 'mlpScore' names results that differ in .* two methods, not seeds"):
        report.main(["--results", str(results), "--out", str(tmp_path / "report")])


def test_report_names_an_unrelated_json_file(two_results, tmp_path):
    results = tmp_path / "results"
    shutil.copytree(two_results, results)
    (results / "notes.json").write_text('{"todo": "rerun"}')
    with pytest.raises(SystemExit, match="notes.json is not an evaluate.py result"):
        report.main(["--results", str(results), "--out", str(tmp_path / "report")])


# --- command-line values that would run on nonsense ---------------------------------------------


@pytest.mark.parametrize(
    "flag,value",
    [
        ("--fps", "0"),
        ("--fps", "-1"),
        ("--fps", "nan"),
        ("--batch-videos", "0"),
        ("--context-length", "78"),
        ("--t-max", "1"),
    ],
)
def test_extract_refuses_nonsense_before_any_work_naming_the_flag(demo_data, tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as stop:
        extract.main(extract_args(demo_data, tmp_path / "cache", flag, value))
    assert stop.value.code == 2 and flag in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    "flag,value",
    [
        ("--batch-size", "1"),
        ("--epochs", "0"),
        ("--frames", "0"),
        ("--frames", "3"),
        ("--lr", "nan"),
        ("--logit-scale", "0"),
        ("--logit-scale", "nan"),
        ("--logit-scale", "101"),
    ],
)
def test_train_refuses_nonsense_before_any_work_naming_the_flag(tmp_path, capsys, flag, value):
    args = ["--cache", str(tmp_path / "none"), "--head", "seqTransf", "--out", str(tmp_path / "run"), flag, value]
    with pytest.raises(SystemExit) as stop:
        train_head.main(args)
    assert stop.value.code == 2 and flag in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "extra,flag",
    [(["--ckpt", "best.pt", "--frames", "4"], "--frames"), (["--head", "meanP", "--out", "results/meanP"], "--out")],
)
def test_evaluate_refuses_nonsense_before_any_scoring_naming_the_flag(tmp_path, capsys, extra, flag):
    args = ["--cache", str(tmp_path), "--out", str(tmp_path / "x.json"), *extra]
    with pytest.raises(SystemExit) as stop:
        evaluate.main(args)
    assert stop.value.code == 2 and flag in capsys.readouterr().err


def test_run_all_refuses_a_gpu_count_that_is_not_a_number(tmp_path):
    import subprocess

    from tests.helpers import PROJECT

    completed = subprocess.run(
        ["bash", str(PROJECT / "run_all.sh"), "--gpus", "abc", "--work", str(tmp_path)], capture_output=True, text=True
    )
    assert completed.returncode == 2 and "--gpus 'abc'" in completed.stderr


# --- safety: a checkpoint never runs code -------------------------------------------------------


class RunsCode:
    """Unpickling this calls os.system: what a crafted checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_malicious_checkpoint_is_refused_and_runs_nothing(small_clip, tmp_path):
    marker = tmp_path / "code_ran"
    crafted = tmp_path / "best.pt"
    torch.save({"head": {}, "config": RunsCode(marker), "log_scale": torch.tensor(1.0)}, crafted)
    with pytest.raises(SystemExit, match=r"best.pt is not a plain checkpoint .*nothing in it ran"):
        evaluate.main(["--cache", str(tmp_path), "--ckpt", str(crafted), "--out", str(tmp_path / "x.json")])
    cache = order_cache(small_clip, tmp_path / "cache", n_train=16, n_valid=4, n_test=4, n_frames=4)
    with pytest.raises(SystemExit, match=r"best.pt is not a plain checkpoint"):
        train_head.main(train_args(cache, small_clip, tmp_path / "run", "seqTransf", "--init-from", str(crafted)))
    assert not marker.exists()
    torch.load(crafted, weights_only=False)  # the file really is malicious: an unrestricted load runs its code
    assert marker.exists()


# --- faults: disk full, broken files, interruption, concurrent runs ------------------------------


def test_a_full_disk_before_a_merge_is_named_with_the_bytes_needed_and_a_rerun_ends_identical(
    demo_data, lone_cache, tmp_path, monkeypatch
):
    cache = tmp_path / "cache"
    args = extract_args(demo_data, cache, "--batch-videos", "1")
    real_statvfs = os.statvfs

    def nearly_full(path):
        stats = real_statvfs(path)
        return os.statvfs_result((stats.f_bsize, stats.f_frsize, stats.f_blocks, 0, 3, *stats[5:]))

    monkeypatch.setattr(file_io.os, "statvfs", nearly_full)
    with pytest.raises(SystemExit, match=r"no space left on the device writing .*/train \([\d,]+ bytes needed\)"):
        extract.main(args)
    monkeypatch.undo()
    assert not list(cache.rglob(".*.tmp*"))
    extract.main(args)
    assert cache_files(cache) == cache_files(lone_cache)


def test_a_full_disk_during_a_merge_leaves_no_temporary_file_and_a_rerun_ends_identical(
    demo_data, lone_cache, tmp_path, monkeypatch
):
    cache = tmp_path / "cache"
    args = extract_args(demo_data, cache, "--batch-videos", "1")

    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(file_io.os, "posix_fallocate", no_space)
    with pytest.raises(SystemExit, match=r"no space left on the device writing .*video_feats.npy \([\d,]+ bytes"):
        extract.main(args)
    monkeypatch.undo()
    assert not list(cache.rglob(".*.tmp*"))
    extract.main(args)
    assert cache_files(cache) == cache_files(lone_cache)


def test_training_out_of_disk_is_a_clear_error_and_a_rerun_ends_identical(small_clip, tmp_path, monkeypatch):
    cache = order_cache(small_clip, tmp_path / "cache", n_train=32, n_valid=8, n_test=4, n_frames=4)
    args = train_args(cache, small_clip, tmp_path / "run", "seqTransf", "--epochs", "3")
    real_write_bytes, writes = Path.write_bytes, []

    def full_after_three(self, data):  # config.json, best.pt and last.pt fit; the epoch's log.jsonl does not
        writes.append(self.name)
        if len(writes) > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write_bytes(self, data)

    monkeypatch.setattr(Path, "write_bytes", full_after_three)
    with pytest.raises(SystemExit, match=r"no space left on the device writing .*run/log.jsonl"):
        train_head.main(args)
    monkeypatch.undo()
    assert not list((tmp_path / "run").glob(".*.tmp*"))
    train_head.main(args)
    train_head.main(train_args(cache, small_clip, tmp_path / "lone", "seqTransf", "--epochs", "3"))
    resumed, lone = (torch.load(tmp_path / name / "last.pt", weights_only=True)["head"] for name in ("run", "lone"))
    assert all(torch.equal(resumed[key], lone[key]) for key in lone)


@pytest.mark.parametrize(
    "damage",
    [
        "delete video_offsets.npy",
        "cut text_feats.npy",
        "delete video_ids.json",
        "cut captions.jsonl",
        "invalid cache_meta.json",
    ],
)
def test_a_missing_or_broken_cache_file_is_one_message_naming_it(demo_data, lone_cache, tmp_path, damage):
    cache = tmp_path / "cache"
    shutil.copytree(lone_cache, cache)
    action, name = damage.split(" ")
    path = cache / name if name == "cache_meta.json" else cache / "test" / name
    if action == "delete":
        path.unlink()
    elif action == "cut":  # in the middle of a line or of an array
        data = path.read_bytes()
        path.write_bytes(
            data[: data.index(b"\n", len(data) // 2) - 5] if name.endswith(".jsonl") else data[: len(data) // 2]
        )
    else:
        path.write_text("{ not json")
    with pytest.raises(SystemExit, match=f"{path.name}.*(extract the cache again|not valid JSON)") as stop:
        evaluate.main(["--cache", str(cache), "--head", "meanP", "--out", str(tmp_path / "x.json")])
    assert isinstance(stop.value.code, str) and str(path) in stop.value.code


@pytest.mark.parametrize(
    "moment", ["train/parts/video_000000.npz", "train/video_feats.npy", "test/parts/text_000000.npz"]
)
def test_extraction_killed_at_any_moment_resumes_to_identical_bytes(demo_data, lone_cache, tmp_path, moment):
    out = tmp_path / "cache"
    process = start_script("extract.py", extract_args(demo_data, out, "--batch-videos", "1"))
    wait_until(lambda: (out / moment).exists(), process)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (out / "cache_meta.json").exists() or not read_meta(out)["complete"]
    extract.main(extract_args(demo_data, out, "--batch-videos", "1"))
    assert cache_files(out) == cache_files(lone_cache)


@pytest.mark.parametrize("moment", ["train/parts/video_000000.npz", "train/video_feats.npy"])
def test_ctrl_c_while_decoding_exits_cleanly_and_a_rerun_ends_identical(demo_data, lone_cache, tmp_path, moment):
    out = tmp_path / "cache"
    args = extract_args(demo_data, out, "--batch-videos", "1")
    args[args.index("--workers") + 1] = "2"  # decoding in worker processes, as on a real machine
    process = start_script("extract.py", args)
    wait_until(lambda: (out / moment).exists(), process)
    process.send_signal(signal.SIGINT)
    _, errors = process.communicate()
    assert process.returncode == 130, errors
    assert "interrupted; finished chunks kept; rerun the same command to resume" in errors
    assert "Traceback" not in errors
    extract.main(args)
    assert cache_files(out) == cache_files(lone_cache)


@pytest.mark.parametrize("moment", ["train/parts/video_000000.npz", "test/parts/video_000001.npz"])
def test_a_second_extraction_on_the_same_folder_stops_at_once_and_the_first_ends_identical(
    demo_data, lone_cache, tmp_path, moment
):
    out = tmp_path / "cache"
    first = start_script("extract.py", extract_args(demo_data, out, "--batch-videos", "1"))
    wait_until(lambda: (out / moment).exists(), first)
    first.send_signal(signal.SIGSTOP)  # held at this moment, so the second run meets it there
    try:
        with pytest.raises(SystemExit, match=rf"{out} is in use by another run \(pid {first.pid}\)"):
            extract.main(extract_args(demo_data, out, "--batch-videos", "1"))
    finally:
        first.send_signal(signal.SIGCONT)
    _, errors = first.communicate()
    assert first.returncode == 0, errors
    assert cache_files(out) == cache_files(lone_cache)


@pytest.fixture(scope="module")
def training_case(small_clip, tmp_path_factory):
    """A cache, the training arguments, and the last.pt weights of an uninterrupted run."""
    root = tmp_path_factory.mktemp("training")
    cache = order_cache(small_clip, root / "cache", n_train=64, n_valid=8, n_test=4, n_frames=4)
    extra = ("--epochs", "6", "--lr", "3e-3")
    train_head.main(train_args(cache, small_clip, root / "lone", "tightTransf", *extra))
    return cache, extra, torch.load(root / "lone" / "last.pt", weights_only=True)["head"]


def finished_epochs(run):
    log = run / "log.jsonl"
    return len(log.read_text().splitlines()) if log.exists() else 0


@pytest.mark.parametrize("signal_name,after_epochs", [("SIGINT", 1), ("SIGKILL", 3)])
def test_training_interrupted_resumes_to_identical_weights(
    small_clip, training_case, tmp_path, signal_name, after_epochs
):
    cache, extra, lone = training_case
    run = tmp_path / "run"
    process = start_script("train_head.py", train_args(cache, small_clip, run, "tightTransf", *extra))
    wait_until(lambda: finished_epochs(run) >= after_epochs, process)
    process.send_signal(getattr(signal, signal_name))
    _, errors = process.communicate()
    if signal_name == "SIGINT":
        assert process.returncode == 130 and "interrupted; the epochs finished so far are kept in last.pt" in errors
    assert after_epochs <= finished_epochs(run) < 6
    train_head.main(train_args(cache, small_clip, run, "tightTransf", *extra))
    resumed = torch.load(run / "last.pt", weights_only=True)["head"]
    assert all(torch.equal(resumed[key], lone[key]) for key in lone)


@pytest.mark.parametrize("after_epochs", [0, 3])
def test_a_second_training_on_the_same_folder_stops_at_once_and_the_first_ends_identical(
    small_clip, training_case, tmp_path, after_epochs
):
    cache, extra, lone = training_case
    run = tmp_path / "run"
    first = start_script("train_head.py", train_args(cache, small_clip, run, "tightTransf", *extra))
    wait_until(lambda: (run / "config.json").exists() and finished_epochs(run) >= after_epochs, first)
    first.send_signal(signal.SIGSTOP)  # held at this moment, so the second run meets it there
    try:
        with pytest.raises(SystemExit, match=rf"{run} is in use by another run \(pid {first.pid}\)"):
            train_head.main(train_args(cache, small_clip, run, "tightTransf", *extra))
    finally:
        first.send_signal(signal.SIGCONT)
    _, errors = first.communicate()
    assert first.returncode == 0, errors
    finished = torch.load(run / "last.pt", weights_only=True)["head"]
    assert all(torch.equal(finished[key], lone[key]) for key in lone)
