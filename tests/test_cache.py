import errno
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import zipfile
from fractions import Fraction

import cv2
import numpy as np
import pytest
import torch

import clip_vendor
import evaluate
import extract
import report
import train_head
import tune
import verify
from corpus.feature_cache import (
    FAILED_VIDEOS_NAME,
    CacheError,
    content_digest,
    open_split,
    read_meta,
    read_pairs,
    write_meta,
)
from corpus.sampling import sample_frame_indices
from corpus.video_frames import DecodeSpec, VideoError, decode_sampled_frames
from infra import file_io
from infra.cli import StageError
from infra.file_io import FolderLocked, OutOfSpace
from tests.helpers import (
    PROJECT,
    RunsShell,
    cache_files,
    copied,
    copied_annotations,
    extract_args,
    ids_of,
    refusal,
    start_script,
    train_args,
    tune_args,
    two_nodes,
    two_ranks,
    usage_error,
    verify_args,
    wait_until,
)


@pytest.mark.parametrize("n_frames", [1, 2, 7, 24, 25, 100, 301, 900, 901])
@pytest.mark.parametrize("fps,t_max", [(1, 24), (4, 24), (2, 12), (30, 16), (0.5, 2)])
def test_sampling_is_mirror_symmetric_and_bounded(n_frames, fps, t_max):
    indices = sample_frame_indices(n_frames, Fraction(n_frames, 30), fps, t_max)  # 30 frames per second
    assert indices == sorted(set(indices))
    assert [n_frames - 1 - i for i in reversed(indices)] == indices
    assert 0 <= indices[0] and indices[-1] < n_frames
    assert len(indices) <= max(t_max, 2) and len(indices) <= max(n_frames, 1) + 1


def test_sampling_spreads_evenly_over_long_videos():
    indices = sample_frame_indices(900, Fraction(30), 1, 24)  # 30 s at 30 fps: 30 candidates, 24 kept
    assert len(indices) == 24
    gaps = np.diff(indices)
    assert gaps.min() >= 37 and gaps.max() <= 38  # 900 / 24 = 37.5


def test_short_video_keeps_fewer_frames(demo_cache):
    test = open_split(demo_cache, "test")
    # demo videos: 24 frames at 8 fps = 3 s; at 4 fps that is 12 candidates, under t_max 24
    assert [len(test.frames(row)) for row in range(len(test.video_ids))] == [12] * 4  # the demo's 4 test videos


def test_cache_layout_and_dtypes(demo_cache):
    meta = json.loads((demo_cache / "cache_meta.json").read_text())
    assert meta["complete"] and meta["counts"]["test"]["videos"] == 4
    test = open_split(demo_cache, "test")
    assert test.video_feats.dtype == np.float16 and test.video_feats.shape[1] == 64
    assert test.video_offsets.dtype == np.int64 and len(test.video_offsets) == 5
    assert isinstance(test.video_feats, np.memmap)
    assert len(test.text_feats) == len(test.captions) == 4 * 8  # 1 + 1 human, 3 + 3 rewrites
    assert test.text_token_offsets[-1] == len(test.text_token_feats)
    hard = read_pairs(demo_cache, "test", "hard")
    origin = read_pairs(demo_cache, "test", "origin")
    assert len(hard) == 8 and sum(p["reversed"] for p in hard) == 4 and len(origin) == 4
    assert all(test.captions[p["caption_row"]]["kind"] == "human" for p in hard)
    train_meta = meta["counts"]["train"]
    assert train_meta["captions"] == 7 * 8 + 1 * 4  # one train record is not reversible


def test_token_features_pool_to_text_features(demo_cache):
    test = open_split(demo_cache, "test")
    for row in range(0, len(test.captions), 7):
        assert np.array_equal(test.tokens(row)[-1], test.text_feats[row])  # pooled at the EOT token


def test_reversed_file_extracts_to_exact_flip(demo_data, demo_cache, tmp_path):
    out = tmp_path / "reversed_cache"
    extract.main(extract_args(demo_data, out, "--splits", "test", videos=demo_data / "videos_reversed"))
    original, reversed_cache = open_split(demo_cache, "test"), open_split(out, "test")
    for row in range(len(original.video_ids)):
        assert np.array_equal(reversed_cache.frames(row), original.frames(row)[::-1])
        assert not np.array_equal(original.frames(row), original.frames(row)[::-1])


def test_rerun_reuses_complete_cache_and_is_deterministic(demo_data, demo_cache, tmp_path):
    before = cache_files(demo_cache)
    extract.main(extract_args(demo_data, demo_cache))  # complete: nothing rewritten
    assert cache_files(demo_cache) == before
    fresh = tmp_path / "fresh"
    extract.main(extract_args(demo_data, fresh))
    assert cache_files(fresh) == before


def test_different_settings_are_refused_naming_the_field(demo_data, demo_cache):
    with pytest.raises(CacheError, match=r"differs in sampling\.fps: the cache has 4\.0, this run has 2\.0"):
        extract.main(extract_args(demo_data, demo_cache) + ["--fps", "2"])


def run_extract(demo, out, *extra, launcher=None, env=None):
    command = (launcher or [sys.executable]) + [str(PROJECT / "extract.py")] + extract_args(demo, out, *extra)
    env = {**os.environ, "PYTHONPATH": str(PROJECT), **(env or {})}
    return subprocess.Popen(command, cwd=PROJECT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_the_cache_does_not_depend_on_the_thread_count_the_environment_sets(demo_data, demo_cache, tmp_path):
    # torchrun sets OMP_NUM_THREADS=1; CLIP on the CPU computes with a fixed thread count whatever it says
    runs = {
        threads: run_extract(demo_data, tmp_path / threads, "--splits", "test", env={"OMP_NUM_THREADS": threads})
        for threads in "13"
    }
    for threads, process in runs.items():
        output, _ = process.communicate()
        assert process.returncode == 0, output
        assert split_of(tmp_path / threads, "test") == split_of(demo_cache, "test"), threads
    assert json.loads((demo_cache / "cache_meta.json").read_text())["contract"]["compute"]["cpu_threads"] == 1


def split_of(cache, split):
    """The files of one split of a cache, and what the meta records of it: what a run of that split alone made."""
    meta = read_meta(cache)
    recorded = {key: meta[key][split] for key in ("files", "counts")} | {"contract": meta["contract"]["compute"]}
    return {name: data for name, data in cache_files(cache).items() if name.startswith(f"{split}/")}, recorded


def test_torchrun_on_two_nodes_equals_one_process(demo_data, demo_cache, tmp_path):
    out = tmp_path / "two_nodes"  # a folder both "nodes" see, as a shared file system is
    # the train split: reversible records and one that is not, split between the ranks
    args = extract_args(demo_data, out, "--splits", "train")
    for code, output in two_nodes("extract.py", lambda node: args, port=29517):
        assert code == 0, output
    assert split_of(out, "train") == split_of(demo_cache, "train")


def test_an_output_folder_the_nodes_do_not_share_is_refused_naming_it(demo_data, tmp_path):
    outs = [tmp_path / "node0" / "cache", tmp_path / "node1" / "cache"]  # each node its own disk
    # the ranks without torchrun's launchers (the check is the stage's; the launcher is tested above)
    nodes = two_ranks("extract.py", lambda node: extract_args(demo_data, outs[node]), port=29519)
    for code, output in nodes:
        assert code == 1, output
        assert f"--out is not shared between the nodes: rank 0 wrote into {outs[0]}, and rank 1 on " in output
        assert f"(its --out: {outs[1]}) cannot see it" in output
    assert not list(outs[0].rglob("*.npy")) and not outs[1].exists()  # stopped before any chunk


def test_ranks_that_would_run_different_jobs_all_stop_naming_the_field(demo_data, tmp_path):
    """Round four: under two-node torchrun, node 0 at --fps 4 and node 1 at --fps 1 gave "cache
    complete" with meta fps 4.0 and videos of 2 and 12 frames; different captions mixed too. Every
    rank now shares its flags, the code version and the contract (CLIP and annotation sha256)
    before any work; every difference is named, and stops them all."""
    other = copied_annotations(demo_data, tmp_path)  # rank 1's own copy, at another path, one caption changed
    test = json.loads((other / "test.json").read_text())
    next(iter(test.values()))["forward_captions"][0] = "another caption"
    (other / "test.json").write_text(json.dumps(test))
    folders, fps = (demo_data / "annotations", other), ("4", "1")
    out = tmp_path / "cache"
    nodes = two_ranks(
        "extract.py",
        lambda rank: extract_args(demo_data, out, "--fps", fps[rank], annotations=folders[rank]),
        port=29541,
    )
    for code, output in nodes:
        assert code == 1, output
        assert re.search(
            r"the ranks do not run the same job: --fps differs \(4\.0 on rank 0 \(.*\); 1\.0 on rank 1", output
        )
        assert "; contract.annotations.test.sha256 differs (" in output
    assert not list(out.rglob("*.npy"))


@pytest.fixture
def broken_videos(demo_data, tmp_path):
    """The demo videos with one test video truncated, one emptied, one not a video, one missing."""
    videos = tmp_path / "videos"
    shutil.copytree(demo_data / "videos", videos)
    test_ids = list(json.loads((demo_data / "annotations" / "test.json").read_text()))
    truncated, empty, garbage, missing = (videos / f"{video_id}.avi" for video_id in test_ids)
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 3])
    empty.write_bytes(b"")
    garbage.write_bytes(b"this is not a video\n" * 100)
    missing.unlink()
    return videos, test_ids


def test_bad_video_stops_the_run_naming_the_file(demo_data, broken_videos, tmp_path):
    videos, test_ids = broken_videos
    with pytest.raises(VideoError, match=f"video '{test_ids[0]}' failed .*{test_ids[0]}.avi") as stop:
        extract.main(extract_args(demo_data, tmp_path / "cache", "--splits", "test", videos=videos))
    assert "rerun with --on-error skip and a new --out" in str(stop.value)  # advice the contract accepts


def test_bad_videos_skipped_are_recorded_and_dropped_consistently(demo_data, broken_videos, tmp_path):
    videos, test_ids = broken_videos
    out = tmp_path / "cache"
    extract.main(extract_args(demo_data, out, "--splits", "test", "--on-error", "skip", videos=videos))
    failed = json.loads((out / "failed_videos.json").read_text())["test"]
    assert sorted(f["video_id"] for f in failed) == sorted(test_ids)
    reasons = {f["video_id"]: f["reason"] for f in failed}
    assert reasons[test_ids[3]].startswith("missing")
    assert all(
        reason.split(":")[0] in {"truncated", "unreadable", "zero frames"}
        for reason in reasons.values()
        if not reason.startswith("missing")
    )
    test = open_split(out, "test")
    assert test.video_ids == [] and len(test.video_feats) == 0
    for setting in ("hard", "origin"):
        assert read_pairs(out, "test", setting) == []


def test_one_bad_video_among_good_ones(demo_data, tmp_path):
    videos = tmp_path / "videos"
    shutil.copytree(demo_data / "videos", videos)
    test_ids = list(json.loads((demo_data / "annotations" / "test.json").read_text()))
    (videos / f"{test_ids[1]}.avi").unlink()
    out = tmp_path / "cache"
    extract.main(extract_args(demo_data, out, "--splits", "test", "--on-error", "skip", videos=videos))
    test = open_split(out, "test")
    assert test.video_ids == [test_ids[0], test_ids[2], test_ids[3]]
    pairs = read_pairs(out, "test", "hard")
    assert {p["video_id"] for p in pairs} == set(test.video_ids)
    assert all(test.video_ids[p["video_row"]] == p["video_id"] for p in pairs)
    assert len(test.captions) == 4 * 8  # the captions stay embedded; only their pairs go


def test_truncated_lossless_video_is_reported_truncated(tmp_path):
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), 8, (64, 48))
    rng = np.random.default_rng(0)
    for _ in range(40):
        writer.write(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    writer.release()
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    from corpus.video_frames import VideoError

    with pytest.raises(VideoError, match=f"(truncated|unreadable).*{path}"):
        decode_sampled_frames(path, DecodeSpec(4, 24, 32))


def test_verify_passes_on_good_cache_and_fails_on_tampered_one(demo_data, demo_cache, tmp_path, capsys):
    reversed_videos = ("--reversed-videos", str(demo_data / "videos_reversed"))
    verify.main(verify_args(demo_data, demo_cache, 6, *reversed_videos))
    assert "reversed file = flip(cache)    ok" in capsys.readouterr().out
    tampered = tmp_path / "tampered"
    shutil.copytree(demo_cache, tampered)
    feats = np.load(tampered / "test" / "video_feats.npy")
    feats[3] = np.nan
    np.save(tampered / "test" / "video_feats.npy", feats)
    with pytest.raises(StageError, match="test video_feats finite"):
        verify.main(verify_args(demo_data, tampered, 6, *reversed_videos))


def test_generic_annotations_extract_with_one_pair_list(demo_data, tmp_path):
    annotations = tmp_path / "annotations"
    annotations.mkdir()
    video_ids = list(json.loads((demo_data / "annotations" / "test.json").read_text()))[:3]
    generic = {
        video_id: {"sentences": [f"clip {video_id}", f"another caption of {video_id}"]} for video_id in video_ids
    }
    (annotations / "test.json").write_text(json.dumps(generic))
    out = tmp_path / "cache"
    extract.main(extract_args(demo_data, out, annotations=annotations))
    assert sorted(path.name for path in (out / "test").glob("*.csv")) == ["test_pairs.csv"]
    pairs = read_pairs(out, "test", "all")
    assert [(p["video_row"], p["reversed"]) for p in pairs] == [(0, 0), (0, 0), (1, 0), (1, 0), (2, 0), (2, 0)]
    assert json.loads((out / "cache_meta.json").read_text())["contract"]["annotations"]["test"]["format"] == "generic"


def test_unexpected_decode_error_is_a_named_bad_video(monkeypatch):
    from corpus import video_frames

    def broken(path, spec):
        raise RuntimeError("frame size changed mid-stream")

    monkeypatch.setattr(video_frames, "decode_sampled_frames", broken)
    decoded = video_frames.decode_and_crop(("42", "/data/42.mp4", video_frames.DecodeSpec(1, 24, 32)))
    assert decoded.crops is None
    assert decoded.failure == "unreadable: /data/42.mp4: RuntimeError: frame size changed mid-stream"


def test_stale_temporaries_from_a_killed_write_are_cleared(demo_data, demo_cache, tmp_path):
    out = tmp_path / "cache"
    for folder in (out / "test" / "parts", out / "test"):
        folder.mkdir(parents=True, exist_ok=True)
    (out / "test" / "parts" / ".video_000000.npz.tmp4242").write_bytes(b"half a chunk")
    (out / "test" / ".video_feats.npy.tmp4242").write_bytes(b"half a merge")
    extract.main(extract_args(demo_data, out, "--splits", "test"))
    assert not (out / "test" / "parts").exists()
    assert not list(out.rglob(".*.tmp*"))
    original = open_split(demo_cache, "test")
    assert np.array_equal(open_split(out, "test").video_feats, original.video_feats)


def test_verify_names_a_video_file_gone_since_extraction(demo_data, demo_cache, tmp_path, capsys):
    videos = tmp_path / "videos"
    shutil.copytree(demo_data / "videos", videos)
    for path in videos.iterdir():
        path.unlink()  # every video gone: whichever are drawn, the first is named
    with pytest.raises(StageError, match="re-extraction = cache"):
        verify.main(verify_args(demo_data, demo_cache, 2, videos=videos))
    assert re.search(
        r"re-extraction = cache +FAIL +2 videos; FAIL for 2 of 2 videos: \d+ \(missing: .*/videos/\d+\.\*\)",
        capsys.readouterr().out,
    )


def broken_clip(source, destination, key, broken):
    """The checkpoint at `source` with one weight matrix broken: set to NaN (a diverged file), or made
    huge, so features are finite in fp32 but past the range of the cache's fp16."""
    state = clip_vendor.read_state_dict(source)
    state[key] = torch.full_like(state[key], float("nan")) if broken == "nan" else state[key] * 1e7
    torch.save(state, destination)
    return destination


@pytest.mark.parametrize("broken", ["nan", "huge"])
def test_extract_refuses_features_it_cannot_store_naming_the_videos(demo_data, tmp_path, broken):
    """Round four: text features finite in fp32 but past fp16's range were cached as Inf with "cache
    complete" (training then blamed the learning rate): what is checked is the value as stored."""
    clip = broken_clip(demo_data / "clip_tiny.pt", tmp_path / "broken_visual.pt", "visual.proj", broken)
    args = extract_args(demo_data, tmp_path / "cache", "--splits", "test")
    args[args.index("--clip") + 1] = str(clip)
    first = ids_of(demo_data, "test")[0]
    with pytest.raises(StageError, match=rf"features for video\(s\) {first}.* that are NaN or Inf, or too large"):
        extract.main(args)
    assert not list((tmp_path / "cache").rglob("*.npz"))  # nothing of the chunk was written


@pytest.mark.parametrize("broken", ["nan", "huge"])
def test_extract_refuses_text_features_it_cannot_store_naming_the_captions(demo_data, tmp_path, broken):
    clip = broken_clip(demo_data / "clip_tiny.pt", tmp_path / "broken_text.pt", "text_projection", broken)
    args = extract_args(demo_data, tmp_path / "cache", "--splits", "test")
    args[args.index("--clip") + 1] = str(clip)
    first = ids_of(demo_data, "test")[0]
    with pytest.raises(StageError, match=rf"features for caption\(s\) {first}#forward#human#0.* that are NaN or Inf"):
        extract.main(args)
    assert not list((tmp_path / "cache").rglob("text_*.npz"))


def test_verify_counts_nan_as_a_failure_not_as_zero_difference(demo_data, lone_cache, tmp_path, capsys):
    tampered = tmp_path / "tampered"
    shutil.copytree(lone_cache, tampered)
    feats = np.load(tampered / "test" / "video_feats.npy")
    feats[:] = np.nan  # every test video: whichever is drawn is NaN
    np.save(tampered / "test" / "video_feats.npy", feats)
    with pytest.raises(StageError):
        verify.main(verify_args(demo_data, tampered, 24))
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("re-extraction = cache"))
    assert " FAIL " in row and "FAIL for 4 of 16 videos" in row  # the 4 test videos: a NaN is never a difference of 0
    assert row.count("(NaN or Inf in the cached features)") == 4


def test_swapped_videos_are_not_taken_for_a_finished_cache(demo_data, lone_cache, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(lone_cache, cache)
    videos = copied(demo_data / "videos", tmp_path / "videos")
    first, second = (videos / f"{video_id}.avi" for video_id in ids_of(demo_data, "valid")[:2])
    first_bytes = first.read_bytes()
    first.write_bytes(second.read_bytes())
    second.write_bytes(first_bytes)
    with pytest.raises(
        StageError,
        match=rf"refusing to reuse .*valid: {first.stem}\.(size|head_tail_sha256): was at extraction .*, is now ",
    ):
        extract.main(extract_args(demo_data, cache, "--batch-videos", "1", videos=videos))


def test_another_videos_folder_with_the_same_files_is_the_same_cache(demo_data, lone_cache, tmp_path):
    cache = tmp_path / "cache"
    shutil.copytree(lone_cache, cache)
    before = cache_files(cache)
    extract.main(
        extract_args(demo_data, cache, "--batch-videos", "1", videos=copied(demo_data / "videos", tmp_path / "videos"))
    )
    assert cache_files(cache) == before


def test_a_restored_failed_video_is_noticed(demo_data, tmp_path):
    videos = copied(demo_data / "videos", tmp_path / "videos")
    missing = videos / f"{ids_of(demo_data, 'test')[1]}.avi"
    kept = missing.read_bytes()
    missing.unlink()
    cache = tmp_path / "cache"
    args = extract_args(demo_data, cache, "--splits", "test", "--on-error", "skip", videos=videos)
    extract.main(args)
    missing.write_bytes(kept)
    with pytest.raises(StageError, match=f"{missing.stem}.file: was at extraction None, is now '{missing.name}'"):
        extract.main(args)


@pytest.mark.parametrize("name", ["video_feats.npy", "text_token_offsets.npy"])
def test_a_deleted_cache_file_is_not_already_complete(demo_data, lone_cache, tmp_path, name):
    cache = tmp_path / "cache"
    shutil.copytree(lone_cache, cache)
    (cache / "test" / name).unlink()
    with pytest.raises(CacheError, match=f"{cache / 'test' / name} is missing; extract the cache again"):
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
    with pytest.raises(StageError, match="train file sha256"):
        verify.main(verify_args(demo_data, tampered, 1))
    assert "changed or missing: video_feats.npy" in capsys.readouterr().out


def test_captions_cut_at_the_context_length_are_counted_and_recorded(demo_data, tmp_path, capsys):
    annotations = copied_annotations(demo_data, tmp_path)
    test = json.loads((annotations / "test.json").read_text())
    first = next(iter(test))
    test[first]["forward_rewrites"][0] = " ".join(["word"] * 100)  # 102 tokens with start and end
    (annotations / "test.json").write_text(json.dumps(test))
    extract.main(extract_args(demo_data, tmp_path / "cache", "--splits", "test", annotations=annotations))
    assert read_meta(tmp_path / "cache")["counts"]["test"]["truncated_captions"] == 1
    assert "[test] 1 captions were longer than 77 tokens and were cut" in capsys.readouterr().out


@pytest.mark.parametrize(
    "flag,value",
    [
        ("--fps", "0"),
        ("--fps", "-1"),
        ("--fps", "nan"),
        ("--batch-videos", "0"),
        ("--t-max", "1"),
    ],
)
def test_extract_refuses_nonsense_before_any_work_naming_the_flag(demo_data, tmp_path, capsys, flag, value):
    assert flag in usage_error(extract.main, extract_args(demo_data, tmp_path / "cache", flag, value), capsys)
    assert not (tmp_path / "cache").exists()


def test_a_context_length_past_the_checkpoints_is_refused_before_anything_is_written(demo_data, tmp_path):
    error = refusal(extract.main, extract_args(demo_data, tmp_path / "cache", "--context-length", "78"))
    assert str(error) == "--context-length 78: clip_tiny.pt has 77 text positions; use 2 to that"
    assert not (tmp_path / "cache").exists()


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
    with pytest.raises(OutOfSpace, match=r"no space left on the device writing .*/train \([\d,]+ bytes needed\)"):
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
    with pytest.raises(OutOfSpace, match=r"no space left on the device writing .*video_feats.npy \([\d,]+ bytes"):
        extract.main(args)
    monkeypatch.undo()
    assert not list(cache.rglob(".*.tmp*"))
    extract.main(args)
    assert cache_files(cache) == cache_files(lone_cache)


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
    with pytest.raises(CacheError, match=f"{path.name}.*(extract the cache again|not valid JSON)") as stop:
        evaluate.main(["--cache", str(cache), "--head", "meanP", "--out", str(tmp_path / "x.json")])
    assert str(path) in str(stop.value)


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
    args = extract_args(demo_data, out, "--batch-videos", "1", "--splits", "train")  # where both moments are
    args[args.index("--workers") + 1] = "2"  # decoding in worker processes, as on a real machine
    process = start_script("extract.py", args)
    wait_until(lambda: (out / moment).exists(), process)
    process.send_signal(signal.SIGINT)
    _, errors = process.communicate()
    assert process.returncode == 130, errors
    assert "interrupted; finished chunks kept; rerun the same command to resume" in errors
    assert "Traceback" not in errors
    args[args.index("--workers") + 1] = "0"  # the rest decoded here: the bytes do not depend on the workers
    extract.main(args)
    assert split_of(out, "train") == split_of(lone_cache, "train")


@pytest.mark.parametrize("moment", ["train/parts/video_000000.npz", "test/parts/video_000001.npz"])
def test_a_second_extraction_on_the_same_folder_stops_at_once_and_the_first_ends_identical(
    demo_data, lone_cache, tmp_path, moment
):
    out = tmp_path / "cache"
    first = start_script("extract.py", extract_args(demo_data, out, "--batch-videos", "1"))
    wait_until(lambda: (out / moment).exists(), first)
    first.send_signal(signal.SIGSTOP)  # held at this moment, so the second run meets it there
    try:
        with pytest.raises(FolderLocked, match=rf"{out} is in use by another run \(pid {first.pid}\)"):
            extract.main(extract_args(demo_data, out, "--batch-videos", "1"))
    finally:
        first.send_signal(signal.SIGCONT)
    _, errors = first.communicate()
    assert first.returncode == 0, errors
    assert cache_files(out) == cache_files(lone_cache)


def test_a_clip_archive_whose_pickle_runs_code_is_refused_by_extract_and_nothing_runs(demo_data, tmp_path, capsys):
    marker, crafted = tmp_path / "marker", tmp_path / "crafted.pt"
    with zipfile.ZipFile(demo_data / "clip_tiny.pt") as source, zipfile.ZipFile(crafted, "w") as target:
        for item in source.infolist():  # the demo's TorchScript archive with its data.pkl replaced
            data = (
                pickle.dumps(RunsShell(marker), protocol=2)
                if item.filename.endswith("/data.pkl")
                else source.read(item)
            )
            target.writestr(item, data)
    args = extract_args(demo_data, tmp_path / "cache", "--splits", "test")
    args[args.index("--clip") + 1] = str(crafted)
    message = str(refusal(extract.main, args))
    assert message.startswith(f"--clip: {crafted}: refused to read the TorchScript archive")
    assert "global posix.system" in message and not marker.exists()
    assert not (tmp_path / "cache").exists()  # refused before anything was written


def test_a_damaged_video_fails_naming_it_unless_concealment_is_accepted(demo_data, tmp_path, capsys):
    videos = copied(demo_data / "videos", tmp_path / "videos")
    video_id = json.loads((demo_data / "annotations" / "test.json").read_text()).popitem()[0]
    path = videos / f"{video_id}.avi"
    data = bytearray(path.read_bytes())
    for offset in range(len(data) // 2, len(data) // 2 + 40, 8):  # a few bits inside a frame's slice
        data[offset] ^= 0x10
    path.write_bytes(bytes(data))
    message = str(refusal(extract.main, extract_args(demo_data, tmp_path / "a", "--splits", "test", videos=videos)))
    assert (
        f"video {video_id!r} failed (damaged: {path}: FFmpeg concealed decoding errors (ffv1: slice CRC mismatch"
        in (message)
    )
    extract.main(extract_args(demo_data, tmp_path / "b", "--splits", "test", "--on-error", "skip", videos=videos))
    failed = json.loads((tmp_path / "b" / FAILED_VIDEOS_NAME).read_text())["test"]
    assert [f["video_id"] for f in failed] == [video_id] and "slice CRC mismatch" in failed[0]["reason"]
    extract.main(
        extract_args(demo_data, tmp_path / "c", "--splits", "test", "--accept-concealed-errors", videos=videos)
    )
    meta = read_meta(tmp_path / "c")
    assert meta["counts"]["test"]["videos"] == 4 and meta["contract"]["sampling"]["decoder"]["accept_concealed"]


def test_a_hand_edited_cache_meta_is_refused_by_every_stage(demo_data, demo_cache, tmp_path, capsys):
    cache = copied(demo_cache, tmp_path / "cache")
    meta = json.loads((cache / "cache_meta.json").read_text())
    meta["contract"]["sampling"]["fps"] = 2.0  # a hand edit: the digest no longer matches
    (cache / "cache_meta.json").write_text(json.dumps(meta))
    edited = f"{cache / 'cache_meta.json'} was changed after extract.py wrote it"
    for main, args in (
        (verify.main, verify_args(demo_data, cache, 1)),
        (evaluate.main, ["--cache", str(cache), "--head", "meanP", "--out", str(tmp_path / "r.json")]),
        (train_head.main, train_args(cache, demo_data / "clip_tiny.pt", tmp_path / "run", "meanP", batch_size=8)),
        (extract.main, extract_args(demo_data, cache)),
    ):
        message = str(refusal(main, args))
        assert edited in message, (main.__module__, message)


def test_verify_recomputes_the_content_digest(demo_data, demo_cache, tmp_path, capsys):
    cache = copied(demo_cache, tmp_path / "cache")
    meta = read_meta(cache)
    write_meta(cache, {**meta, "content_sha256": "0" * 64})  # a consistent meta citing other bytes
    with pytest.raises(StageError, match="content sha256"):
        verify.main(verify_args(demo_data, cache, 1))
    assert f"{content_digest(meta)[:12]} recomputed, the meta records 000000000000" in capsys.readouterr().out


def test_verify_names_the_expected_annotation_hash_beside_the_found_one(demo_data, demo_cache, tmp_path, capsys):
    annotations = copied(demo_data / "annotations", tmp_path / "annotations")
    (annotations / "test.json").write_text((annotations / "test.json").read_text() + "\n")
    args = verify_args(demo_data, demo_cache, 1)
    args[args.index("--annotations") + 1] = str(annotations)
    with pytest.raises(StageError, match="test annotations sha256"):
        verify.main(args)
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("test annotations sha256"))
    expected = read_meta(demo_cache)["contract"]["annotations"]["test"]["sha256"][:12]
    assert " FAIL " in row and f"(the cache was extracted from sha256 {expected}: another file)" in row


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder no stage may write into: chmod as a user, a read-only mount as root."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro", "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("running as root without permission to mount a read-only folder")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_a_read_only_output_folder_is_named_by_every_stage(demo_data, order, read_only_folder, capsys):
    stages = (
        (extract.main, extract_args(demo_data, read_only_folder / "cache")),
        (
            train_head.main,
            train_args(order / "cache", order / "clip.pt", read_only_folder / "run", "meanP", batch_size=8),
        ),
        (
            evaluate.main,
            ["--cache", str(order / "cache"), "--head", "meanP", "--out", str(read_only_folder / "r.json")],
        ),
        (report.main, ["--results", str(order / "results"), "--out", str(read_only_folder / "report")]),
        (tune.main, tune_args(order, read_only_folder / "tuning", "--trials", "1")),
    )
    for main, args in stages:
        message = str(refusal(main, args))
        assert message.startswith(f"cannot write into {read_only_folder}") and "choose a writable output folder" in (
            message
        )


def unreadable(path):
    """Make `path` a file that cannot be read: no permission for a user; for root, a link to memory that errs."""
    if os.geteuid() != 0:
        path.chmod(0)
    else:
        path.unlink()
        path.symlink_to("/proc/self/mem")


def test_an_unreadable_video_is_skipped_and_listed_like_any_failed_one(demo_data, tmp_path):
    videos = copied(demo_data / "videos", tmp_path / "videos")
    video_id = json.loads((demo_data / "annotations" / "test.json").read_text()).popitem()[0]
    unreadable(videos / f"{video_id}.avi")
    extract.main(extract_args(demo_data, tmp_path / "cache", "--splits", "test", "--on-error", "skip", videos=videos))
    failed = json.loads((tmp_path / "cache" / FAILED_VIDEOS_NAME).read_text())["test"]
    assert [f["video_id"] for f in failed] == [video_id] and failed[0]["reason"].startswith("unreadable: ")
    assert read_meta(tmp_path / "cache")["counts"]["test"]["videos"] == 3


def test_files_a_downloader_leaves_beside_a_video_are_ignored_and_listed(demo_data, tmp_path, capsys):
    videos = copied(demo_data / "videos", tmp_path / "videos")
    video_id = ids_of(demo_data, "test")[-1]
    (videos / f"{video_id}.description").write_text("yt-dlp writes this")
    (videos / f"{video_id}.info.json").write_text("{}")
    extract.main(extract_args(demo_data, tmp_path / "cache", "--splits", "test", videos=videos))
    out = capsys.readouterr().out
    sidecars = f"{video_id}.description, {video_id}.info.json"  # the second was a video of id "X.info"
    assert f"ignored 2 file(s) beside their video that are not videos: {sidecars}" in out
    assert read_meta(tmp_path / "cache")["counts"]["test"]["videos"] == 4


def test_a_video_id_finds_its_file_whichever_unicode_form_names_it(demo_data, tmp_path):
    """Round four: an annotation id in NFC ("café", as JSON files hold it) missed its file named in
    NFD (as macOS names files): the video was "missing". Ids and file names now meet in NFC."""
    annotations = copied_annotations(demo_data, tmp_path)
    test = json.loads((annotations / "test.json").read_text())
    first = next(iter(test))
    test = {("caf\u00e9" if video_id == first else video_id): record for video_id, record in test.items()}
    (annotations / "test.json").write_text(json.dumps(test))
    videos = copied(demo_data / "videos", tmp_path / "videos")
    (videos / f"{first}.avi").rename(videos / "cafe\u0301.avi")
    out = tmp_path / "cache"
    extract.main(extract_args(demo_data, out, "--splits", "test", videos=videos, annotations=annotations))
    assert open_split(out, "test").video_ids[0] == "caf\u00e9"
    assert json.loads((out / "test" / "video_files.json").read_text())["caf\u00e9"]["file"] == "cafe\u0301.avi"


def test_two_video_files_for_one_id_are_refused_naming_both(demo_data, tmp_path):
    videos = copied(demo_data / "videos", tmp_path / "videos")
    video_id = ids_of(demo_data, "test")[-1]
    shutil.copy(videos / f"{video_id}.avi", videos / f"{video_id}.mkv")  # which one is the video: ambiguous
    with pytest.raises(
        VideoError, match=rf"video id '{video_id}' has two video files: .*{video_id}.avi, .*{video_id}.mkv"
    ):
        extract.main(extract_args(demo_data, tmp_path / "cache", "--splits", "test", videos=videos))
    assert not (tmp_path / "cache").exists()  # refused before any write


def test_a_missing_videos_folder_is_refused_naming_it(demo_data, tmp_path):
    with pytest.raises(VideoError, match=r"--videos .*absent: no such folder"):
        extract.main(extract_args(demo_data, tmp_path / "cache", "--splits", "test", videos=tmp_path / "absent"))
    assert not (tmp_path / "cache").exists()


def test_a_split_whose_every_video_failed_is_named_by_the_stages_that_need_it(demo_data, tmp_path, capsys):
    videos = copied(demo_data / "videos", tmp_path / "videos")
    for video_id in json.loads((demo_data / "annotations" / "test.json").read_text()):
        (videos / f"{video_id}.avi").write_bytes(b"not a video")
    extract.main(extract_args(demo_data, tmp_path / "cache", "--splits", "test", "--on-error", "skip", videos=videos))
    assert "[test] WARNING: every video of test failed" in capsys.readouterr().out
    with pytest.raises(
        CacheError,
        match=r"test holds no video: every video of the split failed at extraction \(see .*failed_videos.json\)",
    ):
        evaluate.main(["--cache", str(tmp_path / "cache"), "--head", "meanP", "--out", str(tmp_path / "r.json")])


@pytest.mark.parametrize("value", ["-1", "0"])
def test_a_count_below_one_is_refused_naming_the_flag(demo_data, demo_cache, capsys, value):
    message = usage_error(verify.main, verify_args(demo_data, demo_cache, value), capsys)
    assert f"argument --n-videos: {value}: must be at least 1" in message
