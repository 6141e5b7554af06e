"""Decode every video once, run the frozen backbone (CLIP) once, write the feature cache.

    python extract.py --annotations DIR --videos DIR --clip ViT-B-32.pt --out cache/
    python extract.py ... --backbone hf:siglip-base-patch16-224/ --out cache_siglip/   (backbones/)
    torchrun --nproc_per_node=4 extract.py ...      (same cache, byte for byte, on the same GPU type)

Work is cut into fixed chunks (--batch-videos videos, --text-batch captions) that do not depend on
the number of processes; chunk c goes to rank c % world_size, each rank writes finished chunks to
OUT/{split}/parts/, and rank 0 merges them in chunk order. A killed or interrupted run, rerun with
the same arguments, keeps its finished chunks. A rerun checks every video file against the
fingerprint recorded at extraction, and every finished split against its recorded counts, so a
changed input is never mistaken for a finished cache. docs/cache.md describes the output; the
annotation formats and the files each reads are corpus/annotations.py's. Exit codes: infra/cli.py.
"""

import argparse
import collections
import contextlib
import json
import math
import multiprocessing
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import torch

import backbones
import clip_vendor
from corpus.annotations import (
    FORMATS,
    SPLITS,
    AnnotationError,
    check_disjoint_splits,
    load_split,
    present_splits,
    sources_entry,
    split_captions,
)
from corpus.feature_cache import (
    PARTS_DIR,
    SETUP,
    VIDEO_FILES,
    check_split_counts,
    content_digest,
    merge_split,
    open_cache_meta,
    read_timings,
    record_timing,
    storable_rows,
    text_part_path,
    video_part_path,
    write_meta,
    write_text_part,
    write_video_part,
)
from corpus.sampling import SAMPLING_RULE
from corpus.video_frames import (
    DECODERS,
    DecodeSpec,
    VideoError,
    decode_and_crop,
    decoder_contract,
    fingerprint_difference,
    fingerprint_videos,
    index_video_files,
    init_decode_worker,
)
from infra import cli
from infra.cli import HelpFormatter, StageError, whole_number
from infra.file_io import atomic_write_json, exclusive_folder
from infra.runtime import (
    Progress,
    code_version,
    device_name,
    fix_cpu_threads,
    flag_settings,
    process_seconds,
    setup_runtime,
)

CACHE_FORMAT_VERSION = 4  # 3: the meta carries its own digest (meta_sha256); 4: the backbone entry
INTERRUPTED = "interrupted; finished chunks kept; rerun the same command to resume"


parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
add = parser.add_argument
add(
    "--annotations",
    required=True,
    type=Path,
    help="folder with the annotation files: {split}.json, or MSR-VTT's files as CLIP4Clip distributes them",
)
add("--videos", required=True, type=Path, help="folder with one file per video, named {video_id}.{ext}")
add("--clip", type=Path, help="OpenAI CLIP checkpoint (TorchScript archive or state dict): the default backbone")
add(
    "--backbone",
    help="instead of --clip: KIND:PATH, e.g. hf:FOLDER (a Hugging Face CLIP or SigLIP folder); see docs/backbones.md",
)
add("--out", required=True, type=Path, help="cache folder to create or resume")
add("--splits", nargs="+", choices=SPLITS, help="splits to extract (default: each whose files are there)")
add("--format", default="auto", choices=["auto", *FORMATS], help="annotation format (corpus/annotations.py)")
add("--fps", type=float, default=1.0, help="frame candidates per second of video")
add("--t-max", type=whole_number(2), default=24, help="most frames kept per video (at least 2)")
add(
    "--decoder",
    default="opencv",
    choices=DECODERS,
    help="opencv (PyAV for what it cannot decode, e.g. AV1), pyav, or pyav-seek (seek to kept frames)",
)
add(
    "--accept-concealed-errors",
    action="store_true",
    help="keep videos whose decoding errors FFmpeg concealed (damaged files); by default they fail",
)
add(
    "--dataset",
    help="the dataset's name in reports (default: the format's, as RTime or MSR-VTT, else the annotation folder's)",
)
add("--device", default="auto", help="auto (cuda if available), cuda or cpu; under torchrun cuda:LOCAL_RANK")
add(
    "--dtype",
    default="auto",
    choices=["auto", *clip_vendor.DTYPES],
    help="the backbone's precision; auto: fp16 on cuda, fp32 on cpu",
)
add(
    "--batch-videos",
    type=whole_number(1),
    default=32,
    help="videos per backbone forward (fixed chunks: part of the contract)",
)
add("--text-batch", type=whole_number(1), default=512, help="captions per backbone forward (part of the contract)")
add(
    "--context-length",
    type=int,
    help="text positions (default and most: the model's, 77 for CLIP); longer captions are cut (counted) or "
    "windowed, see --long-text",
)
add(
    "--long-text",
    default="truncate",
    choices=clip_vendor.LONG_TEXT,
    help="a caption over --context-length tokens: truncate (as CLIP4Clip) or windows (mean of its windows' embeddings)",
)
add(
    "--paragraphs",
    action="store_true",
    help="generic files: one caption per video, its sentences joined (ActivityNet, DiDeMo paragraph retrieval)",
)
add(
    "--workers",
    type=whole_number(0),
    default=None,
    help="decode processes per rank (default: cores / local ranks - 1; 0: none)",
)
add("--decode-ahead", type=whole_number(0), default=4, help="chunks decoded ahead of the one the backbone is encoding")
add(
    "--on-error", default="fail", choices=["fail", "skip"], help="a bad video stops the run, or is recorded and dropped"
)


# may differ between the nodes of one job: paths each mounts where it likes (the contract compares their
# contents by sha256) and each machine's own resources
PER_NODE_FLAGS = ("annotations", "videos", "clip", "backbone", "out", "workers", "decode_ahead", "device")


@dataclass(frozen=True)
class Plan:
    """The settings every chunk of the work follows, read once from the command line."""

    out: Path
    videos: Path
    spec: DecodeSpec
    batch_videos: int
    text_batch: int
    context_length: int
    long_text: str
    decode_ahead: int
    on_error: str


def main(argv=None):
    args = parser.parse_args(argv)
    check_arguments(args)
    runtime = setup_runtime(args.device)
    cpu_threads = fix_cpu_threads(runtime.device)
    dtype_name = args.dtype if args.dtype != "auto" else ("fp16" if runtime.device.startswith("cuda") else "fp32")
    annotations = read_annotations(args)
    video_folder = index_video_files(args.videos)  # before anything is written: a bad folder stops here
    backbone = backbones.load_flagged(args, runtime.device, clip_vendor.DTYPES[dtype_name])
    positions = backbone.contract["context_length"]
    args.context_length = positions if args.context_length is None else args.context_length
    if not 2 <= args.context_length <= positions:
        raise StageError(
            f"--context-length {args.context_length}: {backbone.source} has {positions} text positions; use 2 to that"
        )
    if args.long_text != "truncate" and backbone.contract["kind"] != "openai":
        raise StageError(f"--long-text {args.long_text}: supported for OpenAI CLIP (--clip) only; use truncate")
    plan = Plan(
        args.out,
        args.videos,
        DecodeSpec(args.fps, args.t_max, backbone.size, args.decoder, args.accept_concealed_errors, backbone.pixels),
        args.batch_videos,
        args.text_batch,
        args.context_length,
        args.long_text,
        args.decode_ahead,
        args.on_error,
    )
    contract = build_contract(args, plan.spec, annotations, backbone, runtime.device, dtype_name, cpu_threads)
    # before any work, every rank compares what defines the job: the flags, the code, and the contract
    # (the backbone's and the annotations' sha256 among the rest); a difference stops them all
    runtime.agree({"code version": code_version(), **flag_settings(args, PER_NODE_FLAGS), "contract": contract})
    with exclusive_folder(args.out) if runtime.master else contextlib.nullcontext():
        runtime.barrier()  # no rank writes before rank 0 holds the folder
        runtime.check_shared_folder(args.out)  # several machines: every rank writes where rank 0 merges
        extract(args, plan, annotations, contract, backbone, video_folder, runtime)
    runtime.finish()


def check_arguments(args):
    """Refuse values no extraction could honour, before any work, naming the flag."""
    if (args.clip is None) == (args.backbone is None):
        parser.error("give one backbone: --clip FILE or --backbone KIND:PATH (--clip: an OpenAI CLIP checkpoint)")
    if not (math.isfinite(args.fps) and args.fps > 0):
        parser.error(f"--fps {args.fps}: frame candidates per second must be a positive number")


def dataset_name(args, annotations):
    """What reports call the dataset: --dataset, else the name its format gives (RTime, MSR-VTT),
    else the annotation folder's name (its parent's, when the folder is just called "annotations")."""
    if args.dataset:
        return args.dataset
    named = [FORMATS[annotation_format].dataset_name for annotation_format, _ in annotations.values()]
    if any(named):
        return next(name for name in named if name)
    folder = args.annotations.resolve()
    return folder.parent.name if folder.name.lower() in ("annotations", "annotation", "anno") else folder.name


def read_annotations(args):
    """{split: (format, records)} of the splits to extract; every split present is read, so that a
    video id in two splits is refused even when only one is extracted."""
    present = present_splits(args.annotations)
    splits = args.splits or present
    if not splits:
        raise AnnotationError(
            f"no annotation files in {args.annotations}: train.json, valid.json, test.json, or MSR-VTT's "
            "MSRVTT_data.json with its CSV files"
        )
    loaded = {
        split: load_split(args.annotations, split, args.format, args.paragraphs)
        for split in SPLITS
        if split in present or split in splits
    }
    check_disjoint_splits(
        {
            split: (" + ".join(map(str, FORMATS[annotation_format].sources(args.annotations, split))), records)
            for split, (annotation_format, records) in loaded.items()
        }
    )
    return {split: loaded[split] for split in splits}


def extract(args, plan, annotations, contract, backbone, video_folder, runtime):
    recorded = {
        "git_commit": git_commit(),
        "backbone_source": backbone.source,
        "dataset": dataset_name(args, annotations),
        "environment": {"torch": torch.__version__, "opencv": cv2.__version__, "numpy": np.__version__},
    }
    meta = open_cache_meta(args.out, contract, recorded, write=runtime.master)
    runtime.log(
        f"extracting {', '.join(annotations)} with {backbone.source} on {runtime.device} in "
        f"{contract['compute']['dtype']}, {runtime.world_size} process(es), {args.fps} fps, t_max {args.t_max}"
    )
    if video_folder.ignored:
        runtime.log(
            f"ignored {len(video_folder.ignored)} file(s) beside their video that are not videos: "
            + ", ".join(path.name for path in video_folder.ignored[:5])
            + (" ..." if len(video_folder.ignored) > 5 else "")
        )
    if runtime.master:
        for split, (_, records) in annotations.items():
            check_video_files(args, split, records, video_folder.files, meta)
    runtime.barrier()
    todo = [split for split in annotations if split not in meta["counts"]]
    workers = (
        args.workers if args.workers is not None else max(1, (os.cpu_count() or 1) // runtime.local_world_size - 1)
    )
    pool = multiprocessing.get_context("spawn").Pool(workers, init_decode_worker) if workers > 0 and todo else None
    if runtime.master and todo:  # start-up, the backbone, annotations, the video index: a cost beside the splits'
        record_setup(args.out, runtime)
    with pool or contextlib.nullcontext():  # leaving the block (an error, Ctrl-C) stops the workers
        for split in todo:
            format_name, records = annotations[split]
            captions = split_captions(records)
            started = time.time()
            extract_videos(plan, split, records, video_folder.files, backbone, pool, runtime)
            extract_texts(plan, split, captions, backbone, runtime)
            runtime.barrier()
            if runtime.master:
                meta = merge_split(args.out, split, format_name, records, captions, meta)
                record_timing(args.out, split, extraction_cost(time.time() - started, runtime, meta["counts"][split]))
                log_merged(args, split, meta, runtime)
            runtime.barrier()
    if runtime.master:
        meta["complete"] = True
        meta["content_sha256"] = content_digest(meta)
        meta = write_meta(args.out, meta)
        runtime.log(f"cache complete: {args.out} (content sha256 {meta['content_sha256'][:12]})")


def record_setup(cache_dir, runtime):
    """This process's set-up time, added to what earlier processes of a resumed extraction spent."""
    earlier = read_timings(cache_dir).get(SETUP, {})
    seconds = earlier.get("seconds", 0.0) + process_seconds()
    record_timing(
        cache_dir,
        SETUP,
        {"seconds": round(seconds, 3), "device": device_name(runtime.device), "starts": earlier.get("starts", 0) + 1},
    )


def extraction_cost(seconds, runtime, counts):
    return {
        "seconds": round(seconds, 3),
        "device": device_name(runtime.device),
        "processes": runtime.world_size,
        "videos": counts["videos"] + counts["failed_videos"],
        "frames": counts["frames"],
    }


def log_merged(args, split, meta, runtime):
    counts = meta["counts"][split]
    runtime.log(
        f"[{split}] merged: {counts}"
        + (f"; {counts['failed_videos']} failed, see failed_videos.json" if counts["failed_videos"] else "")
    )
    if counts["videos"] == 0:
        runtime.log(f"[{split}] WARNING: every video of {split} failed; no stage can use this split")
    if counts["truncated_captions"]:
        runtime.log(
            f"[{split}] {counts['truncated_captions']} captions were longer than {args.context_length} tokens "
            "and were cut (counted in the meta; --long-text windows reads them whole)"
        )


def build_contract(args, spec, annotations, backbone, device, dtype_name, cpu_threads):
    """Everything the cached numbers depend on; a resumed run must match it field for field."""
    return {
        "format_version": CACHE_FORMAT_VERSION,
        "backbone": backbone.contract,
        "tokenizer": backbone.describe_tokenizer(args.context_length, args.long_text),
        "preprocessing": backbone.describe_pixels(),
        "sampling": {
            "fps": args.fps,
            "t_max": args.t_max,
            "rule": SAMPLING_RULE,
            "decoder": decoder_contract(spec),
        },
        "compute": {
            "device_type": torch.device(device).type,
            "dtype": dtype_name,
            "cpu_threads": cpu_threads,
            "batch_videos": args.batch_videos,
            "text_batch": args.text_batch,
        },
        "storage_dtype": "float16",
        "on_error": args.on_error,
        "annotations": {
            split: annotation_entry(args.annotations, split, annotation_format, args.paragraphs)
            for split, (annotation_format, _) in annotations.items()
        },
    }


def annotation_entry(folder, split, annotation_format, paragraphs):
    """What the contract records of a split's annotation files: their names, format and sha256."""
    sources = sources_entry(folder, split, annotation_format)
    return {"file": sources["file"], "format": annotation_format, "paragraphs": paragraphs, "sha256": sources["sha256"]}


def check_video_files(args, split, records, video_files, meta):
    """Rank 0: the video files must be those the split was extracted from (recorded on its first
    run), and a split the meta calls complete must still have all its files with their counts."""
    current = fingerprint_videos([record.video_id for record in records], video_files, args.videos)
    recorded_path = args.out / split / VIDEO_FILES
    if recorded_path.exists():
        difference = fingerprint_difference(json.loads(recorded_path.read_text()), current)
        if difference:
            raise StageError(
                f"refusing to reuse {args.out / split}: {difference} (in {args.videos}). The cache was extracted "
                "from other video files: use a new --out, or restore the files."
            )
    else:
        recorded_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(recorded_path, current)
    if split in meta["counts"]:
        check_split_counts(args.out, split, meta["counts"][split])
        shutil.rmtree(args.out / split / PARTS_DIR, ignore_errors=True)  # left if a kill came just after the merge
        print(f"[{split}] already complete: {meta['counts'][split]}", flush=True)
    else:
        (args.out / split / PARTS_DIR).mkdir(exist_ok=True)


def git_commit():
    """The project's commit (recorded, not compared: a docs change must not void a cache)."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def chunks_to_do(n_items, chunk_size, part_path, label, runtime):
    """The fixed chunks (index, start, stop) this rank owns whose part file `part_path(index)` is
    not written yet (a resumed run keeps the rest), and a progress line over their items."""
    n_chunks = (n_items + chunk_size - 1) // chunk_size
    chunks = [
        (c, c * chunk_size, min(n_items, (c + 1) * chunk_size))
        for c in range(runtime.rank, n_chunks, runtime.world_size)
        if not part_path(c).exists()
    ]
    label += " (this rank's share)" if runtime.world_size > 1 else ""
    return chunks, Progress(label, sum(stop - start for _, start, stop in chunks), runtime.log)


def extract_videos(plan, split, records, video_files, backbone, pool, runtime):
    chunks, progress = chunks_to_do(
        len(records), plan.batch_videos, partial(video_part_path, plan.out, split), f"[{split}] videos", runtime
    )

    def submit(start, stop):
        tasks = [
            (record.video_id, str(video_files.get(record.video_id, plan.videos / f"{record.video_id}.*")), plan.spec)
            for record in records[start:stop]
        ]
        if pool is None:
            return [decode_and_crop(task) for task in tasks]
        return pool.map_async(decode_and_crop, tasks, chunksize=1)

    def finish(chunk_index, decoded):
        decoded = decoded if pool is None else decoded.get()
        for video in decoded:
            if video.fallback:  # one line each: which file another decoder decoded, and why
                print(f"[{split}] {video.video_id}: {video.fallback}; decoded with PyAV", flush=True)
        n_frames = encode_video_chunk(video_part_path(plan.out, split, chunk_index), decoded, backbone, plan.on_error)
        progress.update(len(decoded), frames=n_frames)

    pending = collections.deque()  # chunks the pool decodes while the backbone runs on the oldest
    for chunk_index, start, stop in chunks:
        pending.append((chunk_index, submit(start, stop)))
        if len(pending) > plan.decode_ahead:
            finish(*pending.popleft())
    while pending:
        finish(*pending.popleft())


def encode_video_chunk(part_path, decoded, backbone, on_error):
    """The backbone over one chunk's frames (decoded: DecodedVideo per video); writes the part file.
    Returns the number of frames encoded."""
    failures = [video for video in decoded if video.failure is not None]
    if failures and on_error == "fail":
        raise VideoError(
            f"video {failures[0].video_id!r} failed ({failures[0].failure}); to record bad videos in "
            "failed_videos.json and leave them out, rerun with --on-error skip and a new --out (the setting is "
            "part of the cache's contract)"
        )
    frame_counts = [0 if video.failure else len(video.crops) for video in decoded]
    frame_feats = backbone.encode_crops([video.crops for video in decoded if video.failure is None])
    bad_rows = ~storable_rows(frame_feats)
    if bad_rows.any():
        owner = np.repeat([video.video_id for video in decoded], frame_counts)
        bad = sorted(set(owner[bad_rows].tolist()))
        raise StageError(
            f"{backbone.source} gave features for video(s) {', '.join(bad)} that are NaN or Inf, or too large for "
            "the cache's fp16 (past 65504); nothing of their chunk was written (a broken checkpoint, or a dtype that "
            "overflows: try --dtype fp32)"
        )
    write_video_part(part_path, decoded, frame_counts, frame_feats)
    return len(frame_feats)


def extract_texts(plan, split, captions, backbone, runtime):
    chunks, progress = chunks_to_do(
        len(captions), plan.text_batch, partial(text_part_path, plan.out, split), f"[{split}] captions", runtime
    )
    for chunk_index, start, stop in chunks:
        texts = [caption.text for caption in captions[start:stop]]
        pooled, token_feats = backbone.encode_texts(texts, plan.context_length, plan.long_text)
        # what is written: fp16, so a value past its range is checked as the Inf it would be stored as
        pooled_stored = pooled.to(torch.float16).cpu().numpy()
        tokens_stored = torch.cat(token_feats).to(torch.float16).cpu().numpy()
        token_counts = np.array([len(tokens) for tokens in token_feats])
        token_owner = np.repeat(np.arange(len(texts)), token_counts)  # each token row's caption (none: no rows)
        bad_tokens = np.bincount(token_owner[~storable_rows(tokens_stored)], minlength=len(texts))
        finite = storable_rows(pooled_stored) & (bad_tokens == 0)
        if not finite.all():
            bad = [caption.caption_id for caption, ok in zip(captions[start:stop], finite, strict=True) if not ok]
            raise StageError(
                f"{backbone.source} gave features for caption(s) {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''} "
                "that are NaN or Inf, or too large for the cache's fp16 (past 65504); nothing of their chunk was "
                "written"
            )
        # Windows read a long caption whole; only truncation cuts one.
        truncated = (np.array(backbone.token_lengths(texts)) > plan.context_length) & (plan.long_text == "truncate")
        write_text_part(
            text_part_path(plan.out, split, chunk_index), pooled_stored, tokens_stored, token_counts, truncated
        )
        progress.update(stop - start)


if __name__ == "__main__":
    cli.run(main, INTERRUPTED)
