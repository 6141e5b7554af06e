"""Score a head on one or more cache splits and write every metric, with the arrays that back them.

    python evaluate.py --cache OUT --split test --ckpt runs/seqTransf_seed0/best.pt --out results/seqTransf_seed0.json
    python evaluate.py --cache OUT --split test --head meanP --out results/meanP.json
    python evaluate.py --ckpt best.pt --cache msrvtt_cache:test --cache rtime_cache:test --out results/seqTransf.json

Several --cache (each PATH, PATH:SPLIT or PATH:SPLIT=LABEL) evaluate one head on several datasets in
one command, one result per dataset: OUT.json becomes OUT.{label}.json. A dataset's label is the
name extract.py recorded (--dataset) and the split, e.g. "RTime test"; =LABEL overrides it. A
checkpoint is evaluated on any cache whose features it was trained on (heads/checkpoints.py,
`check_features`: the refusal names the first field that differs); annotations and batch sizes may differ.

Settings: those of the split's annotation format (corpus/annotations.py): RTime's `origin` and
`hard` (and `rewrites` with --rewrites), plus Binary on Hard; a generic dataset's `all`. Both
directions: text->video, and video->text as CLIP4Clip computes it (evaluation/scoring.py). The
result file (OUT.json and the folder OUT/ of its arrays) is described in evaluation/results.py.
Exit codes: infra/cli.py.
"""

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from corpus.annotations import FORMATS
from corpus.feature_cache import (
    META_NAME,
    CacheError,
    content_digest,
    feature_contract,
    frames_per_video,
    open_split,
    pairs_path,
    read_meta,
    read_timings,
    split_format,
    spread,
    video_keys,
)
from evaluation.conventions import CONVENTIONS, convention_numbers
from evaluation.order_sensitivity import order_margins
from evaluation.postprocess import METHOD_SUFFIX, POSTPROCESS, QB_BETA, dual_softmax, querybank_normalise
from evaluation.results import (
    PER_QUERY_COLUMNS,
    PERMUTATIONS,
    ResultError,
    check_result_target,
    file_label,
    order_summary,
    read_result,
    write_result,
)
from evaluation.retrieval_metrics import binary_accuracy, retrieval_metrics
from evaluation.scoring import (
    TIE_ORDER,
    autocast_for,
    binary_margins,
    candidate_index,
    described,
    directions,
    other_side_queries,
    read_setting,
    score_matrix,
)
from heads.architectures import CLIP_TEMPERATURE, PAIR_BATCH, ZERO_SHOT_HEADS
from heads.checkpoints import LOG, CheckpointError, head_for_cache, load_checkpoint, seen_test_videos
from heads.loaded_split import PLACEMENTS, frames_to_use, load_split_tensors
from infra import cli
from infra.cli import HelpFormatter, StageError, whole_number
from infra.file_io import exclusive_folder, file_sha256, remove_stale_outputs
from infra.runtime import code_version, device_name, fix_cpu_threads, flag_settings, process_seconds, resolve_device

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
    choices=ZERO_SHOT_HEADS,
    help="a parameter-free head evaluated zero-shot, with no checkpoint (the others are trained and passed as --ckpt)",
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
    "--pair-batch", type=whole_number(1), default=PAIR_BATCH, help="tightTransf (text, video) pairs per forward"
)
parser.add_argument(
    "--rewrites",
    action="store_true",
    help="also the settings evaluated on request (RTime's `rewrites`: the paraphrases as queries, 9x Hard's queries)",
)
parser.add_argument(
    "--convention",
    action="append",
    choices=CONVENTIONS,
    default=[],
    help="also record the numbers under a peer's protocol, beside ours (repeatable; evaluation/conventions.py): "
    + "; ".join(f"{name}: {text}" for name, text in CONVENTIONS.items()),
)
parser.add_argument(
    "--allow-overlap",
    action="store_true",
    help="score a checkpoint on videos it was trained or selected on (by file content); refused by default, "
    "and the report marks it",
)
parser.add_argument(
    "--keep-finished",
    action="store_true",
    help="leave a result at --out alone where it is this evaluation's, finished: its arrays check out and it "
    "records the same checkpoint, cache content, flags and code (run_all.sh reruns with it)",
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
    checkpoint = load_checkpoint(args.ckpt) if args.ckpt is not None else None
    targets = evaluation_targets(args)
    # every target's overlap with the videos the head has seen, before any is scored
    overlaps = [seen_overlap(args, checkpoint, cache_dir, split) for cache_dir, split, _, _ in targets]
    device = resolve_device(args.device)
    fix_cpu_threads(device)
    startup = process_seconds()
    for target, overlap in zip(targets, overlaps, strict=True):
        out_path = target[-1]
        with exclusive_folder(out_path.parent, f".{out_path.stem}.lock"):
            if args.keep_finished and finished(args, target):
                print(f"kept {out_path}: finished with the same checkpoint, cache, flags and code (--keep-finished)")
                continue
            remove_stale_outputs(out_path.with_suffix(""))  # what an evaluation killed half-way left
            evaluate_one(args, checkpoint, target, overlap, device, startup)
            startup = 0.0


def check_arguments(args):
    """Refuse flags that make no sense, before anything is read, naming the flag."""
    if args.out.suffix != ".json":
        parser.error(f"--out {args.out}: give a .json path (the arrays go in a folder beside it)")
    if args.ckpt is not None and args.frames is not None:
        parser.error("--frames is for --head only: a checkpoint is evaluated with the frames it was trained on")
    if args.convention and args.postprocess:
        parser.error("--convention: the peers' protocols score raw similarities; evaluate without --postprocess")
    if args.frames is not None and args.frames % 2:
        parser.error(f"--frames {args.frames}: use an even number >= 2")
    for spec in args.cache:
        if parse_target(spec, args.split)[1] == "train":
            parser.error(f"--cache {spec}: the train split has no evaluation pair lists; use valid or test")


def parse_target(spec, default_split):
    """PATH, PATH:SPLIT or PATH:SPLIT=LABEL -> (path, split, label or None)."""
    label = None
    if "=" in spec and not Path(spec).exists():
        spec, label = spec.rsplit("=", 1)
    path, split = spec.rsplit(":", 1) if ":" in spec and not Path(spec).exists() else (spec, default_split)
    return Path(path), split, label


def default_label(cache_dir, split):
    """The dataset's name and the split; and the backbone, for a cache not of OpenAI's CLIP (the
    default), so that one test set's caches of several backbones are told apart in a report."""
    meta = read_meta(cache_dir)
    label = f"{meta.get('dataset') or cache_dir.resolve().name} {split}"
    backbone = meta["contract"]["backbone"]
    return label if backbone["kind"] == "openai" else f"{label} ({meta.get('backbone_source')})"


def evaluation_targets(args):
    """[(cache folder, split, dataset label, result path)], checked before any work."""
    targets = []
    for spec in args.cache:
        path, split, label = parse_target(spec, args.split)
        targets.append((path, split, label or default_label(path, split)))
    labels = [label for _, _, label in targets]
    if len(set(labels)) < len(labels):
        raise StageError(
            f"--cache: two targets are both called {sorted(set(x for x in labels if labels.count(x) > 1))}; give "
            "each its own label, as --cache PATH:SPLIT=LABEL (or extract the caches with distinct --dataset)"
        )
    if len(targets) == 1:
        targets = [(*targets[0], args.out)]
    else:
        named = {}
        for _, _, label in targets:
            first = named.setdefault(file_label(label), label)
            if first != label:
                raise StageError(
                    f"--cache: the labels {first!r} and {label!r} would both write {args.out.stem}."
                    f"{file_label(label)}.json (a file name keeps letters, digits, '.' and '-'); give them labels "
                    "that differ there, as --cache PATH:SPLIT=LABEL"
                )
        targets = [
            (cache_dir, split, label, args.out.with_name(f"{args.out.stem}.{file_label(label)}.json"))
            for cache_dir, split, label in targets
        ]
    for *_, out_path in targets:
        check_result_target(out_path)
    return targets


def evaluate_one(args, checkpoint, target, overlap, device, startup):
    """Scores one target and writes its result; `startup`: the seconds the process spent before it
    (start-up, the checkpoint; 0 for a command's later targets), which its cost counts."""
    cache_dir, split, label, out_path = target
    # ---- the split, its annotation format and the head that scores it
    started = time.time()
    meta = read_meta(cache_dir)
    annotation = FORMATS[split_format(meta, split)]
    cached_frames = frames_per_video(cache_dir, split)
    frames = frames_to_use_here(args.frames, cached_frames, meta, cache_dir / split) if checkpoint is None else None
    head, config = head_for_cache(
        meta, cache_dir, frames, checkpoint=checkpoint, ckpt=args.ckpt, name=args.head, pair_batch=args.pair_batch
    )
    head = head.to(device).eval()
    data = load_split_tensors(
        cache_dir, split, config["frames"], device, config["text_input"] == "tokens", where=args.data_on
    )

    # ---- every setting of the format scored, then the order check on the one it selects on
    settings = requested_settings(args, annotation, cache_dir, split)
    post, post_settings = postprocessor(args.postprocess, head, checkpoint, data, cache_dir, meta, device)
    where = f"{args.ckpt or args.head} on {cache_dir} ({split})"
    results, arrays = score_settings(head, data, settings, annotation, post, args.postprocess, where, device)
    if not args.postprocess:
        results["order"], order_arrays = order_sensitivity(head, data, settings[annotation.selection], device)
        arrays.update(order_arrays)
    if args.convention:
        fmt = split_format(meta, split)
        results["conventions"] = {name: convention_numbers(name, arrays.__getitem__, fmt) for name in args.convention}

    # ---- what the report states, then the result as one unit
    training = training_record(args.ckpt, checkpoint)
    results["provenance"] = provenance(args, config, training, (cache_dir, split, label), meta, cached_frames, device)
    results["provenance"]["overlap"] = overlap
    results["provenance"]["postprocess_settings"] = post_settings
    results["provenance"]["cost"]["evaluate"] = {
        "seconds": round(time.time() - started, 3),
        "startup_seconds": round(startup, 3),
        "device": device_name(device),
    }
    write_result(out_path, results, arrays)
    for name in settings:
        t2v = results[name]["t2v"]
        v2t = f", v2t R@1 {results[name]['v2t']['R@1']:.2f}" if "v2t" in results[name] else ""
        print(
            f"{name:>8}: t2v R@1 {t2v['R@1']:.2f} (expected {t2v['expected']['R@1']:.2f}, "
            f"{t2v['n_tied']} of {t2v['n_queries']} queries tied){v2t}"
        )
    for name, numbers in results.get("conventions", {}).items():
        print(f"{name} convention: {convention_line(numbers)}")
    print(f"wrote {out_path}")


def invocation(args):
    """The flags a result's numbers depend on, as it records them (the checkpoint and cache are
    recorded by content; where and how fast it ran, and what to do with a finished result, are not)."""
    return flag_settings(args, ("cache", "split", "ckpt", "out", "device", "data_on", "pair_batch", "keep_finished"))


def finished(args, target):
    """Whether the result at the target's path is what this evaluation would write: it reads back
    whole (arrays by sha256, numbers recomputed) and records the same checkpoint, cache content,
    label, flags and code. A damaged or half-written one is not finished: it is evaluated again."""
    cache_dir, split, label, out_path = target
    if not out_path.exists():
        return False
    try:
        recorded = read_result(out_path).provenance
    except ResultError:
        return False
    expected = {
        "ckpt_sha256": file_sha256(args.ckpt) if args.ckpt else None,
        "cache_content_sha256": content_digest(read_meta(cache_dir)),
        "split": split,
        "dataset": label,
        "invocation": invocation(args),
        "code_version": code_version(),
    }
    return all(recorded.get(key) == value for key, value in expected.items())


def convention_line(numbers):
    """A convention's headline numbers on one line: Binary, then text->video R@1 per setting."""
    parts = [f"Binary {d} {m['accuracy']:.2f}" for d, m in numbers.get("binary", {}).items()]
    for setting, metrics in numbers.items():
        if setting == "binary":
            continue
        if "unavailable" in metrics:
            parts.append(f"{setting} unavailable ({metrics['unavailable']})")
            continue
        t2v = metrics["t2v"]
        if "optimistic" in t2v:
            low, high = t2v["pessimistic"]["R@1"], t2v["optimistic"]["R@1"]
            parts.append(f"{setting} t2v R@1 {low:.2f}" + (f" to {high:.2f} (ties)" if high != low else ""))
        else:
            parts.append(f"{setting} t2v R@1 {t2v['R@1']:.2f}")
    return ", ".join(parts)


def frames_to_use_here(requested, cached_frames, meta, where):
    try:
        return frames_to_use(requested, cached_frames, meta["contract"]["sampling"]["t_max"], where)
    except ValueError as err:
        raise StageError(str(err)) from None


def score_settings(head, data, settings, annotation, post, post_name, where, device):
    """({setting: {direction: metrics}, "binary": ...}, {array name: array}) of every setting, with
    Binary on a setting whose candidates hold originals and reversals. With a post-processing
    (`post`: raw scores, setting -> (text->video scores, the scores Binary reads)), text->video only."""
    results, arrays = {}, {}
    for name, setting in settings.items():
        with autocast_for(device):
            scores = score_matrix(head, data, setting).numpy()
        non_finite = ~np.isfinite(scores).all(axis=1)
        if non_finite.any():
            raise StageError(
                f"{where}, {name}: {int(non_finite.sum())} of {len(scores)} queries have NaN or Inf scores "
                "(a diverged head or a damaged cache: run verify.py); no result was written"
            )
        arrays[f"{name}_scores"] = scores
        arrays[f"{name}_ids"] = {"rows": setting.caption_ids, "columns": setting.candidate_ids}
        arrays[f"{name}_gold"] = setting.gold
        results[name] = {"n_candidates": int(scores.shape[1])}
        binary_scores = scores
        if post:
            scores, binary_scores = post(scores, setting)
            arrays[f"{name}_scores_{post_name}"] = scores
            ranked = {"t2v": (scores, setting.gold)}
        else:
            ranked = directions(scores, setting.gold)
            described_scores, described_gold = described(scores, setting.gold)
            results[name]["v2t_per_caption"], _ = retrieval_metrics(described_scores.T, described_gold.T)
        for direction, (direction_scores, gold) in ranked.items():
            metrics, per_query = retrieval_metrics(direction_scores, gold)
            results[name][direction] = metrics
            table = np.stack([per_query[column] for column in PER_QUERY_COLUMNS], axis=1).astype(np.float64)
            arrays[f"{name}_{direction}_per_query"] = table
        if annotation.settings[name].binary:
            results["binary"] = {}
            for direction, (margins, sides) in binary_margins(binary_scores, setting).items():
                if direction in ranked:
                    results["binary"][direction] = binary_accuracy(margins)
                    arrays[f"binary_{direction}_margins"], arrays[f"binary_{direction}_sides"] = margins, sides
    return results, arrays


def order_sensitivity(head, data, setting, device):
    """({change: share dropped, mean margin}, {array name: margins}) over the setting's queries,
    each against its own video with its frames changed. A head that says it is order-free and moves
    under a permutation is a broken head, refused here."""
    with autocast_for(device):
        margins = order_margins(head, data, setting)
    if head.order_free:
        moved = [name for name in PERMUTATIONS if np.any(margins[name] != 0)]
        if moved:
            raise StageError(
                f"built-in check failed: a head that is order-free scored a query differently with its frames "
                f"{moved[0]} (an order-free sum must not move under a permutation); no result was written"
            )
    return (
        {name: order_summary(values) for name, values in margins.items()},
        {f"order_{name}_margins": values for name, values in margins.items()},
    )


def postprocessor(name, head, checkpoint, data, cache_dir, meta, device) -> tuple[Callable | None, dict | None]:
    """(raw scores, setting -> (post-processed text->video scores, the scores Binary reads), what it
    runs with, recorded in the result), or (None, None) without --postprocess."""
    if name == "dsl":
        # the scale the head was trained at: its temperature for cosines, 1 for a head whose scores are logits
        temperature = CLIP_TEMPERATURE
        if head.scores_are_logits:
            temperature = 1.0
        elif checkpoint is not None:
            temperature = float(checkpoint["log_scale"].exp())

        def dsl(scores, setting):
            left_out = other_side_queries(setting)  # Binary's alternative caption must not rescale its pair
            return dual_softmax(scores, temperature), dual_softmax(scores, temperature, left_out)

        return dsl, {"temperature": temperature}
    if name == "qbnorm":
        if not head.indexable:
            raise StageError(
                "--postprocess qbnorm: the bank of training queries would need a cross-encoder pass per bank "
                "query and candidate, and a head scoring logits has no cosine scale for the paper's beta; use dsl"
            )
        if "train" not in meta["counts"]:
            raise StageError(f"--postprocess qbnorm: {cache_dir} has no train split, whose captions are the querybank")
        bank = open_split(cache_dir, "train").text_feats

        def qbnorm(scores, setting):  # the bank is training captions: no test query rescales another
            normalised = querybank_normalise(scores, bank_scores(head, data, setting, bank, device))
            return normalised, normalised

        return qbnorm, {"beta": QB_BETA, "querybank": "train split captions", "bank_size": len(bank)}
    return None, None


def bank_scores(head, data, setting, bank, device, block=4096):
    """The querybank's scores against the setting's candidates, a block of bank captions at a time."""
    with torch.no_grad(), autocast_for(device):
        index = candidate_index(head, data, setting)
        for start in range(0, len(bank), block):
            text = torch.from_numpy(np.asarray(bank[start : start + block])).to(device).float().unsqueeze(1)
            mask = torch.ones(text.shape[:2], dtype=torch.bool, device=device)
            yield head.score_matrix(text, mask, *index).float().cpu().numpy()


def requested_settings(args, annotation, cache_dir, split):
    """{name: Setting} to score: the format's, and those run on request with --rewrites; a setting
    that paraphrases another ranks that one's candidates. A requested one with no query in this
    split (RTime files without rewrites) is left out, saying so; any other with no query is an error
    naming its pair list."""
    settings = {}
    if args.rewrites and not any(rule.on_request for rule in annotation.settings.values()):
        print(
            f"--rewrites: not applicable: {split_format(read_meta(cache_dir), split)} annotations have no rewritten "
            "captions (RTime's paraphrases); evaluated without them"
        )
    for name, rule in annotation.settings.items():
        if rule.on_request and not args.rewrites:
            continue
        setting = read_setting(cache_dir, split, name, rule.paraphrases_of)
        if not len(setting.caption_rows):
            if rule.on_request:
                print(
                    f"{name}: {cache_dir} ({split}) holds no such caption: the setting is left out, nothing to compare"
                )
                continue
            raise CacheError(f"{pairs_path(cache_dir, split, name)}: no pair: the {name!r} setting has no query")
        settings[name] = setting
    return settings


def seen_overlap(args, checkpoint, cache_dir, split):
    """{"train": ids, "valid": ids} of the evaluated videos a checkpoint was trained or selected on
    (None for a zero-shot head, or an old checkpoint under --allow-overlap); any overlap is refused
    unless --allow-overlap: a score on videos the head has seen is not a test score."""
    if checkpoint is None:
        return None
    keys = video_keys(cache_dir, split)
    try:
        overlap = seen_test_videos(checkpoint, args.ckpt, keys)
    except CheckpointError:
        if args.allow_overlap:  # an old checkpoint whose training videos are unknown: nothing to record
            return None
        raise
    if any(overlap.values()) and not args.allow_overlap:
        seen = sorted({video_id for ids in overlap.values() for video_id in ids})
        raise StageError(
            f"{args.ckpt} has seen {len(seen)} of the {len(keys)} videos of {cache_dir} ({split}), by file content: "
            f"{len(overlap['train'])} in training, {len(overlap['valid'])} in epoch selection (e.g. "
            f"{', '.join(repr(video_id) for video_id in seen[:3])}); a score on videos a head has seen is not a test "
            "score: evaluate it on videos it has not seen, or pass --allow-overlap (the report then marks it)"
        )
    return overlap


def training_record(ckpt, checkpoint):
    """What the report says of how a trained head was trained, or None for a zero-shot head."""
    if checkpoint is None:
        return None
    return {
        "settings": checkpoint["config"],
        "selected_epoch": checkpoint["epoch"],
        "selection_metric": checkpoint["config"]["selection_metric"],
        "selection": checkpoint["selection"],
        "history": training_history(ckpt, checkpoint),
    }


def training_history(ckpt_path, checkpoint):
    """Every epoch's log record: the run folder's log when it is beside the checkpoint (it goes on
    past the selected epoch), else the history the checkpoint was saved with."""
    log_path = Path(ckpt_path).parent / LOG
    if log_path.exists():
        return [json.loads(line) for line in log_path.read_text().splitlines()]
    return checkpoint["history"]


def provenance(args, config, training, target, meta, cached_frames, device):
    """Everything a report states about where a result's numbers come from (target: the cache
    folder, the split and the dataset's label)."""
    cache_dir, split, label = target
    contract = meta["contract"]
    seen = np.minimum(cached_frames, config.get("select_frames") or config["frames"])
    method = args.method or (config["head"] if training else f"{config['head']} zero-shot")
    return {
        "method": method + (METHOD_SUFFIX[args.postprocess] if args.postprocess else ""),
        "postprocess": args.postprocess,
        "head": config["head"],
        "trained": training is not None,
        "seed": config.get("seed"),
        "ckpt": str(args.ckpt) if args.ckpt else None,
        "ckpt_sha256": file_sha256(args.ckpt) if args.ckpt else None,
        "dataset": label,
        "annotation_format": split_format(meta, split),
        "annotations": meta["contract"]["annotations"][split],  # file names and sha256: the report's published table
        "cache": str(cache_dir.resolve()),
        "cache_meta_sha256": file_sha256(cache_dir / META_NAME),
        "cache_content_sha256": content_digest(meta),
        "split": split,
        "frames": config["frames"],
        "frames_cached": spread(cached_frames),
        "frames_seen": spread(seen),
        "captions": {  # what the report states of the text: how many were cut to the context length
            "count": meta["counts"][split]["captions"],
            "truncated": meta["counts"][split]["truncated_captions"],
        },
        "text_input": config["text_input"],
        "tie_order": TIE_ORDER,
        "per_query_columns": list(PER_QUERY_COLUMNS),
        "device": device,
        "backbone": {"source": meta.get("backbone_source"), **contract["backbone"]},
        "preprocessing": contract["preprocessing"],
        "sampling": contract["sampling"],
        "storage_dtype": contract["storage_dtype"],
        "compute": contract.get("compute", {}),
        "training": training,
        "cost": {"extract": read_timings(cache_dir) or None},  # every split's and the set-up
        "feature_contract": feature_contract(meta),  # what report.py checks a trained head's training cache against
        "invocation": invocation(args),
        "code_version": code_version(),
    }


if __name__ == "__main__":
    cli.run(main)
