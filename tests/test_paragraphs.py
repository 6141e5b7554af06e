"""Paragraph retrieval (--paragraphs) and the two ways a text longer than CLIP's context is read."""

import json

import numpy as np
import pytest
import torch

import clip_vendor
import evaluate
import extract
import report
from clip_vendor.tokenizer import default_tokenizer
from corpus.annotations import AnnotationError, load_split
from corpus.feature_cache import open_split, read_meta
from tests.helpers import extract_args

# 90 tokens that every paragraph opens with: truncation at 77 keeps nothing after them.
PREAMBLE = ["the camera holds still on a plain background ."] * 10


@pytest.fixture(scope="module")
def tiny_clip(demo_data):
    model, _ = clip_vendor.load(demo_data / "clip_tiny.pt", device="cpu", dtype=torch.float32)
    return model


def test_windows_cover_the_whole_text_and_a_short_text_is_one_tokenize_row():
    tokenizer = default_tokenizer()
    short = "a red circle grows bigger"
    assert torch.equal(clip_vendor.tokenize_windows(short, 77), clip_vendor.tokenize(short, 77))
    long_text = " ".join(PREAMBLE + ["a red circle grows bigger"])
    windows = clip_vendor.tokenize_windows(long_text, 20)
    inner = []
    for row in windows.tolist():
        length = row.index(tokenizer.eot_id) + 1
        assert row[0] == tokenizer.sot_id and length <= 20 and not any(row[length:])
        inner += row[1 : length - 1]
    assert inner == tokenizer.encode(long_text)
    assert len(windows) == -(-len(inner) // 18)


def test_encode_texts_truncates_as_clip_or_averages_its_windows(tiny_clip):
    texts = ["a red circle grows bigger", " ".join(PREAMBLE + ["a blue square fades out"])]
    with torch.no_grad():
        truncated, token_feats = clip_vendor.encode_texts(tiny_clip, texts, 77, "truncate")
        assert torch.equal(truncated, tiny_clip.encode_text(clip_vendor.tokenize(texts, 77)))
        assert [len(tokens) for tokens in token_feats] == [7, 77]
        windowed, _ = clip_vendor.encode_texts(tiny_clip, texts, 77, "windows")
        assert torch.equal(windowed[0], truncated[0])  # a text that fits is read the same both ways
        per_window = tiny_clip.encode_text(clip_vendor.tokenize_windows(texts[1], 77))
        assert len(per_window) == 2
        torch.testing.assert_close(windowed[1], per_window.mean(dim=0))
        assert not torch.allclose(windowed[1], truncated[1])


def paragraph_annotations(demo_data, tmp_path):
    """The demo test videos as a generic file whose sentences share a long opening and differ only
    at the end: the case where truncation loses what tells the paragraphs apart."""
    videos = json.loads((demo_data / "annotations" / "test.json").read_text())
    folder = tmp_path / "annotations"
    folder.mkdir()
    sentences = {
        video_id: {"sentences": [*PREAMBLE, record["forward_captions"][0]]} for video_id, record in videos.items()
    }
    (folder / "test.json").write_text(json.dumps(sentences))
    return folder, sentences


def extract_paragraphs(demo_data, annotations, out, long_text):
    args = extract_args(demo_data, out, "--paragraphs", "--long-text", long_text)
    args[args.index("--annotations") + 1] = str(annotations)
    extract.main(args)
    return open_split(out, "test"), read_meta(out)


def test_paragraphs_join_sentences_and_windows_keep_the_ending_truncation_loses(demo_data, tmp_path):
    annotations, sentences = paragraph_annotations(demo_data, tmp_path)
    cut, cut_meta = extract_paragraphs(demo_data, annotations, tmp_path / "truncate", "truncate")
    assert [caption["text"] for caption in cut.captions] == [" ".join(s["sentences"]) for s in sentences.values()]
    assert [caption["video_id"] for caption in cut.captions] == list(sentences)  # one paragraph per video
    assert cut_meta["contract"]["annotations"]["test"]["paragraphs"] is True
    assert cut_meta["contract"]["tokenizer"]["long_text"] == "truncate"
    assert cut_meta["counts"]["test"]["truncated_captions"] == len(sentences)
    # every paragraph was cut inside the shared opening: all queries are one query
    assert (np.asarray(cut.text_feats) == np.asarray(cut.text_feats[0])).all()

    whole, whole_meta = extract_paragraphs(demo_data, annotations, tmp_path / "windows", "windows")
    assert whole_meta["contract"]["tokenizer"]["long_text"] == "windows"
    assert whole_meta["counts"]["test"]["truncated_captions"] == 0
    endings = [s["sentences"][-1] for s in sentences.values()]
    feats = np.asarray(whole.text_feats, dtype=np.float32)
    for a in range(len(endings)):
        for b in range(a + 1, len(endings)):
            assert (endings[a] == endings[b]) == np.array_equal(feats[a], feats[b])
    assert len(set(endings)) > 1
    # issue 29: the report stated neither paragraph mode nor the long-text rule
    for cache, rule in (
        (tmp_path / "truncate", f"cut to its first 77, as CLIP4Clip does (--long-text truncate): {len(sentences)} of "),
        (tmp_path / "windows", "read whole, as the mean of the embeddings of its 77-token windows"),
    ):
        results = cache.parent / f"{cache.name}_results"
        evaluate.main(["--cache", str(cache), "--head", "meanP", "--out", str(results / "meanP.json")])
        report.main(["--results", str(results), "--out", str(cache.parent / f"{cache.name}_report")])
        markdown = (cache.parent / f"{cache.name}_report" / "report.md").read_text()
        line = next(line for line in markdown.splitlines() if line.startswith("- Captions: "))
        assert line.startswith("- Captions: paragraph mode (extract.py --paragraphs): each video's sentences joined")
        assert f"a caption over 77 tokens is {rule}" in line


def test_paragraphs_are_refused_for_rtime_files(demo_data, tmp_path):
    with pytest.raises(
        AnnotationError, match="test.json: --paragraphs joins a generic file's sentences; this split is rtime"
    ):
        load_split(demo_data / "annotations", "test", paragraphs=True)
    with pytest.raises(AnnotationError, match="--paragraphs joins a generic file's sentences"):
        extract.main(extract_args(demo_data, tmp_path / "cache", "--paragraphs"))
