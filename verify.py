"""Check a feature cache before training on it; exits non-zero on any failure.

    python verify.py --cache OUT --annotations DIR --videos DIR --clip CKPT [--reversed-videos DIR]
    python verify.py ... --backbone hf:FOLDER        (a cache of another backbone: backbones/)

Checks: the meta's backbone, tokenizer and preprocessing against the backbone given, the annotation
files' hashes; every file of
the cache against its recorded sha256, and every video file against its recorded fingerprint;
every caption has an embedding; offsets are consistent; no NaN/Inf; pair lists point at real rows;
~20 random videos re-extracted on the fly match the cache; and, where reversed video files are
given, their extraction matches flip(cached features) within a tolerance measured for lossy
reversals (exact when decoding is lossless), and is aligned with it: its frames are nearer their
mirror frames than those frames' neighbours, which a reversal one frame off is not.
Exit codes: infra/cli.py (a failed check is exit 1, after the table of every check).
"""

import argparse
import json
import random
from pathlib import Path

import numpy as np

import backbones
import clip_vendor
from clip_vendor.preprocess import resize_crop
from corpus.annotations import FORMATS, recorded_sources, sources_digest
from corpus.feature_cache import (
    VIDEO_FILES,
    CacheError,
    changed_split_files,
    content_digest,
    open_split,
    pairs_path,
    read_meta,
    read_pairs,
)
from corpus.video_frames import (
    VideoError,
    decode_and_crop,
    fingerprint_difference,
    fingerprint_videos,
    index_video_files,
    sampled_neighbourhood,
    spec_from_contract,
)
from infra import cli
from infra.cli import HelpFormatter, StageError, whole_number
from infra.records import first_difference
from infra.runtime import fix_cpu_threads, resolve_device

FAILURES_NAMED = 5  # a failed check names this many videos, then counts the rest
# A reversed file whose least per-frame cosine with flip(cache) falls below this is no re-encoding
# of the reversal: lossy ones measured 0.99975 or more, one frame off 0.98875 or more, the reversal
# of other footage 0.83 or less (bench/reversal_tolerance.py, docs/verify.md).
NOT_A_REVERSAL_COSINE = 0.95
NOISE_FLOOR = 1e-5  # cosine distance float rounding alone reaches (seen: -1.2e-7 for identical frames)
TOLERANCE_MEASURED = (
    "The default --rel-tol 0.03 and --min-cosine 0.9995 were measured on ViT-B/32-shaped CLIP with lossy "
    "H.264 reversals of real clips (docs/verify.md); "
)
TOLERANCE_NOTE = (
    TOLERANCE_MEASURED + "for another model, measure its own with "
    "python -m bench.reversal_tolerance --clip {clip} and pass them"
)
TOLERANCE_NOTE_OTHER = (
    TOLERANCE_MEASURED + "bench.reversal_tolerance measures OpenAI checkpoints "
    "only, so for {backbone} compare a few reversals by hand and pass --rel-tol and --min-cosine"
)

parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
parser.add_argument("--cache", required=True, type=Path, help="cache folder written by extract.py")
parser.add_argument("--annotations", required=True, type=Path, help="folder with the {split}.json files extracted")
parser.add_argument("--videos", required=True, type=Path, help="folder with the video files extracted")
parser.add_argument("--clip", type=Path, help="the OpenAI CLIP checkpoint extracted with")
parser.add_argument("--backbone", help="instead of --clip: the backbone extracted with, KIND:PATH (e.g. hf:FOLDER)")
parser.add_argument(
    "--reversed-videos",
    type=Path,
    default=None,
    help="optional folder of frame-reversed files named like the originals",
)
parser.add_argument("--n-videos", type=whole_number(1), default=20, help="videos to re-extract, drawn over all splits")
parser.add_argument("--seed", type=int, default=0, help="which videos are drawn")
parser.add_argument("--device", default="auto", help="where CLIP runs: auto (cuda if available), cuda or cpu")
# Tolerances for a reversed file against flip of the cache. Measured at ViT-B/32 size on real
# clips (bench/reversal_tolerance.py, docs/verify.md): lossy reversals (H.264 CRF 23) reached
# 2.48% and a least cosine of 0.99975; the defaults leave a margin of a fifth and of double.
parser.add_argument("--min-cosine", type=float, default=0.9995, help="least cosine similarity per frame to pass")
parser.add_argument(
    "--rel-tol",
    type=float,
    default=0.03,
    help="largest abs difference allowed, as a share of the largest abs cached value of the video",
)
parser.add_argument(
    "--max-misaligned",
    type=float,
    default=0.25,
    help="most share of a reversed file's frames nearer a neighbour of their mirror frame than it",
)


class Report:
    def __init__(self):
        self.rows = []

    def check(self, name, ok, detail):
        self.rows.append((name, "ok" if ok else "FAIL", detail))

    def print(self):
        width = max(len(name) for name, _, _ in self.rows)
        for name, status, detail in self.rows:
            print(f"{name:<{width}}  {status:<4}  {detail}")

    @property
    def failed(self):
        return [name for name, status, _ in self.rows if status != "ok"]


def main(argv=None):
    args = parser.parse_args(argv)
    check_arguments(args)
    device = resolve_device(args.device)
    fix_cpu_threads(device)  # re-extraction computes as extraction did
    meta = read_meta(args.cache)
    video_files = index_video_files(args.videos).files
    reversed_files = index_video_files(args.reversed_videos).files if args.reversed_videos else {}
    contract, report = meta["contract"], Report()
    report.check("cache complete", meta.get("complete", False), f"splits {sorted(meta['counts'])}")
    backbone = backbones.load_flagged(args, device, clip_vendor.DTYPES[contract["compute"]["dtype"]])
    check_backbone(backbone, contract, "--backbone" if args.backbone else "--clip", report)
    check_annotation_hashes(args, contract, report)
    check_file_digests(args.cache, meta, report)
    check_video_fingerprints(args, meta, video_files, report)
    splits = {}
    for split in meta["counts"]:
        try:
            splits[split] = open_split(args.cache, split, check_bytes=False)  # checked above, every file in full
        except CacheError as err:
            report.check(f"{split} files readable", False, str(err))
            continue
        check_split_files(args.cache, split, splits[split], contract, report)
    decode_spec = spec_from_contract(contract["sampling"], backbone.size, backbone.pixels)
    check_reextraction(args, decode_spec, splits, backbone, video_files, reversed_files, report)
    report.print()
    if report.failed:
        raise StageError(f"{len(report.failed)} check(s) failed: {', '.join(report.failed)}")
    print("verify: all checks passed")


def check_arguments(args):
    if (args.clip is None) == (args.backbone is None):
        parser.error("give the one backbone the cache was extracted with: --clip FILE or --backbone KIND:PATH")


def check_backbone(backbone, contract, flag, report):
    """The backbone given, its tokenizer and its preprocessing are those the cache records."""
    tokenizer = contract["tokenizer"]
    given = {
        "backbone": backbone.contract,
        "tokenizer": backbone.describe_tokenizer(tokenizer["context_length"], tokenizer["long_text"]),
        "preprocessing": backbone.describe_pixels(),
    }
    for field, entry in given.items():
        mismatch = first_difference(contract[field], entry, ("the cache has", f"{flag} has"))
        report.check(
            field, mismatch is None, f"{backbone.source}: " + (f"differs in {mismatch}" if mismatch else "as recorded")
        )


def check_annotation_hashes(args, contract, report):
    for split, entry in contract["annotations"].items():
        paths = recorded_sources(args.annotations, entry)
        missing = [path for path in paths if not path.exists()]
        actual = "missing" if missing else sources_digest(paths)
        detail = f"{' + '.join(map(str, missing or paths))} {actual[:12]}"
        if actual != entry["sha256"]:
            detail += f" (the cache was extracted from sha256 {entry['sha256'][:12]}: another file)"
        report.check(f"{split} annotations sha256", actual == entry["sha256"], detail)


def check_file_digests(cache_dir, meta, report):
    """Every file of every finished split against the sha256 the meta recorded when it was written:
    a changed value anywhere fails, not only in the videos re-extracted below. The content digest,
    which checkpoints and results cite, is recomputed from those records, not read."""
    recomputed = content_digest(meta)
    report.check(
        "content sha256",
        recomputed == meta.get("content_sha256"),
        f"{recomputed[:12]} recomputed, the meta records {str(meta.get('content_sha256'))[:12]}",
    )
    for split in meta["counts"]:
        recorded = meta.get("files", {}).get(split)
        if not recorded:
            report.check(f"{split} file sha256", False, "the meta records no file digests for this split")
            continue
        changed = [name for name, _ in changed_split_files(cache_dir, split, meta, trust_checked=False)[0]]
        report.check(
            f"{split} file sha256",
            not changed,
            f"{len(recorded)} files" + (f"; changed or missing: {', '.join(changed)}" if changed else ""),
        )


def check_video_fingerprints(args, meta, video_files, report):
    """The video files must be the ones each split was extracted from (size, first and last MiB)."""
    for split in meta["counts"]:
        recorded_path = args.cache / split / VIDEO_FILES
        if not recorded_path.exists():
            report.check(f"{split} video files unchanged", False, f"{recorded_path} missing")
            continue
        recorded = json.loads(recorded_path.read_text())
        difference = fingerprint_difference(recorded, fingerprint_videos(list(recorded), video_files, args.videos))
        report.check(f"{split} video files unchanged", difference is None, difference or f"{len(recorded)} videos")


def check_split_files(cache_dir, split, cache, contract, report):
    annotation_format = contract["annotations"][split]["format"]
    n_videos, n_captions = len(cache.video_ids), len(cache.captions)
    offsets_ok = (
        len(cache.video_offsets) == n_videos + 1
        and cache.video_offsets[0] == 0
        and cache.video_offsets[-1] == len(cache.video_feats)
        and np.all(np.diff(cache.video_offsets) > 0)
    )
    report.check(f"{split} video offsets", offsets_ok, f"{n_videos} videos, {len(cache.video_feats)} frames")
    # at least start and end token, or none for a backbone without token features (SigLIP)
    fewest_tokens = 2 if contract["backbone"]["token_features"] else 0
    tokens_ok = (
        len(cache.text_token_offsets) == n_captions + 1
        and cache.text_token_offsets[-1] == len(cache.text_token_feats)
        and np.all(np.diff(cache.text_token_offsets) >= fewest_tokens)
        and (fewest_tokens or len(cache.text_token_feats) == 0)
    )
    report.check(
        f"{split} captions embedded",
        len(cache.text_feats) == n_captions
        and tokens_ok
        and [c["row"] for c in cache.captions] == list(range(n_captions)),
        f"{n_captions} captions, {len(cache.text_feats)} pooled rows, {len(cache.text_token_feats)} token rows",
    )
    for name in ("video_feats", "text_feats", "text_token_feats"):
        array = getattr(cache, name)
        finite = bool(np.isfinite(array).all())
        report.check(f"{split} {name} finite", finite, f"{array.shape} {array.dtype}")
    for setting, rule in FORMATS[annotation_format].pair_settings(split).items():
        name = pairs_path(cache_dir, split, setting).name
        if not pairs_path(cache_dir, split, setting).exists():
            report.check(f"{split} {name}", False, "missing")
            continue
        pairs = read_pairs(cache_dir, split, setting)
        ok = all(
            0 <= p["caption_row"] < n_captions
            and 0 <= p["video_row"] < n_videos
            and cache.captions[p["caption_row"]]["video_id"] == cache.video_ids[p["video_row"]] == p["video_id"]
            for p in pairs
        )
        may_be_empty = rule.on_request  # a file may give no rewrites
        report.check(f"{split} {name}", ok and (len(pairs) > 0 or may_be_empty), f"{len(pairs)} pairs")


def check_reextraction(args, spec, splits, backbone, video_files, reversed_files, report):
    """Re-extract a seeded sample of videos; compare with the cache (and reversed files with flip)."""
    population = [(split, row) for split, cache in splits.items() for row in range(len(cache.video_ids))]
    sample = random.Random(args.seed).sample(population, min(args.n_videos, len(population)))
    same, flipped, aligned = [], [], []
    for split, row in sample:
        video_id = splits[split].video_ids[row]
        cached = np.asarray(splits[split].frames(row), dtype=np.float32)
        path = video_files.get(video_id, args.videos / f"{video_id}.*")
        fresh = extract_one(video_id, path, spec, backbone)
        same.append((video_id, compare(fresh, cached)))
        if video_id in reversed_files:
            reversed_feats = extract_one(video_id, reversed_files[video_id], spec, backbone)
            flipped.append((video_id, compare(reversed_feats, cached[::-1])))
            aligned.append((video_id, misaligned_share(reversed_feats, path, spec, backbone)))
    summarise(report, "re-extraction = cache", same, args)
    if args.reversed_videos:
        summarise(report, "reversed file = flip(cache)", flipped, args)
        summarise_alignment(report, aligned, args)


def misaligned_share(reversed_feats, path, spec, backbone):
    """The share of the reversed file's frames nearer a neighbour of their mirror frame than the
    mirror frame itself (half the distance or less): a reversal one frame off matches its
    neighbours exactly, a correct lossy one matches its mirror frames best. A neighbour clipped at
    the video's ends is the frame itself, so it is no evidence; and a mirror frame matched to within
    float noise is aligned whatever its neighbours give. Or an error string."""
    if isinstance(reversed_feats, str):
        return reversed_feats
    try:
        around = {
            offset: (np.array(indices), encode(backbone, spec, frames))
            for offset, (indices, frames) in sampled_neighbourhood(path, spec).items()
        }
    except VideoError as err:
        return str(err)
    mirrored = reversed_feats[::-1]  # row j now stands beside original frame j
    own_indices, own_feats = around[0]
    if mirrored.shape != own_feats.shape:
        return f"shape {mirrored.shape} vs {own_feats.shape}"
    own_distance = 1 - cosine(mirrored, own_feats)
    nearer_a_neighbour = np.zeros(len(mirrored), dtype=bool)
    for offset in (-1, 1):
        indices, feats = around[offset]
        nearer_a_neighbour |= (
            (indices != own_indices) & (1 - cosine(mirrored, feats) < 0.5 * own_distance) & (own_distance > NOISE_FLOOR)
        )
    return float(nearer_a_neighbour.mean())


def summarise_alignment(report, aligned, args):
    if not aligned:
        report.check("reversed file aligned", False, "no reversed file compared")
        return
    failing = [
        (video_id, result if isinstance(result, str) else f"{result:.0%} of its frames nearer a neighbour")
        for video_id, result in aligned
        if isinstance(result, str) or not result <= args.max_misaligned
    ]
    worst = max((result for _, result in aligned if not isinstance(result, str)), default=float("nan"))
    report.check(
        "reversed file aligned",
        not failing,
        f"{len(aligned)} videos; at most {worst:.0%} of a video's frames nearer a neighbour than their mirror frame"
        + failing_videos(failing, len(aligned)),
    )


def failing_videos(failing, n_compared):
    """ "; FAIL for 3 of 20 videos: a (why), b (why), c (why)", the first few named, or ""."""
    if not failing:
        return ""
    named = ", ".join(f"{video_id} ({why})" for video_id, why in failing[:FAILURES_NAMED])
    more = f" and {len(failing) - FAILURES_NAMED} more" if len(failing) > FAILURES_NAMED else ""
    return f"; FAIL for {len(failing)} of {n_compared} videos: {named}{more}"


def extract_one(video_id, path, spec, backbone):
    decoded = decode_and_crop((video_id, str(path), spec))
    if decoded.failure:
        return decoded.failure
    return backbone.encode_crops([decoded.crops]).astype(np.float32)


def encode(backbone, spec, frames_bgr):
    return backbone.encode_crops([resize_crop(frames_bgr, spec.size, rule=spec.pixels).numpy()]).astype(np.float32)


def cosine(a, b):
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def compare(fresh, cached):
    """(max abs diff, max abs diff / max abs cached value, min cosine per frame), or an error string."""
    if isinstance(fresh, str):
        return fresh
    if fresh.shape != cached.shape:
        return f"shape {fresh.shape} vs cached {cached.shape}"
    if not (np.isfinite(fresh).all() and np.isfinite(cached).all()):
        return "NaN or Inf in the " + ("cached" if np.isfinite(fresh).all() else "fresh") + " features"
    max_diff = float(np.abs(fresh - cached).max())
    return max_diff, max_diff / max(float(np.abs(cached).max()), 1e-12), float(cosine(fresh, cached).min())


def summarise(report, name, results, args):
    if not results:
        report.check(name, False, "no videos compared")
        return
    measured = [result for _, result in results if not isinstance(result, str)]
    out_of_tolerance = [
        (video_id, result)
        for video_id, result in results
        if not isinstance(result, str) and not (result[1] <= args.rel_tol and result[2] >= args.min_cosine)  # NaN fails
    ]
    failing = [(video_id, result) for video_id, result in results if isinstance(result, str)] + [
        (video_id, f"{result[1]:.2%}, cosine {result[2]:.6f}") for video_id, result in out_of_tolerance
    ]
    detail = f"{len(results)} videos"
    if measured:  # numpy's max and min keep a NaN; Python's skip it
        max_diff, max_rel = np.max([r[0] for r in measured]), np.max([r[1] for r in measured])
        detail += f"; of the {len(measured)} compared, max abs diff {max_diff:.3g} ({max_rel:.2%} of max value), "
        detail += f"min cosine {np.min([r[2] for r in measured]):.6f}"
    detail += failing_videos(failing, len(results))
    unlike = [video_id for video_id, result in out_of_tolerance if not result[2] >= NOT_A_REVERSAL_COSINE]
    if unlike:  # no codec does this: the tolerance is not what to change
        detail += (
            f". {len(unlike)} of them are no reversal of their original (a frame's cosine below "
            f"{NOT_A_REVERSAL_COSINE}, where lossy re-encodings measured 0.9997 or more and other footage 0.83 "
            f"or less: docs/verify.md): a swapped or wrong file in --reversed-videos? Check {unlike[0]!r}"
        )
    if len(unlike) < len(out_of_tolerance):
        detail += ". " + (
            TOLERANCE_NOTE.format(clip=args.clip) if args.clip else TOLERANCE_NOTE_OTHER.format(backbone=args.backbone)
        )
    report.check(name, not failing, detail)


if __name__ == "__main__":
    cli.run(main)
