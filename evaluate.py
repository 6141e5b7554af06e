"""Score a head on a cache split and write every metric, with the score matrices kept beside them.

    python evaluate.py --cache OUT --split test --ckpt runs/seqTransf_seed0/best.pt --out results/seqTransf_seed0.json
    python evaluate.py --cache OUT --split test --head meanP --out results/meanP.json

Settings (human captions only): RTime splits give `origin` (original videos x forward captions)
and `hard` (originals and their reversals x forward and reverse captions), plus `binary` (each
record's caption against its video and that video's reversal, both ways); a generic dataset has
one setting, `all`. Both directions, text->video and video->text. Candidate order, which is also
the stable-sort tie order: originals by video row, then reversed videos by video row; captions by
caption row.

Writes OUT.json {setting: {direction: {R@1, R@5, R@10, MdR, MnR, expected, optimistic, pessimistic,
n_queries, n_tied}}, binary: {direction: {accuracy, n_pairs, n_tied}}, provenance: {...}} and, in
the folder OUT (without .json): {setting}_scores.npy [queries, candidates], {setting}_gold.npy,
{setting}_{direction}_per_query.npy [queries, 7] (stable, expected, optimistic and pessimistic
rank, expected recall@1/5/10), and binary_{direction}_margins.npy, so every statistic can be
recomputed without a model. The provenance carries everything a report states (CLIP file and
hash, preprocessing, sampling, cache dtype, training settings and selected epoch) and the absolute
paths of those arrays, so a report needs nothing but the result files.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from annotations import EVALUATION_SETTINGS
from feature_cache import META_NAME, CacheError, read_meta, read_pairs, split_format
from file_io import atomic_write_json, atomic_write_npy, file_sha256
from heads import HEADS, build_head, parameter_free_heads
from retrieval_metrics import binary_accuracy, retrieval_metrics
from runtime import resolve_device
from scoring import TIE_ORDER, autocast_for, binary_margins, score_matrix, setting_from_pairs
from split_tensors import load_split_tensors

PER_QUERY_COLUMNS = (
    "stable_rank",
    "expected_rank",
    "optimistic_rank",
    "pessimistic_rank",
    "expected_recall@1",
    "expected_recall@5",
    "expected_recall@10",
)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help keeps the docstring's layout and shows every default."""


parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
parser.add_argument("--cache", required=True, type=Path, help="feature cache written by extract.py")
parser.add_argument(
    "--split", default="test", help="an extracted split with evaluation pair lists: test or valid (train has none)"
)
source = parser.add_mutually_exclusive_group(required=True)
source.add_argument("--ckpt", type=Path, help="a checkpoint written by train_head.py")
source.add_argument(
    "--head",
    choices=sorted(HEADS),
    help=f"a head evaluated zero-shot, with no checkpoint: only a parameter-free one "
    f"({', '.join(parameter_free_heads())}); the others are trained and passed as --ckpt",
)
parser.add_argument(
    "--frames", type=int, default=None, help="with --head: frames per video (default: the cache's t_max)"
)
parser.add_argument("--out", required=True, type=Path, help="result JSON to write (arrays go in a folder beside it)")
parser.add_argument("--method", default=None, help="name in reports (default: the head's name)")
parser.add_argument("--device", default="auto", help="where to score: auto (cuda if available), cuda or cpu")
parser.add_argument("--pair-batch", type=int, default=8192, help="tightTransf (text, video) pairs per forward")


def main(argv=None):
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    try:
        meta = read_meta(args.cache)
        setting_names = EVALUATION_SETTINGS[split_format(meta, args.split)] if args.split != "train" else ()
    except CacheError as err:
        sys.exit(str(err))
    if not setting_names:
        sys.exit(f"--split {args.split}: no evaluation pair lists (train is for training); use valid or test")
    cache_sha = file_sha256(args.cache / META_NAME)
    head, config, training = load_head(args, meta, cache_sha)
    head = head.to(device).eval()
    data = load_split_tensors(args.cache, args.split, config["frames"], device, config["text_input"] == "tokens")
    autocast = autocast_for(device)

    array_dir = args.out.with_suffix("").resolve()
    array_dir.mkdir(parents=True, exist_ok=True)
    results, files = {}, {}
    for name in setting_names:
        setting = setting_from_pairs(read_pairs(args.cache, args.split, name))
        with autocast:
            scores = score_matrix(head, data, setting).numpy()
        files[f"{name}_scores"] = save(array_dir / f"{name}_scores.npy", scores)
        files[f"{name}_gold"] = save(array_dir / f"{name}_gold.npy", setting.gold)
        results[name] = {}
        for direction, (direction_scores, gold) in {
            "t2v": (scores, setting.gold),
            "v2t": (scores.T, setting.gold.T),
        }.items():
            metrics, per_query = retrieval_metrics(direction_scores, gold)
            results[name][direction] = metrics
            table = np.stack([per_query[column] for column in PER_QUERY_COLUMNS], axis=1).astype(np.float64)
            files[f"{name}_{direction}_per_query"] = save(array_dir / f"{name}_{direction}_per_query.npy", table)
        if name == "hard":
            results["binary"] = {}
            for direction, margins in binary_margins(scores, setting).items():
                results["binary"][direction] = binary_accuracy(margins)
                files[f"binary_{direction}_margins"] = save(array_dir / f"binary_{direction}_margins.npy", margins)
    contract = meta["contract"]
    results["provenance"] = {
        "method": args.method or config["head"],
        "head": config["head"],
        "seed": config.get("seed"),
        "ckpt": str(args.ckpt) if args.ckpt else None,
        "ckpt_sha256": file_sha256(args.ckpt) if args.ckpt else None,
        "cache": str(args.cache),
        "cache_meta_sha256": cache_sha,
        "split": args.split,
        "frames": config["frames"],
        "text_input": config["text_input"],
        "tie_order": TIE_ORDER,
        "per_query_columns": list(PER_QUERY_COLUMNS),
        "arrays": files,
        "device": device,
        "clip": contract["clip"],
        "preprocessing": contract["preprocessing"],
        "sampling": contract["sampling"],
        "storage_dtype": contract["storage_dtype"],
        "compute": contract.get("compute", {}),
        "training": training,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out, results)
    for name in setting_names:
        t2v, v2t = results[name]["t2v"], results[name]["v2t"]
        print(
            f"{name:>6}: t2v R@1 {t2v['R@1']:.2f} (expected {t2v['expected']['R@1']:.2f}, "
            f"{t2v['n_tied']} of {t2v['n_queries']} queries tied), v2t R@1 {v2t['R@1']:.2f}"
        )
    print(f"wrote {args.out}")


def load_head(args, meta, cache_sha):
    """The head, the settings it runs with, and its training record (None for a zero-shot head);
    refuses a checkpoint trained on another cache."""
    if args.ckpt is None:
        if args.head not in parameter_free_heads():
            sys.exit(f"--head {args.head} has parameters: train it with train_head.py and pass --ckpt")
        head = build_head(args.head, meta["contract"]["clip"]["config"]["embed_dim"], 0)
        config = {
            "head": args.head,
            "frames": args.frames or meta["contract"]["sampling"]["t_max"],
            "text_input": "pooled",
            "seed": None,
        }
        return head, config, None
    checkpoint = torch.load(args.ckpt, map_location="cpu", weights_only=False)
    if checkpoint["cache_meta_sha256"] != cache_sha:
        sys.exit(
            f"{args.ckpt} was trained on a cache whose {META_NAME} has sha256 "
            f"{checkpoint['cache_meta_sha256'][:12]}, but {args.cache / META_NAME} has {cache_sha[:12]}: "
            "evaluate on the cache it was trained on"
        )
    config = checkpoint["config"]
    head = build_head(
        config["head"],
        config["embed_dim"],
        config["frames"],
        config["text_input"],
        config["context_length"],
        args.pair_batch,
    )
    head.load_state_dict(checkpoint["head"])
    training = {
        "settings": config,
        "selected_epoch": checkpoint["epoch"],
        "selection": checkpoint["metric"],
        "history": training_history(args.ckpt, checkpoint),
    }
    return head, config, training


def training_history(ckpt_path, checkpoint):
    """Every epoch's log record: the run folder's log.jsonl when it is beside the checkpoint (it
    goes on past the selected epoch), else the history the checkpoint was saved with."""
    log_path = Path(ckpt_path).parent / "log.jsonl"
    if log_path.exists():
        return [json.loads(line) for line in log_path.read_text().splitlines()]
    return checkpoint["history"]


def save(path, array):
    atomic_write_npy(path, np.ascontiguousarray(array))
    return str(path)


if __name__ == "__main__":
    main()
