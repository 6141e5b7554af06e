"""Trust, round three: no file a user hands us runs code, a damaged frame is an error, every number
in a table is backed by the data it names, a search belongs to one study, verify passes a good
cache, and every error names its cause. Each test feeds the bad input and checks the exit, the
message, and that nothing was lost."""

import json
import os
import pickle
import re
import shutil
import subprocess
import zipfile
from dataclasses import asdict

import pytest
import torch

import clip_vendor
import evaluate
import extract
import report
import train_head
import tune
import verify
from corpus.feature_cache import FAILED_VIDEOS_NAME, content_digest, read_meta, write_meta
from evaluation import results as result_files
from fixtures.synthetic_cache import write_order_only_cache
from make_demo_data import write_tiny_clip
from tests.helpers import extract_args, verify_args


@pytest.fixture(scope="module")
def demo_cache(demo_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("trust") / "cache"
    extract.main(extract_args(demo_data, out))
    return out


@pytest.fixture(scope="module")
def order(tmp_path_factory):
    """A small synthetic order-only cache, its CLIP, meanP zero-shot and a one-epoch seqTransf, evaluated."""
    root = tmp_path_factory.mktemp("order")
    clip = root / "clip.pt"
    write_tiny_clip(clip, seed=0, matrix_std=0.05)
    cache = root / "cache"
    config = asdict(clip_vendor.load(clip)[0].config)
    write_order_only_cache(cache, clip, config, n_train=16, n_valid=4, n_test=6, n_frames=4)
    run = root / "seqTransf"
    train_head.main(train_args(cache, clip, run, "seqTransf", "--epochs", "1"))
    results = root / "results"
    evaluate.main(["--cache", str(cache), "--head", "meanP", "--out", str(results / "meanP.json")])
    evaluate.main(["--cache", str(cache), "--ckpt", str(run / "best.pt"), "--out", str(results / "seqTransf.json")])
    return root


def train_args(cache, clip, out, head, *extra):
    return ["--cache", str(cache), "--head", head, "--out", str(out), "--clip", str(clip), "--batch-size", "8", *extra]


def copied(source, destination):
    shutil.copytree(source, destination)
    return destination


def refused(main, args, capsys):
    """Run a stage that must refuse; returns (exit code, its message), the message from the exit or stderr."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    code = exit_info.value.code
    return (code if isinstance(code, int) else 1), (code if isinstance(code, str) else capsys.readouterr().err)


# --- safety: no file a user hands us runs code ---------------------------------------------------


class RunsShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


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
    code, message = refused(extract.main, args, capsys)
    assert code == 1 and message.startswith(f"--clip: {crafted}: refused to read the TorchScript archive")
    assert "global posix.system" in message and not marker.exists()
    assert not (tmp_path / "cache").exists()  # refused before anything was written


# --- damaged input is an error, not a slightly different number -----------------------------------


def test_a_damaged_video_fails_naming_it_unless_concealment_is_accepted(demo_data, tmp_path, capsys):
    videos = copied(demo_data / "videos", tmp_path / "videos")
    video_id = json.loads((demo_data / "annotations" / "test.json").read_text()).popitem()[0]
    path = videos / f"{video_id}.avi"
    data = bytearray(path.read_bytes())
    for offset in range(len(data) // 2, len(data) // 2 + 40, 8):  # a few bits inside a frame's slice
        data[offset] ^= 0x10
    path.write_bytes(bytes(data))
    code, message = refused(
        extract.main, extract_args(demo_data, tmp_path / "a", "--splits", "test", videos=videos), capsys
    )
    assert (
        code == 1
        and f"video {video_id!r} failed (damaged: {path}: FFmpeg concealed decoding errors (ffv1: slice CRC mismatch"
        in message
    )
    extract.main(extract_args(demo_data, tmp_path / "b", "--splits", "test", "--on-error", "skip", videos=videos))
    failed = json.loads((tmp_path / "b" / FAILED_VIDEOS_NAME).read_text())["test"]
    assert [f["video_id"] for f in failed] == [video_id] and "slice CRC mismatch" in failed[0]["reason"]
    extract.main(
        extract_args(demo_data, tmp_path / "c", "--splits", "test", "--accept-concealed-errors", videos=videos)
    )
    meta = read_meta(tmp_path / "c")
    assert meta["counts"]["test"]["videos"] == 4 and meta["contract"]["sampling"]["decoder"]["accept_concealed"]


# --- every number in a table is backed by the data it names ------------------------------------------


def test_a_hand_edited_metric_is_refused_naming_the_file_and_key(order, tmp_path):
    results = copied(order / "results", tmp_path / "results")
    data = json.loads((results / "seqTransf.json").read_text())
    data["hard"]["t2v"]["expected"]["R@1"] += 10.0
    (results / "seqTransf.json").write_text(json.dumps(data))
    with pytest.raises(
        SystemExit, match=r"seqTransf.json: hard.t2v.expected.R@1 is .* \(the arrays give .*\), which its per-query"
    ):
        report.main(["--results", str(results), "--out", str(tmp_path / "report")])
    assert not (tmp_path / "report" / "report.md").exists()


def test_arrays_overwritten_by_another_evaluation_are_refused(order, tmp_path):
    results = copied(order / "results", tmp_path / "results")
    shutil.rmtree(results / "seqTransf")
    shutil.copytree(results / "meanP", results / "seqTransf")  # same names, another run's values
    with pytest.raises(
        SystemExit, match=r"seqTransf.json: its array .*/seqTransf/\w+\.npy is not the one it was computed with"
    ):
        report.main(["--results", str(results), "--out", str(tmp_path / "report")])


def test_an_evaluation_killed_before_its_json_leaves_no_mixed_result(order, tmp_path, monkeypatch):
    results = copied(order / "results", tmp_path / "results")
    args = ["--cache", str(order / "cache"), "--head", "meanP", "--frames", "2", "--out", str(results / "meanP.json")]

    def die(*_):  # the moment between the new arrays and the new JSON
        raise KeyboardInterrupt

    monkeypatch.setattr(result_files, "atomic_write_json", die)
    with pytest.raises(KeyboardInterrupt):
        evaluate.main(args)
    monkeypatch.undo()
    with pytest.raises(SystemExit, match="meanP.json: its array .* is not the one it was computed with"):
        report.main(["--results", str(results), "--out", str(tmp_path / "report")])
    evaluate.main(args)  # a rerun makes the result whole again
    report.main(["--results", str(results), "--out", str(tmp_path / "report")])


def test_a_missing_per_query_array_is_named(order, tmp_path):
    results = copied(order / "results", tmp_path / "results")
    (results / "meanP" / "hard_t2v_per_query.npy").unlink()
    with pytest.raises(SystemExit, match=r"meanP.json: its array hard_t2v_per_query \(.*\) is missing"):
        report.main(["--results", str(results), "--out", str(tmp_path / "report")])


def test_a_zero_shot_and_a_trained_head_are_never_seeds_of_one_method(order, tmp_path):
    results = copied(order / "results", tmp_path / "results")
    run = tmp_path / "meanP_trained"
    train_head.main(train_args(order / "cache", order / "clip.pt", run, "meanP", "--learn-temp", "--epochs", "1"))
    evaluate.main(
        ["--cache", str(order / "cache"), "--ckpt", str(run / "best.pt"), "--method", "meanP zero-shot"]
        + ["--out", str(results / "meanP_trained.json")]
    )
    with pytest.raises(
        SystemExit, match="method 'meanP zero-shot' names results that differ in .* two methods, not seeds"
    ):
        report.main(["--results", str(results), "--out", str(tmp_path / "report")])


def test_a_frame_count_the_cache_does_not_hold_is_refused(order, tmp_path, capsys):
    code, message = refused(
        train_head.main,
        train_args(order / "cache", order / "clip.pt", tmp_path / "r", "seqTransf", "--frames", "8"),
        capsys,
    )
    assert code == 2 and "--frames 8: the videos of" in message and "hold at most 4 frames" in message
    code, message = refused(
        evaluate.main,
        ["--cache", str(order / "cache"), "--head", "meanP", "--frames", "6", "--out", str(tmp_path / "x.json")],
        capsys,
    )
    assert code == 2 and "--frames 6: the videos of" in message and not (tmp_path / "x.json").exists()
    code, message = refused(
        train_head.main,
        train_args(order / "cache", order / "clip.pt", tmp_path / "r", "tightTransf", "--learn-temp"),
        capsys,
    )
    assert code == 2 and "--learn-temp: tightTransf scores with its own output layer" in message


def test_a_hand_edited_cache_meta_is_refused_by_every_stage(demo_data, demo_cache, tmp_path, capsys):
    cache = copied(demo_cache, tmp_path / "cache")
    meta = json.loads((cache / "cache_meta.json").read_text())
    meta["contract"]["sampling"]["fps"] = 2.0  # a hand edit: the digest no longer matches
    (cache / "cache_meta.json").write_text(json.dumps(meta))
    edited = f"{cache / 'cache_meta.json'} was changed after extract.py wrote it"
    for main, args in (
        (verify.main, verify_args(demo_data, cache, 1)),
        (evaluate.main, ["--cache", str(cache), "--head", "meanP", "--out", str(tmp_path / "r.json")]),
        (train_head.main, train_args(cache, demo_data / "clip_tiny.pt", tmp_path / "run", "meanP")),
        (extract.main, extract_args(demo_data, cache)),
    ):
        code, message = refused(main, args, capsys)
        assert code == 1 and edited in message, (main.__module__, message)


def test_verify_recomputes_the_content_digest(demo_data, demo_cache, tmp_path, capsys):
    cache = copied(demo_cache, tmp_path / "cache")
    meta = read_meta(cache)
    write_meta(cache, {**meta, "content_sha256": "0" * 64})  # a consistent meta citing other bytes
    with pytest.raises(SystemExit, match="content sha256"):
        verify.main(verify_args(demo_data, cache, 1))
    assert f"{content_digest(meta)[:12]} recomputed, the meta records 000000000000" in capsys.readouterr().out


def test_verify_names_the_expected_annotation_hash_beside_the_found_one(demo_data, demo_cache, tmp_path, capsys):
    annotations = copied(demo_data / "annotations", tmp_path / "annotations")
    (annotations / "test.json").write_text((annotations / "test.json").read_text() + "\n")
    args = verify_args(demo_data, demo_cache, 1)
    args[args.index("--annotations") + 1] = str(annotations)
    with pytest.raises(SystemExit, match="test annotations sha256"):
        verify.main(args)
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("test annotations sha256"))
    expected = read_meta(demo_cache)["contract"]["annotations"]["test"]["sha256"][:12]
    assert " FAIL " in row and f"(the cache was extracted from sha256 {expected}: another file)" in row


@pytest.mark.parametrize("resamples", ["1", "0", "999"])
def test_too_few_resamples_are_refused(order, tmp_path, capsys, resamples):
    args = ["--results", str(order / "results"), "--out", str(tmp_path / "report"), "--n-resamples", resamples]
    code, message = refused(report.main, args, capsys)
    assert code == 2 and f"--n-resamples: {resamples}: must be at least 1000" in message


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


# --- a search belongs to one study ----------------------------------------------------------------------


def search(order, out, *extra):
    return [
        "--cache",
        str(order / "cache"),
        "--clip",
        str(order / "clip.pt"),
        "--out",
        str(out),
        "--heads",
        "mlpScore",
    ] + list(extra)


def test_a_search_folder_is_refused_to_another_search(order, tmp_path):
    out = tmp_path / "tuning"
    tune.main(search(order, out, "--trials", "1", "--train-args", "--epochs 1 --batch-size 8"))
    before = sorted(path.name for path in (out / "trials" / "mlpScore").iterdir())
    with pytest.raises(
        SystemExit, match=r"holds another search: its train_args was \['--epochs', '1', '--batch-size', '8'\]"
    ):
        tune.main(search(order, out, "--trials", "2", "--train-args", "--epochs 2 --batch-size 8"))
    with pytest.raises(SystemExit, match="holds another search: its heads was"):
        tune.main(search(order, out, "seqTransf", "--trials", "2", "--train-args", "--epochs 1 --batch-size 8"))
    assert sorted(path.name for path in (out / "trials" / "mlpScore").iterdir()) == before  # nothing ran


@pytest.mark.parametrize("flag", ["--head meanP", "--seed 3", "--lr=0.1", "--logit-scale 20"])
def test_train_args_may_not_override_what_the_search_sets(order, tmp_path, capsys, flag):
    code, message = refused(tune.main, search(order, tmp_path / "t", "--train-args", f"--epochs 1 {flag}"), capsys)
    assert code == 2 and f"{flag.split()[0].split('=')[0]} is set by the search itself" in message
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize("content", [b"this is no database", "sqlite-foreign"])
def test_a_corrupt_or_foreign_study_file_is_refused_and_left_untouched(order, tmp_path, content):
    out = tmp_path / "tuning"
    out.mkdir()
    study = out / "study.sqlite3"
    if content == "sqlite-foreign":
        subprocess.run(
            [
                "python3",
                "-c",
                f"import sqlite3; c = sqlite3.connect({str(study)!r}); c.execute('create table notes (x)'); c.commit()",
            ],
            check=True,
        )
    else:
        study.write_bytes(content)
    before = study.read_bytes()
    with pytest.raises(SystemExit, match="not a readable SQLite database|not an optuna study") as exit_info:
        tune.main(search(order, out, "--trials", "1", "--train-args", "--epochs 1"))
    assert "\n" not in str(exit_info.value.code) and study.read_bytes() == before


def test_a_log_scale_search_range_from_zero_is_refused(order, tmp_path):
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"lr": {"low": 0, "high": 1e-2, "log": True}}))
    with pytest.raises(
        SystemExit, match=r"space.json: lr is searched on a log scale: its low bound must be above 0, not 0"
    ):
        tune.main(search(order, tmp_path / "t", "--space", str(space)))


# --- every error names its cause ----------------------------------------------------------------


def test_a_non_utf8_annotation_file_is_named(demo_data, tmp_path):
    annotations = copied(demo_data / "annotations", tmp_path / "annotations")
    (annotations / "test.json").write_bytes(b'{"v1": {"sentences": ["caf\xe9"]}}')
    with pytest.raises(SystemExit, match=r"test.json: not UTF-8 text \(byte 26 is b'\\xe9'\)"):
        extract.main(extract_args(demo_data, tmp_path / "cache", annotations=annotations))


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
        (train_head.main, train_args(order / "cache", order / "clip.pt", read_only_folder / "run", "meanP")),
        (
            evaluate.main,
            ["--cache", str(order / "cache"), "--head", "meanP", "--out", str(read_only_folder / "r.json")],
        ),
        (report.main, ["--results", str(order / "results"), "--out", str(read_only_folder / "report")]),
        (tune.main, search(order, read_only_folder / "tuning", "--trials", "1")),
    )
    for main, args in stages:
        code, message = refused(main, args, capsys)
        assert (
            code == 1
            and message.startswith(f"cannot write into {read_only_folder}")
            and "choose a writable output folder" in message
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


def test_video_folders_as_downloads_leave_them(demo_data, tmp_path, capsys):
    videos = copied(demo_data / "videos", tmp_path / "videos")
    video_id = json.loads((demo_data / "annotations" / "test.json").read_text()).popitem()[0]
    (videos / f"{video_id}.description").write_text("yt-dlp writes this")
    (videos / f"{video_id}.info.json").write_text("{}")
    extract.main(extract_args(demo_data, tmp_path / "a", "--splits", "test", videos=videos))
    assert (
        f"ignored 1 file(s) beside their video that are not videos: {video_id}.description" in capsys.readouterr().out
    )
    shutil.copy(videos / f"{video_id}.avi", videos / f"{video_id}.mkv")  # two videos for one id: ambiguous
    with pytest.raises(
        SystemExit, match=rf"video id '{video_id}' has two video files: .*{video_id}.avi, .*{video_id}.mkv"
    ):
        extract.main(extract_args(demo_data, tmp_path / "b", "--splits", "test", videos=videos))
    with pytest.raises(SystemExit, match=r"--videos .*absent: no such folder"):
        extract.main(extract_args(demo_data, tmp_path / "c", "--splits", "test", videos=tmp_path / "absent"))
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()  # refused before any write


def test_a_split_whose_every_video_failed_is_named_by_the_stages_that_need_it(demo_data, tmp_path, capsys):
    videos = copied(demo_data / "videos", tmp_path / "videos")
    for video_id in json.loads((demo_data / "annotations" / "test.json").read_text()):
        (videos / f"{video_id}.avi").write_bytes(b"not a video")
    extract.main(extract_args(demo_data, tmp_path / "cache", "--splits", "test", "--on-error", "skip", videos=videos))
    assert "[test] WARNING: every video of test failed" in capsys.readouterr().out
    with pytest.raises(
        SystemExit,
        match=r"test holds no video: every video of the split failed at extraction \(see .*failed_videos.json\)",
    ):
        evaluate.main(["--cache", str(tmp_path / "cache"), "--head", "meanP", "--out", str(tmp_path / "r.json")])


def test_rerunning_a_finished_meanp_training_is_a_no_op(order, tmp_path):
    args = train_args(order / "cache", order / "clip.pt", tmp_path / "run", "meanP")
    train_head.main(args)
    first = (tmp_path / "run" / "best.pt").read_bytes()
    train_head.main(args)  # once: "max() arg is an empty sequence"
    assert (tmp_path / "run" / "best.pt").read_bytes() == first


@pytest.mark.parametrize("value", ["-1", "0"])
def test_a_count_below_one_is_refused_naming_the_flag(demo_data, demo_cache, capsys, value):
    code, message = refused(verify.main, verify_args(demo_data, demo_cache, value), capsys)
    assert code == 2 and f"argument --n-videos: {value}: must be at least 1" in message


def test_a_checkpoint_holding_another_heads_weights_is_named(order, tmp_path):
    checkpoint = torch.load(order / "seqTransf" / "best.pt", weights_only=True)
    checkpoint["config"]["head"] = "tightTransf"
    torch.save(checkpoint, tmp_path / "mislabelled.pt")
    with pytest.raises(SystemExit, match=r"mislabelled.pt: .*holds no 'cross\..*not weights of a TightTransf head"):
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
