"""search.py: a trained head used, and the one rule for which caches it may search."""

import errno
import json
import re

import numpy as np
import pytest

import search
from evaluation.results import read_result
from heads.checkpoints import CheckpointError
from infra.cli import StageError
from infra.file_io import ForeignFiles
from tests.helpers import copied, copy_cache, planted


def test_search_finds_the_demo_captions_videos_at_the_heads_r1(demo, demo_data, tmp_path):
    captions = [
        json.loads(line) for line in (demo / "cache" / "test" / "captions.jsonl").read_text().split("\n") if line
    ]
    origin = [c for c in captions if c["kind"] == "human" and c["direction"] == "forward"]
    index = tmp_path / "index"
    args = search.parser.parse_args(
        [
            "--cache",
            str(demo / "cache"),
            "--ckpt",
            str(demo / "seqTransf_0" / "best.pt"),
            "--clip",
            str(demo_data / "clip_tiny.pt"),
        ]
        + ["--top-k", "1", "--index", str(index), "q"]
    )
    hits = search.search(args, [c["text"] for c in origin], "cpu")
    rate = 100 * np.mean([found[0][0] == caption["video_id"] for found, caption in zip(hits, origin, strict=True)])
    assert rate == pytest.approx(read_result(demo / "results" / "seqTransf_0.json").data["origin"]["t2v"]["R@1"])
    assert json.loads((index / "ids.json").read_text())[0] == {"video_id": origin[0]["video_id"], "reversed": 0}
    vectors = np.load(index / "index.npy")
    faiss = pytest.importorskip("faiss", reason="faiss is optional: the .npy index is always written")
    _, nearest = faiss.read_index(str(index / "index.faiss")).search(vectors[:3], 1)
    assert nearest[:, 0].tolist() == [0, 1, 2]


def test_a_checkpoint_is_refused_on_a_cache_of_other_features_naming_the_field(demo, demo_data, tmp_path):
    """Once search.py checked only the CLIP checkpoint: a seqTransf trained on the fps-4 cache
    searched an fps-2 cache of the same videos and exited 0. It now asks the one rule evaluate.py
    asks (heads/checkpoints.py, check_features)."""
    other = copy_cache(demo / "cache", tmp_path / "fps2", sampling={"fps": 2.0})
    args = [
        "--cache",
        str(other),
        "--ckpt",
        str(demo / "seqTransf_0" / "best.pt"),
        "--clip",
        str(demo_data / "clip_tiny.pt"),
    ]
    with pytest.raises(
        CheckpointError, match=r"cannot score .*fps2: its features differ in sampling\.fps: .* has 4\.0, .* has 2\.0"
    ):
        search.main([*args, "--index", str(tmp_path / "index"), "a red circle grows"])
    assert not (tmp_path / "index").exists()


def meanp_search(demo, demo_data, index, *queries):
    args = ["--cache", str(demo / "cache"), "--head", "meanP", "--clip", str(demo_data / "clip_tiny.pt")]
    return search.main([*args, "--index", str(index), "--top-k", "3", *queries])


def test_a_saved_index_whose_rows_changed_is_built_again(demo, demo_data, tmp_path, capsys):
    """Round four: an index.npy with its rows rolled was reused on key.json alone, so other videos got
    the same scores. The key records the sha256 of the index's files; a changed file is rebuilt."""
    index = tmp_path / "index"
    meanp_search(demo, demo_data, index, "a red circle grows")
    first = capsys.readouterr().out.split("a red circle grows", 1)[1]
    vectors = np.load(index / "index.npy")
    np.save(index / "index.npy", np.roll(vectors, 1, axis=0))
    meanp_search(demo, demo_data, index, "a red circle grows")
    out = capsys.readouterr().out
    assert f"the index in {index} is not the one its key.json records (a file changed): built again" in out
    assert out.split("a red circle grows", 1)[1] == first
    assert np.array_equal(np.load(index / "index.npy"), vectors)


def test_an_index_folder_holding_a_users_file_is_refused_and_kept(demo, demo_data, tmp_path):
    """Round four: `--index DIR` replaced the whole folder, a thesis.tex in it gone with exit 0."""
    index = tmp_path / "mine"
    index.mkdir()
    (index / "thesis.tex").write_text("chapter one")
    with pytest.raises(ForeignFiles, match=r"mine holds 'thesis.tex' and was not written by this project"):
        meanp_search(demo, demo_data, index, "a red circle grows")
    assert [path.name for path in index.iterdir()] == ["thesis.tex"]


def test_a_full_disk_searches_without_saving_the_index_and_says_so(demo, demo_data, tmp_path, capsys, monkeypatch):
    def full(*_, **__):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(search.np, "save", full)
    meanp_search(demo, demo_data, tmp_path / "index", "a red circle grows")
    out = capsys.readouterr().out
    assert "could not be saved in" in out and "searched without saving it" in out and "  1. " in out
    assert not (tmp_path / "index").exists() and not list(tmp_path.glob(".index*"))


@pytest.mark.parametrize(
    "query, message",
    [
        ("", "query 2 ('') holds no word once CLIP's text cleaning has run"),
        ("   ", "query 2 ('   ') holds no word"),
        ("&nbsp;", "query 2 ('&nbsp;') holds no word"),
        (" ".join(["circle"] * 80), "query 2 ('circle circle circle circle circle circl'...) is 82 tokens, past"),
    ],
)
def test_a_query_that_cannot_be_read_whole_is_refused(demo, demo_data, tmp_path, query, message):
    """Round four: empty and white-space queries were ranked; one past the context length was cut
    without a word."""
    with pytest.raises(StageError, match=re.escape(message)):
        meanp_search(demo, demo_data, tmp_path / "index", "a red circle", query)


def test_non_finite_scores_are_refused_not_ranked(demo, demo_data, tmp_path):
    """Round four: a head scoring NaN printed `nan` rankings with exit 0."""
    cache = copied(demo / "cache", tmp_path / "cache")  # the demo's cache through its symlink
    frames = np.load(cache / "test" / "video_feats.npy")
    frames[:] = np.nan
    planted(cache, "test", "video_feats.npy", frames)
    args = ["--cache", str(cache), "--head", "meanP", "--clip", str(demo_data / "clip_tiny.pt")]
    with pytest.raises(StageError, match=r"scores for query 1 \('a red circle'\) are not all finite"):
        search.main([*args, "--index", str(tmp_path / "index"), "a red circle"])


def test_comment_lines_in_a_queries_file_are_not_queries(tmp_path):
    """Issue 29: `--queries` searched for '# comment' lines as if they were captions."""
    path = tmp_path / "queries.txt"
    path.write_text("# what to look for\na man opens a door\n\n   # indented note\nsnow falls #1\n", encoding="utf-8")
    assert search.read_queries(path) == ["a man opens a door", "snow falls #1"]


def test_with_and_without_reversals_each_keep_their_own_default_index(demo, demo_data, tmp_path):
    """Issue 29: --reversals and no reversals shared one default index folder, so toggling rebuilt it."""
    cache = copy_cache(demo / "cache", tmp_path / "cache")
    args = ["--cache", str(cache), "--head", "meanP", "--clip", str(demo_data / "clip_tiny.pt"), "a red circle grows"]
    search.main(args)
    plain_key = (cache / "index_test" / "key.json").read_bytes()
    search.main([*args, "--reversals"])
    reversals = json.loads((cache / "index_test_reversals" / "ids.json").read_text())
    assert {entry["reversed"] for entry in reversals} == {0, 1}
    assert (cache / "index_test" / "key.json").read_bytes() == plain_key  # the other index kept as it was
