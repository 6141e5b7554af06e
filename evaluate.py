"""Score a head on a cache split and write every metric, with the score matrices kept beside them.

    python evaluate.py --cache OUT --split test --ckpt runs/seqTransf_s0/best.pt --out results/seqTransf_s0.json
    python evaluate.py --cache OUT --split test --head meanP --out results/meanP.json

Settings (human captions only): `origin` (original videos x forward captions), `hard` (originals
and their reversals x forward and reverse captions), `binary` (each record's caption against its
video and that video's reversal, both ways); a generic dataset has one setting, `all`. Both
directions, text->video and video->text. Candidate order, which is also the stable-sort tie order:
originals by video row, then reversed videos by video row; captions by caption row.

Writes OUT.json {setting: {direction: {R@1, R@5, R@10, MdR, MnR, expected, optimistic, pessimistic,
n_queries, n_tied}}, binary: {direction: {accuracy, n_pairs, n_tied}}, provenance: {...}} and, in
the folder OUT (without .json): {setting}_scores.npy [queries, candidates], {setting}_gold.npy,
{setting}_{direction}_per_query.npy [queries, 7] (stable, expected, optimistic and pessimistic
rank, expected recall@1/5/10), and binary_{direction}_margins.npy, so every statistic can be
recomputed without a model.
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from clip_vendor.tokenizer import file_sha256
from feature_cache import META_NAME, atomic_write_json, atomic_write_npy, read_meta, read_pairs
from heads import HEADS, build_head
from retrieval_metrics import binary_accuracy, retrieval_metrics
from split_data import autocast_for, load_split_tensors, score_matrix, setting_from_pairs

TIE_ORDER = "candidates: originals by video row, then reversed videos by video row; queries: captions by caption row"
PER_QUERY_COLUMNS = ("stable_rank", "expected_rank", "optimistic_rank", "pessimistic_rank",
                     "expected_recall@1", "expected_recall@5", "expected_recall@10")

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--cache", required=True, type=Path, help="feature cache written by extract.py")
parser.add_argument("--split", default="test", help="split to evaluate (test or valid)")
source = parser.add_mutually_exclusive_group(required=True)
source.add_argument("--ckpt", type=Path, help="a checkpoint written by train_head.py")
source.add_argument("--head", choices=sorted(HEADS), help="an untrained, parameter-free head (meanP)")
parser.add_argument("--frames", type=int, default=None, help="with --head: frames per video (default: the cache's t_max)")
parser.add_argument("--out", required=True, type=Path, help="result JSON to write (arrays go in a folder beside it)")
parser.add_argument("--method", default=None, help="name in reports (default: the head's name)")
parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="where to score")
parser.add_argument("--pair-batch", type=int, default=8192, help="tightTransf pairs per forward")


def main(argv=None):
    args = parser.parse_args(argv)
    meta = read_meta(args.cache)
    cache_sha = file_sha256(args.cache / META_NAME)
    head, config = load_head(args, meta, cache_sha)
    head = head.to(args.device).eval()
    data = load_split_tensors(args.cache, args.split, config["frames"], args.device, config["text_input"] == "tokens")
    autocast = autocast_for(args.device)

    array_dir = args.out.with_suffix("")
    array_dir.mkdir(parents=True, exist_ok=True)
    results, files = {}, {}
    for name, pairs in settings(args.cache, args.split).items():
        setting = setting_from_pairs(pairs)
        with autocast:
            scores = score_matrix(head, data, setting, config["text_input"], args.pair_batch).numpy()
        files[f"{name}_scores"] = save(array_dir / f"{name}_scores.npy", scores)
        files[f"{name}_gold"] = save(array_dir / f"{name}_gold.npy", setting.gold)
        results[name] = {}
        for direction, (direction_scores, gold) in {"t2v": (scores, setting.gold), "v2t": (scores.T, setting.gold.T)}.items():
            metrics, per_query = retrieval_metrics(direction_scores, gold)
            results[name][direction] = metrics
            table = np.stack([per_query[column] for column in PER_QUERY_COLUMNS], axis=1).astype(np.float64)
            files[f"{name}_{direction}_per_query"] = save(array_dir / f"{name}_{direction}_per_query.npy", table)
        if name == "hard":
            results["binary"] = {}
            for direction, margins in binary_margins(scores, setting).items():
                results["binary"][direction] = binary_accuracy(margins)
                files[f"binary_{direction}_margins"] = save(array_dir / f"binary_{direction}_margins.npy", margins)
    results["provenance"] = {
        "method": args.method or config["head"], "head": config["head"], "seed": config.get("seed"),
        "ckpt": str(args.ckpt) if args.ckpt else None, "ckpt_sha256": file_sha256(args.ckpt) if args.ckpt else None,
        "run_dir": str(args.ckpt.parent) if args.ckpt else None, "cache": str(args.cache),
        "cache_meta_sha256": cache_sha, "split": args.split, "frames": config["frames"],
        "text_input": config["text_input"], "tie_order": TIE_ORDER, "per_query_columns": list(PER_QUERY_COLUMNS),
        "arrays": files, "device": args.device,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, results)
    for name in ("origin", "hard", "all"):
        if name in results:
            print(f"{name:>6}: t2v R@1 {results[name]['t2v']['R@1']:.2f} (expected {results[name]['t2v']['expected']['R@1']:.2f}, "
                  f"{results[name]['t2v']['n_tied']} of {results[name]['t2v']['n_queries']} queries tied), "
                  f"v2t R@1 {results[name]['v2t']['R@1']:.2f}")
    print(f"wrote {args.out}")


def load_head(args, meta, cache_sha):
    """The head and the settings it runs with; refuses a checkpoint trained on another cache."""
    if args.ckpt is None:
        head = build_head(args.head, meta["contract"]["clip"]["config"]["embed_dim"], 0)
        if any(True for _ in head.parameters()):
            sys.exit(f"--head {args.head} has parameters: train it with train_head.py and pass --ckpt")
        return head, {"head": args.head, "frames": args.frames or meta["contract"]["sampling"]["t_max"],
                      "text_input": "pooled", "seed": None}
    checkpoint = torch.load(args.ckpt, map_location="cpu", weights_only=False)
    if checkpoint["cache_meta_sha256"] != cache_sha:
        sys.exit(f"{args.ckpt} was trained on a cache whose {META_NAME} has sha256 "
                 f"{checkpoint['cache_meta_sha256'][:12]}, but {args.cache / META_NAME} has {cache_sha[:12]}: "
                 "evaluate on the cache it was trained on")
    config = checkpoint["config"]
    head = build_head(config["head"], config["embed_dim"], config["n_positions"], config["text_input"])
    head.load_state_dict(checkpoint["head"])
    return head, config


def settings(cache_dir, split):
    """{setting: pairs}: RTime splits give origin and hard, generic ones a single `all`."""
    pairs = read_pairs(cache_dir, split, f"{split}_pairs.csv")
    human = [pair for pair in pairs if "#human#" in pair["caption_id"]]
    if not any(pair["reversed"] for pair in human):
        return {"all": human}
    origin_file = cache_dir / split / f"{split}_origin_pairs.csv"
    origin = (read_pairs(cache_dir, split, origin_file.name) if origin_file.exists()
              else [pair for pair in human if not pair["reversed"]])
    return {"origin": origin, "hard": human}


def binary_margins(scores, setting):
    """Per record with both an original and a reversed candidate: t2v margins (each caption, its
    video minus the other direction's) and v2t margins (each video, its caption minus the other)."""
    column_of = {item: column for column, item in enumerate(setting.candidates)}
    gold_column = setting.gold.argmax(axis=1)
    queries_of = {}
    for query, column in enumerate(gold_column):
        queries_of.setdefault(setting.candidates[column], []).append(query)
    t2v, v2t = [], []
    for (video_row, flag), forward_queries in sorted(queries_of.items()):
        if flag or (video_row, 1) not in queries_of:
            continue
        original, reversal = column_of[(video_row, 0)], column_of[(video_row, 1)]
        reverse_queries = queries_of[(video_row, 1)]
        t2v += [scores[q, original] - scores[q, reversal] for q in forward_queries]
        t2v += [scores[q, reversal] - scores[q, original] for q in reverse_queries]
        for forward_query in forward_queries:
            for reverse_query in reverse_queries:
                v2t.append(scores[forward_query, original] - scores[reverse_query, original])
                v2t.append(scores[reverse_query, reversal] - scores[forward_query, reversal])
    return {"t2v": np.array(t2v, dtype=np.float64), "v2t": np.array(v2t, dtype=np.float64)}


def save(path, array):
    atomic_write_npy(path, np.ascontiguousarray(array))
    return path.name


if __name__ == "__main__":
    main()
