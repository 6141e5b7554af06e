import json
import os
import re
import shutil
import subprocess
import sys
from fractions import Fraction

import cv2
import numpy as np
import pytest

import extract
import verify
from corpus.feature_cache import open_split, read_pairs
from corpus.sampling import sample_frame_indices
from corpus.video_frames import DecodeSpec, decode_sampled_frames
from tests.helpers import PROJECT, cache_files, extract_args, two_nodes, verify_args


@pytest.fixture(scope="module")
def demo_cache(demo_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache") / "cache"
    extract.main(extract_args(demo_data, out))
    return out


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
    assert all(len(test.frames(row)) == 12 for row in range(len(test.video_ids)))


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
    with pytest.raises(SystemExit, match=r"differs in sampling\.fps: cache has 4\.0, this run has 2\.0"):
        extract.main(extract_args(demo_data, demo_cache) + ["--fps", "2"])


def run_extract(demo, out, *extra, launcher=None, env=None):
    command = (launcher or [sys.executable]) + [str(PROJECT / "extract.py")] + extract_args(demo, out, *extra)
    env = {**os.environ, "PYTHONPATH": str(PROJECT), **(env or {})}
    return subprocess.Popen(command, cwd=PROJECT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_the_cache_does_not_depend_on_the_thread_count_the_environment_sets(demo_data, demo_cache, tmp_path):
    # torchrun sets OMP_NUM_THREADS=1; CLIP on the CPU computes with a fixed thread count whatever it says
    runs = {threads: run_extract(demo_data, tmp_path / threads, env={"OMP_NUM_THREADS": threads}) for threads in "13"}
    for threads, process in runs.items():
        output, _ = process.communicate()
        assert process.returncode == 0, output
        assert cache_files(tmp_path / threads) == cache_files(demo_cache), threads
    assert json.loads((demo_cache / "cache_meta.json").read_text())["contract"]["compute"]["cpu_threads"] == 1


def test_torchrun_on_two_nodes_equals_one_process(demo_data, demo_cache, tmp_path):
    out = tmp_path / "two_nodes"  # a folder both "nodes" see, as a shared file system is
    for code, output in two_nodes("extract.py", lambda node: extract_args(demo_data, out), port=29517):
        assert code == 0, output
    assert cache_files(out) == cache_files(demo_cache)


def test_an_output_folder_the_nodes_do_not_share_is_refused_naming_it(demo_data, tmp_path):
    outs = [tmp_path / "node0" / "cache", tmp_path / "node1" / "cache"]  # each node its own disk
    nodes = two_nodes("extract.py", lambda node: extract_args(demo_data, outs[node]), port=29519)
    for code, output in nodes:
        assert code == 1, output
        assert f"--out is not shared between the nodes: rank 0 wrote into {outs[0]}, and rank 1 on " in output
        assert f"(its --out: {outs[1]}) cannot see it" in output
    assert not list(outs[0].rglob("*.npy")) and not outs[1].exists()  # stopped before any chunk


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
    with pytest.raises(SystemExit, match=f"video '{test_ids[0]}' failed .*{test_ids[0]}.avi") as stop:
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
    with pytest.raises(SystemExit, match="test video_feats finite"):
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
    with pytest.raises(SystemExit, match="re-extraction = cache"):
        verify.main(verify_args(demo_data, demo_cache, 2, videos=videos))
    assert re.search(
        r"re-extraction = cache +FAIL +2 videos; FAIL for 2 of 2 videos: \d+ \(missing: .*/videos/\d+\.\*\)",
        capsys.readouterr().out,
    )
