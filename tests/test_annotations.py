import json
import re
import shutil
from pathlib import Path

import pytest

import extract
import verify
from clip_vendor.tokenizer import reads_as_blank
from corpus.annotations import (
    FORMATS,
    AnnotationError,
    check_disjoint_splits,
    load_split,
    pair_lists,
    present_splits,
    split_captions,
)
from corpus.feature_cache import read_meta, read_pairs
from infra.cli import StageError
from infra.file_io import file_sha256
from tests.helpers import copied, copied_annotations, extract_args

RTIME_DIR = Path(__file__).resolve().parents[2] / "shared" / "rtime"


def rtime_file(split):
    path = RTIME_DIR / f"{split}.json"
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path


@pytest.mark.parametrize("split,n_videos,n_human", [("valid", 500, 1000), ("test", 1000, 2000)])
def test_real_rtime_files_parse_to_expected_counts(split, n_videos, n_human):
    annotation_format, records = load_split(rtime_file(split).parent, split)
    captions = split_captions(records)
    assert annotation_format == "rtime"
    assert len(records) == n_videos
    assert sum(caption.kind == "human" for caption in captions) == n_human
    assert len(captions) == n_videos * 20  # 1 + 1 human, 9 + 9 rewrites each
    video_row_of = {record.video_id: row for row, record in enumerate(records)}
    lists = pair_lists(split, annotation_format, captions, video_row_of)
    hard = lists["hard"]
    assert len(hard) == n_human
    assert sum(reversed_video for *_, reversed_video in hard) == n_videos  # one reverse caption each
    if split == "test":
        assert len(lists["origin"]) == n_videos


def write(tmp_path, content, name="train.json"):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def good_record(**changes):
    record = {
        "forward_captions": ["a dog runs left"],
        "reverse_captions": ["a dog runs right"],
        "forward_rewrites": ["left runs a dog"],
        "reverse_rewrites": ["right runs a dog"],
        "reverse": True,
        "temporal": True,
        "url": "x",
    }
    record.update(changes)
    return record


@pytest.mark.parametrize(
    "content,message",
    [
        ("{not json", "not valid JSON"),
        ({"17": good_record(reverse="yes")}, "record '17' field 'reverse' must be true or false"),
        (
            {"17": {k: v for k, v in good_record().items() if k != "forward_captions"}},
            "record '17' is missing field 'forward_captions'",
        ),
        (
            {"17": good_record(), "18": {k: v for k, v in good_record().items() if k != "reverse"}},
            "record '18' is missing field 'reverse'",
        ),
        (
            {"17": good_record(forward_captions="a dog")},
            "record '17' field 'forward_captions' must be a list of strings",
        ),
        ({"17": good_record(reverse_captions=[])}, "record '17' field 'reverse_captions' is empty"),
        (
            {"17": good_record(forward_rewrites=["ok", 3])},
            "record '17' field 'forward_rewrites' must be a list of strings",
        ),
        ({"17": good_record(forward_captions=["  "])}, "record '17', forward human caption 0 ('  '), holds no word"),
        ({"17": {"title": "x"}}, "record '17' has neither"),
    ],
)
def test_malformed_rtime_records_name_file_and_record(tmp_path, content, message):
    path = write(tmp_path, content)
    with pytest.raises(AnnotationError, match=str(path)) as err:
        load_split(path.parent, path.stem)
    assert message in str(err.value)


@pytest.mark.parametrize("blank", ["&nbsp;", "&amp;nbsp;", " \u00a0\t", "&#32;&nbsp;"])
def test_a_caption_that_clip_cleaning_empties_is_refused_in_every_format(tmp_path, blank):
    """Round three left this open: `&nbsp;` passed `text.strip()`, then CLIP's cleaning (entities
    unescaped twice, white space collapsed) left an empty string, embedded as a query like any other
    (every such caption the same vector). One check after every format's reader refuses it."""
    rtime = write(tmp_path / "rtime", {"17": good_record(), "18": good_record(reverse_captions=["ok", blank])})
    with pytest.raises(AnnotationError) as err:
        load_split(rtime.parent, rtime.stem)
    assert f"{rtime}: record '18', reverse human caption 1 ({blank!r}), holds no word" in str(err.value)
    generic = write(tmp_path / "generic", {"v1": {"sentences": ["a cat", blank]}}, name="test.json")
    with pytest.raises(AnnotationError, match=re.escape(f"{generic}: record 'v1', forward human caption 1")):
        load_split(generic.parent, "test")
    msrvtt = write_msrvtt(tmp_path / "msrvtt")
    (msrvtt / "MSRVTT_JSFUSION_test.csv").write_text("key,vid_key,video_id,sentence\nret0,msr4,video4,&amp;nbsp;\n")
    with pytest.raises(AnnotationError, match=re.escape("MSRVTT_JSFUSION_test.csv: record 'video4'")):
        load_split(msrvtt, "test", "msrvtt-9k")
    assert not reads_as_blank("&amp; co") and not reads_as_blank("caf\u00e9")


def test_duplicate_video_id_is_rejected(tmp_path):
    record = json.dumps(good_record())
    path = write(tmp_path, f'{{"17": {record}, "18": {record}, "17": {record}}}')
    with pytest.raises(AnnotationError, match=f"{path}: duplicate id '17'"):
        load_split(path.parent, path.stem)


def test_train_record_without_reverse_keeps_no_reverse_captions(tmp_path):
    path = write(
        tmp_path, {"1": good_record(), "2": good_record(reverse=False, reverse_captions=[], reverse_rewrites=[])}
    )
    _, records = load_split(path.parent, path.stem)
    assert not records[1].has_reverse
    assert {c.direction for c in records[1].captions} == {"forward"}
    captions = split_captions(records)
    train = pair_lists("train", "rtime", captions, {"1": 0, "2": 1})["train"]
    assert len(train) == 4 + 2  # record 1: 2 human + 2 rewrites; record 2: forward only
    assert all(reversed_video == 0 for _, _, video_row, _, reversed_video in train if video_row == 1)


def test_generic_format_each_sentence_is_a_query(tmp_path):
    path = write(
        tmp_path,
        {"video7": {"sentences": ["a cat", "a small cat"]}, "video9": {"sentences": ["a car"]}},
        name="test.json",
    )
    annotation_format, records = load_split(path.parent, path.stem)
    assert annotation_format == "generic"
    captions = split_captions(records)
    lists = pair_lists("test", annotation_format, captions, {"video7": 0, "video9": 1})
    assert list(lists) == ["all"]
    assert [(row, video_row, rev) for row, _, video_row, _, rev in lists["all"]] == [(0, 0, 0), (1, 0, 0), (2, 1, 0)]


def test_generic_record_without_sentences_is_named(tmp_path):
    path = write(tmp_path, {"video7": {"sentences": ["a cat"]}, "video8": {"sentence": "typo"}}, name="test.json")
    with pytest.raises(AnnotationError, match="record 'video8' is missing field 'sentences'"):
        load_split(path.parent, path.stem)


def test_failed_video_drops_its_captions_from_every_pair_list():
    from corpus.annotations import Caption

    captions = [
        Caption("a#forward#human#0", "a", "forward", "human", "x"),
        Caption("b#forward#human#0", "b", "forward", "human", "y"),
        Caption("b#reverse#human#0", "b", "reverse", "human", "z"),
    ]
    lists = pair_lists("test", "rtime", captions, {"a": 0})  # b failed
    assert lists == {
        "origin": [(0, "a#forward#human#0", 0, "a", 0)],
        "hard": [(0, "a#forward#human#0", 0, "a", 0)],
        "rewrites": [],
    }


def write_msrvtt(folder, train_lists=("9k",)):
    """CLIP4Clip's MSR-VTT files, as downloaded, for videos video0..video5: video3 is an official
    validation video, video4 and video5 are the 1k-A test set."""
    folder.mkdir(parents=True, exist_ok=True)
    splits = {0: "train", 1: "train", 2: "test", 3: "validate", 4: "test", 5: "test"}
    data = {
        "info": {"contributor": "Microsoft MSM group", "year": "2016"},
        "videos": [
            {
                "category": 9,
                "url": f"https://www.youtube.com/watch?v=x{i}",
                "video_id": f"video{i}",
                "start time": 1.0,
                "end time": 9.0,
                "split": split,
                "id": i,
            }
            for i, split in splits.items()
        ],
        "sentences": [
            {"caption": f"caption {k} of video {i}", "video_id": f"video{i}", "sen_id": 3 * i + k}
            for k in range(3)
            for i in splits
        ],
    }
    (folder / "MSRVTT_data.json").write_text(json.dumps(data))
    lists = {"9k": ["video0", "video1", "video2", "video3"], "7k": ["video0", "video1", "video3"]}
    for name in train_lists:
        (folder / f"MSRVTT_train.{name}.csv").write_text("video_id\n" + "".join(f"{v}\n" for v in lists[name]))
    (folder / "MSRVTT_JSFUSION_test.csv").write_text(
        "key,vid_key,video_id,sentence\n"
        "ret0,msr4,video4,a man is singing on a stage\n"
        'ret1,msr5,video5,"a dog runs, then stops"\n'
    )
    return folder


def captions_of(records):
    return {record.video_id: [caption.text for caption in record.captions] for record in records}


def test_msrvtt_files_as_downloaded_give_train_minus_validation_valid_and_the_1k_a_test(tmp_path):
    folder = write_msrvtt(tmp_path / "msrvtt")
    assert present_splits(folder) == ["train", "valid", "test"]
    splits = {split: load_split(folder, split) for split in ("train", "valid", "test")}
    assert {split: annotation_format for split, (annotation_format, _) in splits.items()} == dict.fromkeys(
        splits, "msrvtt-9k"
    )
    # every caption MSRVTT_data.json gives a train or valid video, in file order; the test's one from the CSV
    assert captions_of(splits["train"][1]) == {
        f"video{i}": [f"caption {k} of video {i}" for k in range(3)] for i in (0, 1, 2)
    }
    assert captions_of(splits["valid"][1]) == {"video3": [f"caption {k} of video 3" for k in range(3)]}
    assert captions_of(splits["test"][1]) == {
        "video4": ["a man is singing on a stage"],
        "video5": ["a dog runs, then stops"],
    }
    check_disjoint_splits({split: (split, records) for split, (_, records) in splits.items()})  # no leak
    test_lists = pair_lists("test", "msrvtt-9k", split_captions(splits["test"][1]), {"video4": 0, "video5": 1})
    assert test_lists == {
        "all": [(0, "video4#forward#human#0", 0, "video4", 0), (1, "video5#forward#human#0", 1, "video5", 0)]
    }
    assert FORMATS["msrvtt-9k"].selection == "all" and not FORMATS["msrvtt-9k"].reversals


def test_msrvtt_with_the_7k_list_only_trains_on_it(tmp_path):
    folder = write_msrvtt(tmp_path / "msrvtt", train_lists=("7k",))
    annotation_format, train = load_split(folder, "train")
    assert annotation_format == "msrvtt-7k"
    assert [record.video_id for record in train] == ["video0", "video1"]
    assert [record.video_id for record in load_split(folder, "valid")[1]] == ["video3"]


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            lambda folder: (folder / "MSRVTT_train.9k.csv").write_text("video_id\nvideo0\nvideo9\n"),
            "MSRVTT_train.9k.csv: video 'video9' has no caption in",
        ),
        (
            lambda folder: (folder / "MSRVTT_train.9k.csv").write_text("video_id\nvideo0\nvideo0\n"),
            "MSRVTT_train.9k.csv: line 3: video 'video0' is listed twice",
        ),
        (
            lambda folder: (folder / "MSRVTT_JSFUSION_test.csv").write_text("key,video_id\nret0,video4\n"),
            "MSRVTT_JSFUSION_test.csv: no column 'sentence'",
        ),
        (
            lambda folder: (folder / "MSRVTT_JSFUSION_test.csv").write_text("video_id,sentence\nvideo4,\n"),
            "MSRVTT_JSFUSION_test.csv: line 2 has no sentence",
        ),
        (
            lambda folder: (folder / "MSRVTT_data.json").write_text('{"videos": []}'),
            "MSRVTT_data.json: expected MSR-VTT's",
        ),
    ],
)
def test_a_damaged_msrvtt_file_is_named_with_its_line_or_video(tmp_path, damage, message):
    folder = write_msrvtt(tmp_path / "msrvtt")
    damage(folder)
    with pytest.raises(AnnotationError, match=re.escape(message)):
        for split in ("train", "test"):
            load_split(folder, split, "msrvtt-9k")


def test_a_video_in_two_splits_is_refused_naming_both_files(demo_data, tmp_path):
    annotations = copied_annotations(demo_data, tmp_path)
    train = json.loads((annotations / "train.json").read_text())
    test = json.loads((annotations / "test.json").read_text())
    leaked = next(iter(test))
    train[leaked] = test[leaked]
    (annotations / "train.json").write_text(json.dumps(train))
    # refused even when only the test split is extracted
    with pytest.raises(AnnotationError, match=f"video id '{leaked}' is in both .*train.json and .*test.json"):
        extract.main(extract_args(demo_data, tmp_path / "cache", "--splits", "test", annotations=annotations))


def test_an_unknown_field_is_refused_naming_key_record_and_known_fields(demo_data, tmp_path):
    annotations = copied_annotations(demo_data, tmp_path)
    test = json.loads((annotations / "test.json").read_text())
    record_id = list(test)[2]
    test[record_id]["reverse_rewrite"] = test[record_id].pop("reverse_rewrites")  # a typo
    (annotations / "test.json").write_text(json.dumps(test))
    with pytest.raises(
        AnnotationError,
        match=f"record '{record_id}' has an unknown field 'reverse_rewrite' "
        r"\(its records know forward_captions, .*reverse_rewrites, temporal, url\)",
    ):
        extract.main(extract_args(demo_data, tmp_path / "cache", "--splits", "test", annotations=annotations))


def test_a_non_utf8_annotation_file_is_named(demo_data, tmp_path):
    annotations = copied(demo_data / "annotations", tmp_path / "annotations")
    (annotations / "test.json").write_bytes(b'{"v1": {"sentences": ["caf\xe9"]}}')
    with pytest.raises(AnnotationError, match=r"test.json: not UTF-8 text \(byte 26 is b'\\xe9'\)"):
        extract.main(extract_args(demo_data, tmp_path / "cache", annotations=annotations))


def test_extract_reads_msrvtt_files_as_downloaded_and_verify_checks_them(demo_data, tmp_path):
    folder = write_msrvtt(tmp_path / "msrvtt")
    videos = tmp_path / "videos"
    videos.mkdir()
    for index, source in enumerate(sorted((demo_data / "videos").glob("*.avi"))[:6]):
        shutil.copy(source, videos / f"video{index}.avi")
    cache = tmp_path / "cache"
    extract.main(extract_args(demo_data, cache, annotations=folder, videos=videos))
    meta = read_meta(cache)
    annotations = meta["contract"]["annotations"]
    assert {split: entry["format"] for split, entry in annotations.items()} == dict.fromkeys(
        ("train", "valid", "test"), "msrvtt-9k"
    )
    assert annotations["train"]["file"] == "MSRVTT_data.json + MSRVTT_train.9k.csv"
    assert annotations["test"]["file"] == "MSRVTT_JSFUSION_test.csv"
    assert annotations["test"]["sha256"] == file_sha256(folder / "MSRVTT_JSFUSION_test.csv")
    assert meta["dataset"] == "MSR-VTT"
    assert {split: counts["videos"] for split, counts in meta["counts"].items()} == {"train": 3, "valid": 1, "test": 2}
    test_pairs = read_pairs(cache, "test", "all")
    assert [(pair["caption_row"], pair["video_id"]) for pair in test_pairs] == [(0, "video4"), (1, "video5")]
    arguments = ["--cache", str(cache), "--annotations", str(folder), "--videos", str(videos)]
    arguments += ["--clip", str(demo_data / "clip_tiny.pt"), "--n-videos", "1"]
    verify.main(arguments)
    data = folder / "MSRVTT_data.json"
    data.write_text(data.read_text().replace("caption 0", "caption zero"))  # a changed file after extraction
    with pytest.raises(StageError, match="train annotations sha256"):
        verify.main(arguments)
