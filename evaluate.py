"""Score a head on one or more cache splits and write every metric, with the arrays that back them.

    python evaluate.py --cache OUT --split test --ckpt runs/seqTransf_seed0/best.pt --out results/seqTransf_seed0.json
    python evaluate.py --cache OUT --split test --head meanP --out results/meanP.json
    python evaluate.py --ckpt best.pt --cache msrvtt_cache:test --cache rtime_cache:test --out results/seqTransf.json

Several --cache (each PATH, PATH:SPLIT or PATH:SPLIT=LABEL) evaluate one head on several datasets in
one command, one result per dataset: OUT.json becomes OUT.{label}.json. A dataset's label is the
name extract.py recorded (--dataset) and the split, e.g. "RTime test"; =LABEL overrides it. A
checkpoint is evaluated on any cache whose features it can read: the CLIP checkpoint, tokenizer,
preprocessing, sampling and storage dtype must match the cache it was trained on (the refusal names
the first field that differs); annotations and batch sizes may differ.

Settings (human captions only): RTime splits give `origin` (original videos x forward captions)
and `hard` (originals and their reversals x forward and reverse captions), plus `binary` (each
record's caption against its video and that video's reversal, both ways); a generic dataset has
one setting, `all`. Both directions: text->video, and video->text as CLIP4Clip computes it (each
candidate's caption set scored by its best caption; see evaluation/scoring.py). `v2t_per_caption`,
kept for reference only, ranks every single caption instead (a video's other captions count as
wrong). Candidate order, which is also the stable-sort tie order: originals by video row, then
reversed videos by video row; captions by caption row.

Writes the folder OUT (OUT.json without .json) as one unit: {setting}_scores.npy [captions,
candidates] with {setting}_ids.json naming its rows (caption ids) and columns (video id, reversed),
{setting}_gold.npy, {setting}_{direction}_per_query.npy [queries, 7] (stable, expected, optimistic
and pessimistic rank, expected recall@1/5/10) and binary_{direction}_margins.npy; then OUT.json
{setting: {direction: {R@1, R@5, R@10, MdR, MnR, expected, optimistic, pessimistic, n_queries,
n_tied}}, binary: {direction: {accuracy, n_pairs, n_tied}}, provenance: {...}}, whose provenance
names each array by relative path and sha256 and carries everything a report states (CLIP file and
hash, preprocessing, sampling, frames cached and seen, training settings, what each stage cost).
"""

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

from corpus.annotations import EVALUATION_SETTINGS, PARAPHRASE_SETTINGS
from corpus.feature_cache import (
    META_NAME,
    CacheError,
    content_digest,
    contract_mismatch,
    feature_contract,
    frames_per_video,
    open_split,
    read_meta,
    read_timings,
    split_format,
    spread,
)
from evaluation.order_sensitivity import ORDER_FREE_HEADS, PERMUTATIONS, order_margins, order_summary
from evaluation.postprocess import METHOD_SUFFIX, POSTPROCESS, dual_softmax, querybank_normalise
from evaluation.results import PER_QUERY_COLUMNS, write_result
from evaluation.retrieval_metrics import binary_accuracy, retrieval_metrics
from evaluation.scoring import (
    TIE_ORDER,
    autocast_for,
    binary_margins,
    candidate_index,
    directions,
    read_setting,
    score_matrix,
)
from heads.architectures import HEADS, build_head, parameter_free_heads
from heads.checkpoints import CheckpointError, head_from_checkpoint, load_checkpoint
from heads.split_tensors import PLACEMENTS, frames_to_use, load_split_tensors
from infra.file_io import exclusive_folder, file_sha256, remove_stale_outputs
from infra.runtime import HelpFormatter, device_name, fix_cpu_threads, resolve_device, whole_number

parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
parser.add_argument(
    "--cache",
    required=True,
    action="append",
    help="feature cache written by extract.py, as PATH, PATH:SPLIT or PATH:SPLIT=LABEL; repeat it for several",
)
parser.add_argument(
    "--split",
    default="test",
    help="split of a --cache given without one: test or valid (train has no evaluation pair lists)",
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
    "--frames",
    type=whole_number(2),
    default=None,
    help="with --head: frames per video (default: all the cache holds, up to its t_max); a checkpoint keeps its own",
)
parser.add_argument(
    "--out",
    required=True,
    type=Path,
    help="result JSON to write (arrays go in a folder beside it); with several caches, OUT.{label}.json each",
)
parser.add_argument(
    "--method", default=None, help="name in reports (default: the head's name; '{head} zero-shot' for --head)"
)
parser.add_argument("--device", default="auto", help="where to score: auto (cuda if available), cuda or cpu")
parser.add_argument(
    "--data-on",
    default="auto",
    choices=PLACEMENTS,
    help="where the split's frames live: the device, or the host, read in batches from the cache (same scores)",
)
parser.add_argument(
    "--pair-batch", type=whole_number(1), default=8192, help="tightTransf (text, video) pairs per forward"
)
parser.add_argument(
    "--rewrites",
    action="store_true",
    help="RTime: also the `rewrites` setting, the paraphrases as queries against Hard's candidates (9x Hard's queries)",
)
parser.add_argument(
    "--postprocess",
    choices=POSTPROCESS,
    default=None,
    help="dsl: dual softmax over all test queries (transductive); qbnorm: querybank normalisation with the train "
    "captions as the bank. Text->video only; the method is named '{method} +DSL' or '+QB-Norm'",
)


def main(argv=None):
    args = parser.parse_args(argv)
    check_arguments(args)
    checkpoint = None
    if args.ckpt is not None:
        try:
            checkpoint = load_checkpoint(args.ckpt)
        except CheckpointError as err:
            sys.exit(str(err))
    targets = evaluation_targets(args)
    device = resolve_device(args.device)
    fix_cpu_threads(device)
    for cache_dir, split, label, out_path in targets:
        with exclusive_folder(out_path.parent, f".{out_path.stem}.lock"):
            remove_stale_outputs(out_path.with_suffix(""))  # what an evaluation killed half-way left
            evaluate_one(args, checkpoint, cache_dir, split, label, out_path, device)


def check_arguments(args):
    """Refuse flags that make no sense, before anything is read, naming the flag."""
    if args.out.suffix != ".json":
        parser.error(f"--out {args.out}: give a .json path (the arrays go in a folder beside it)")
    if args.ckpt is not None and args.frames is not None:
        parser.error("--frames is for --head only: a checkpoint is evaluated with the frames it was trained on")
    if args.frames is not None and args.frames % 2:
        parser.error(f"--frames {args.frames}: use an even number >= 2")


def evaluation_targets(args):
    """[(cache folder, split, dataset label, result path)], checked before any work."""
    targets = []
    for spec in args.cache:
        label = None
        if "=" in spec and not Path(spec).exists():
            spec, label = spec.rsplit("=", 1)
        path, split = spec.rsplit(":", 1) if ":" in spec and not Path(spec).exists() else (spec, args.split)
        try:
            label = label or f"{read_meta(Path(path)).get('dataset') or Path(path).resolve().name} {split}"
        except CacheError as err:
            sys.exit(str(err))
        targets.append((Path(path), split, label))
    labels = [label for _, _, label in targets]
    if len(set(labels)) < len(labels):
        parser.error(
            f"--cache: two targets are both called {sorted(set(x for x in labels if labels.count(x) > 1))}; give "
            "each its own label, as --cache PATH:SPLIT=LABEL (or extract the caches with distinct --dataset)"
        )
    if len(targets) == 1:
        return [(*targets[0], args.out)]
    return [
        (cache_dir, split, label, args.out.with_name(f"{args.out.stem}.{file_label(label)}.json"))
        for cache_dir, split, label in targets
    ]


def file_label(label):
    """A dataset label as a file name part: "RTime test" -> "RTime_test"."""
    return re.sub(r"[^\w.-]+", "_", label).strip("_")


def evaluate_one(args, checkpoint, cache_dir, split, label, out_path, device):
    started = time.time()
    if split == "train":
        sys.exit(f"{cache_dir}: --split train has no evaluation pair lists; use valid or test")
    try:
        meta = read_meta(cache_dir)
        annotation_format = split_format(meta, split)
        cached_frames = frames_per_video(cache_dir, split)
    except CacheError as err:
        sys.exit(str(err))
    head, config, training = load_head(args, checkpoint, meta, cache_dir, split, cached_frames)
    head = head.to(device).eval()
    try:
        data = load_split_tensors(
            cache_dir, split, config["frames"], device, config["text_input"] == "tokens", where=args.data_on
        )
    except CacheError as err:
        sys.exit(str(err))
    names = EVALUATION_SETTINGS[annotation_format] + (PARAPHRASE_SETTINGS[annotation_format] if args.rewrites else ())
    settings = {name: read_setting(cache_dir, split, name) for name in names}
    post = postprocessor(args, head, config, checkpoint, data, cache_dir, meta, device)
    results, arrays = score_settings(args, head, data, settings, post, f"{cache_dir} ({split})", device)
    if not args.postprocess:
        results["order"], order_arrays = order_sensitivity(head, data, settings, config, device)
        arrays.update(order_arrays)
    seen = np.minimum(cached_frames, config.get("select_frames") or config["frames"])
    contract = meta["contract"]
    results["provenance"] = {
        "method": (args.method or (config["head"] if training else f"{config['head']} zero-shot"))
        + (METHOD_SUFFIX[args.postprocess] if args.postprocess else ""),
        "postprocess": args.postprocess,
        "head": config["head"],
        "trained": training is not None,
        "seed": config.get("seed"),
        "ckpt": str(args.ckpt) if args.ckpt else None,
        "ckpt_sha256": file_sha256(args.ckpt) if args.ckpt else None,
        "dataset": label,
        "annotation_format": annotation_format,
        "cache": str(cache_dir.resolve()),
        "cache_meta_sha256": file_sha256(cache_dir / META_NAME),
        "cache_content_sha256": content_digest(meta),
        "split": split,
        "frames": config["frames"],
        "frames_cached": spread(cached_frames),
        "frames_seen": spread(seen),
        "text_input": config["text_input"],
        "tie_order": TIE_ORDER,
        "per_query_columns": list(PER_QUERY_COLUMNS),
        "device": device,
        "clip": {"file": meta.get("clip_file"), **contract["clip"]},
        "preprocessing": contract["preprocessing"],
        "sampling": contract["sampling"],
        "storage_dtype": contract["storage_dtype"],
        "compute": contract.get("compute", {}),
        "training": training,
        "cost": {
            "extract": read_timings(cache_dir).get(split),
            "evaluate": {"seconds": round(time.time() - started, 3), "device": device_name(device)},
        },
    }
    write_result(out_path, results, arrays)
    for name in names:
        t2v = results[name]["t2v"]
        v2t = f", v2t R@1 {results[name]['v2t']['R@1']:.2f}" if "v2t" in results[name] else ""
        print(
            f"{name:>8}: t2v R@1 {t2v['R@1']:.2f} (expected {t2v['expected']['R@1']:.2f}, "
            f"{t2v['n_tied']} of {t2v['n_queries']} queries tied){v2t}"
        )
    print(f"wrote {out_path}")


def score_settings(args, head, data, settings, post, where, device):
    """({setting: {direction: metrics}, "binary": ...}, {array name: array}) of every setting. With
    a post-processing (`post`: raw scores -> text->video scores), text->video only."""
    results, arrays = {}, {}
    for name, setting in settings.items():
        with autocast_for(device):
            scores = score_matrix(head, data, setting).numpy()
        non_finite = ~np.isfinite(scores).all(axis=1)
        if non_finite.any():
            sys.exit(
                f"{args.ckpt or args.head} on {where}, {name}: {int(non_finite.sum())} of {len(scores)} queries have "
                "NaN or Inf scores (a diverged head or a damaged cache: run verify.py); no result was written"
            )
        arrays[f"{name}_scores"] = scores
        arrays[f"{name}_ids"] = {"rows": setting.caption_ids, "columns": setting.candidate_ids}
        arrays[f"{name}_gold"] = setting.gold
        results[name] = {"n_candidates": int(scores.shape[1])}
        if post:
            scores = post(scores, setting)
            arrays[f"{name}_scores_{args.postprocess}"] = scores
            ranked = {"t2v": (scores, setting.gold)}
        else:
            ranked = directions(scores, setting.gold)
            results[name]["v2t_per_caption"], _ = retrieval_metrics(scores.T, setting.gold.T)
        for direction, (direction_scores, gold) in ranked.items():
            metrics, per_query = retrieval_metrics(direction_scores, gold)
            results[name][direction] = metrics
            table = np.stack([per_query[column] for column in PER_QUERY_COLUMNS], axis=1).astype(np.float64)
            arrays[f"{name}_{direction}_per_query"] = table
        if name == "hard":
            results["binary"] = {}
            for direction, (margins, sides) in binary_margins(scores, setting).items():
                if direction in ranked:
                    results["binary"][direction] = binary_accuracy(margins)
                    arrays[f"binary_{direction}_margins"], arrays[f"binary_{direction}_sides"] = margins, sides
    return results, arrays


def order_sensitivity(head, data, settings, config, device):
    """({change: share dropped, mean margin}, {array name: margins}) over the main setting's
    queries (Hard, or all captions), each against its own video with its frames changed. An
    order-blind head that moves under a permutation is a broken head, refused here."""
    main_setting = settings.get("hard") or settings["all"]
    with autocast_for(device):
        margins = order_margins(head, data, main_setting)
    if config["head"] in ORDER_FREE_HEADS:
        moved = [name for name in PERMUTATIONS if np.any(margins[name] != 0)]
        if moved:
            sys.exit(
                f"built-in check failed: {config['head']} scored a query differently with its frames {moved[0]} "
                "(an order-free sum must not move under a permutation); no result was written"
            )
    return (
        {name: order_summary(values) for name, values in margins.items()},
        {f"order_{name}_margins": values for name, values in margins.items()},
    )


def postprocessor(args, head, config, checkpoint, data, cache_dir, meta, device):
    """raw scores, setting -> post-processed text->video scores, or None (--postprocess)."""
    if args.postprocess == "dsl":
        # the scale the head was trained at: its temperature for cosines, 1 for tightTransf's logits
        temperature = 1.0 if config["head"] == "tightTransf" else 100.0
        if checkpoint is not None and config["head"] != "tightTransf":
            temperature = float(checkpoint["log_scale"].exp())
        return lambda scores, setting: dual_softmax(scores, temperature)
    if args.postprocess == "qbnorm":
        if config["head"] == "tightTransf":
            parser.error(
                "--postprocess qbnorm: the bank of training queries would need a cross-encoder pass per bank "
                "query and candidate, and tightTransf's logits have no cosine scale for the paper's beta; use dsl"
            )
        if "train" not in meta["counts"]:
            sys.exit(f"--postprocess qbnorm: {cache_dir} has no train split, whose captions are the querybank")
        bank = open_split(cache_dir, "train").text_feats
        return lambda scores, setting: querybank_normalise(scores, bank_scores(head, data, setting, bank, device))
    return None


def bank_scores(head, data, setting, bank, device, block=4096):
    """The querybank's scores against the setting's candidates, a block of bank captions at a time."""
    with torch.no_grad(), autocast_for(device):
        index = candidate_index(head, data, setting)
        for start in range(0, len(bank), block):
            text = torch.from_numpy(np.asarray(bank[start : start + block])).to(device).float().unsqueeze(1)
            mask = torch.ones(text.shape[:2], dtype=torch.bool, device=device)
            yield head.score_matrix(text, mask, *index).float().cpu().numpy()


def load_head(args, checkpoint, meta, cache_dir, split, cached_frames):
    """The head, the settings it runs with, and its training record (None for a zero-shot head).
    A checkpoint is refused on a cache whose features differ from those it was trained on."""
    if checkpoint is None:
        if args.head not in parameter_free_heads():
            sys.exit(f"--head {args.head} has parameters: train it with train_head.py and pass --ckpt")
        try:
            frames = frames_to_use(args.frames, cached_frames, meta["contract"]["sampling"]["t_max"], cache_dir / split)
        except ValueError as err:
            parser.error(str(err))
        head = build_head(args.head, meta["contract"]["clip"]["config"]["embed_dim"], 0)
        return head, {"head": args.head, "frames": frames, "text_input": "pooled", "seed": None}, None
    config = checkpoint["config"]
    mismatch = contract_mismatch(
        config["feature_contract"], feature_contract(meta), labels=("the checkpoint's training cache", str(cache_dir))
    )
    if mismatch:
        sys.exit(f"{args.ckpt} cannot be evaluated on {cache_dir}: its features differ in {mismatch}")
    try:
        head = head_from_checkpoint(checkpoint, args.ckpt, args.pair_batch)
    except (CheckpointError, ValueError) as err:
        sys.exit(f"{args.ckpt}: {err}")
    training = {
        "settings": config,
        "selected_epoch": checkpoint["epoch"],
        "selection_metric": config["selection_metric"],
        "selection": checkpoint["selection"],
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


if __name__ == "__main__":
    main()
