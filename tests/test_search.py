"""search.py: a trained head used, and the one rule for which caches it may search."""

import json

import numpy as np
import pytest

import search
from evaluation.results import read_result
from heads.checkpoints import CheckpointError
from tests.helpers import copy_cache


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
