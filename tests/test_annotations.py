import json
from pathlib import Path

import pytest

from corpus.annotations import AnnotationError, load_split, pair_lists, split_captions

RTIME_DIR = Path(__file__).resolve().parents[2] / "shared" / "rtime"


def rtime_file(split):
    path = RTIME_DIR / f"{split}.json"
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path


@pytest.mark.parametrize("split,n_videos,n_human", [("valid", 500, 1000), ("test", 1000, 2000)])
def test_real_rtime_files_parse_to_expected_counts(split, n_videos, n_human):
    annotation_format, records = load_split(rtime_file(split))
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
        ({"17": good_record(forward_captions=["  "])}, "record '17' field 'forward_captions' holds an empty caption"),
        ({"17": {"title": "x"}}, "record '17' has neither"),
    ],
)
def test_malformed_rtime_records_name_file_and_record(tmp_path, content, message):
    path = write(tmp_path, content)
    with pytest.raises(AnnotationError, match=str(path)) as err:
        load_split(path)
    assert message in str(err.value)


def test_duplicate_video_id_is_rejected(tmp_path):
    record = json.dumps(good_record())
    path = write(tmp_path, f'{{"17": {record}, "18": {record}, "17": {record}}}')
    with pytest.raises(AnnotationError, match=f"{path}: duplicate id '17'"):
        load_split(path)


def test_train_record_without_reverse_keeps_no_reverse_captions(tmp_path):
    path = write(
        tmp_path, {"1": good_record(), "2": good_record(reverse=False, reverse_captions=[], reverse_rewrites=[])}
    )
    _, records = load_split(path)
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
    annotation_format, records = load_split(path)
    assert annotation_format == "generic"
    captions = split_captions(records)
    lists = pair_lists("test", annotation_format, captions, {"video7": 0, "video9": 1})
    assert list(lists) == ["all"]
    assert [(row, video_row, rev) for row, _, video_row, _, rev in lists["all"]] == [(0, 0, 0), (1, 0, 0), (2, 1, 0)]


def test_generic_record_without_sentences_is_named(tmp_path):
    path = write(tmp_path, {"video7": {"sentences": ["a cat"]}, "video8": {"sentence": "typo"}}, name="test.json")
    with pytest.raises(AnnotationError, match="record 'video8' is missing field 'sentences'"):
        load_split(path)


def test_failed_video_drops_its_captions_from_every_pair_list():
    from corpus.annotations import Caption

    captions = [
        Caption("a#forward#human#0", "a", "forward", "human", "x"),
        Caption("b#forward#human#0", "b", "forward", "human", "y"),
        Caption("b#reverse#human#0", "b", "reverse", "human", "z"),
    ]
    lists = pair_lists("test", "rtime", captions, {"a": 0})  # b failed
    assert all(video_id == "a" for rows in lists.values() for _, _, _, video_id, _ in rows)
