"""Paragraph retrieval where the ending matters: --long-text truncate against windows.

    python -m bench.long_text                      # demo-sized: 144 train, 24 valid, 24 test videos
    python -m bench.long_text --train 48 --epochs 10

Builds the demo videos (make_demo_data.py) and captions each with a generic paragraph: ten shared
sentences (90 tokens: more than CLIP's 77) and then the one sentence that says what happens in it.
For each --long-text mode it extracts the cache with --paragraphs, trains seqTransf on the train
paragraphs (selected on valid) and evaluates the test paragraphs. Truncation cuts every paragraph
inside the shared opening, so every query is the same text and retrieval is chance; windows read the
ending. A run on the endings alone (the short sentences, no opening) is the ceiling. The weights of
the demo CLIP are random: the comparison is between modes, not with published numbers.
"""

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

import evaluate
import extract
import make_demo_data
import train_head
from corpus.feature_cache import open_split, read_meta

OPENING = ["the camera holds still on a plain background ."] * 10  # 90 tokens

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--train", type=int, default=144, help="train videos")
parser.add_argument("--valid", type=int, default=24, help="valid videos")
parser.add_argument("--test", type=int, default=24, help="test videos")
parser.add_argument("--epochs", type=int, default=30, help="seqTransf epochs")
parser.add_argument("--seed", type=int, default=0, help="training seed")


def write_paragraphs(demo: Path, folder: Path, opening: list[str]) -> None:
    """Each demo split as a generic file: the opening's sentences, then the video's own caption."""
    folder.mkdir(parents=True)
    for split in ("train", "valid", "test"):
        records = json.loads((demo / "annotations" / f"{split}.json").read_text())
        paragraphs = {
            video_id: {"sentences": [*opening, record["forward_captions"][0]]} for video_id, record in records.items()
        }
        (folder / f"{split}.json").write_text(json.dumps(paragraphs))


def run(demo: Path, annotations: Path, long_text: str, work: Path, args) -> dict:
    cache, ckpt_dir, result = work / "cache", work / "run", work / "result.json"
    extract.main(
        ["--annotations", str(annotations), "--videos", str(demo / "videos"), "--clip", str(demo / "clip_tiny.pt")]
        + ["--out", str(cache), "--fps", "4", "--workers", "0", "--paragraphs", "--long-text", long_text]
    )
    train_head.main(
        ["--cache", str(cache), "--head", "seqTransf", "--out", str(ckpt_dir), "--clip", str(demo / "clip_tiny.pt")]
        + ["--frames", "8", "--epochs", str(args.epochs), "--batch-size", "32", "--lr", "3e-3", "--learn-temp"]
        + ["--seed", str(args.seed)]
    )
    evaluate.main(["--cache", str(cache), "--split", "test", "--ckpt", str(ckpt_dir / "best.pt"), "--out", str(result)])
    test_feats = np.asarray(open_split(cache, "test").text_feats)
    return {
        "cut": read_meta(cache)["counts"]["test"]["truncated_captions"],
        "distinct": len(np.unique(test_feats, axis=0)),
        "t2v": json.loads(result.read_text())["all"]["t2v"],
    }


def main(argv=None):
    args = parser.parse_args(argv)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        demo = tmp / "demo"
        sizes = ["--train", str(args.train), "--valid", str(args.valid), "--test", str(args.test)]
        make_demo_data.main(["--out", str(demo), *sizes])
        write_paragraphs(demo, tmp / "paragraphs", OPENING)
        write_paragraphs(demo, tmp / "endings", [])
        for name, annotations, long_text, work in (
            ("paragraphs, --long-text truncate", "paragraphs", "truncate", "truncate"),
            ("paragraphs, --long-text windows", "paragraphs", "windows", "windows"),
            ("last sentences alone (ceiling)", "endings", "truncate", "ceiling"),
        ):
            rows[name] = run(demo, tmp / annotations, long_text, tmp / work, args)
    print(f"demo videos: {args.train} train, {args.valid} valid, {args.test} test; seqTransf, {args.epochs} epochs")
    print("| test queries | cut at 77 tokens | distinct query embeddings | t2v R@1 | R@5 | MdR | MnR |")
    print("|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        t2v = row["t2v"]
        print(
            f"| {name} | {row['cut']} / {t2v['n_queries']} | {row['distinct']} | {t2v['R@1']:.1f} | {t2v['R@5']:.1f} "
            f"| {t2v['MdR']:.1f} | {t2v['MnR']:.2f} |"
        )


if __name__ == "__main__":
    main()
