"""Decode every video once, run frozen CLIP once, write the feature cache.

    python extract.py --annotations DIR --videos DIR --clip ViT-B-32.pt --out cache/
    torchrun --nproc_per_node=4 extract.py ...      (same cache, byte for byte, on the same GPU type)

Work is cut into fixed chunks (--batch-videos videos, --text-batch captions) that do not depend on
the number of processes; chunk c goes to rank c % world_size, each rank writes finished chunks to
OUT/{split}/parts/, and rank 0 merges them in chunk order. A killed run, rerun with the same
arguments, keeps its finished chunks. The README's "Cache layout" describes the output.
"""

import argparse
import collections
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

import clip_vendor
from annotations import AnnotationError, load_split, pair_lists, split_captions
from clip_vendor.tokenizer import VOCAB_PATH
from feature_cache import (
    CAPTIONS,
    FAILED_VIDEOS_NAME,
    META_NAME,
    PAIR_COLUMNS,
    PARTS_DIR,
    TEXT_FEATS,
    TEXT_TOKEN_FEATS,
    TEXT_TOKEN_OFFSETS,
    VIDEO_FEATS,
    VIDEO_IDS,
    VIDEO_OFFSETS,
    contract_mismatch,
    pair_file,
)
from file_io import (
    atomic_write_csv,
    atomic_write_json,
    atomic_write_lines,
    atomic_write_npy,
    atomic_write_npy_blocks,
    atomic_write_npz,
    file_sha256,
    remove_stale_temporaries,
)
from runtime import Progress, setup_runtime
from sampling import SAMPLING_RULE
from video_frames import DecodeSpec, decode_and_crop, index_video_files, init_decode_worker

CACHE_FORMAT_VERSION = 1


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """--help keeps the docstring's layout and shows every default."""


parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
parser.add_argument("--annotations", required=True, type=Path, help="folder with {split}.json annotation files")
parser.add_argument("--videos", required=True, type=Path, help="folder with one file per video, named {video_id}.{ext}")
parser.add_argument(
    "--clip", required=True, type=Path, help="OpenAI CLIP checkpoint (TorchScript archive or state dict)"
)
parser.add_argument("--out", required=True, type=Path, help="cache folder to create or resume")
parser.add_argument(
    "--splits",
    nargs="+",
    default=None,
    help="splits to extract (default: each of train, valid, test that has a {split}.json)",
)
parser.add_argument("--format", default="auto", choices=["auto", "rtime", "generic"], help="annotation format")
parser.add_argument("--fps", type=float, default=1.0, help="frame candidates per second of video")
parser.add_argument("--t-max", type=int, default=24, help="most frames kept per video (at least 2)")
parser.add_argument(
    "--device",
    default="auto",
    help="where CLIP runs: auto (cuda if available), cuda or cpu; under torchrun each rank takes cuda:LOCAL_RANK",
)
parser.add_argument(
    "--dtype",
    default="auto",
    choices=["auto", *clip_vendor.DTYPES],
    help="CLIP's compute precision; auto = fp16 on cuda, fp32 on cpu (printed and recorded in the meta)",
)
parser.add_argument(
    "--batch-videos", type=int, default=32, help="videos per CLIP forward (fixed chunks: part of the contract)"
)
parser.add_argument("--text-batch", type=int, default=512, help="captions per CLIP forward (part of the contract)")
parser.add_argument("--context-length", type=int, default=77, help="text positions; longer captions are truncated")
parser.add_argument(
    "--workers",
    type=int,
    default=None,
    help="decode processes per rank (default: cores / local ranks - 1; 0 decodes in this process)",
)
parser.add_argument("--decode-ahead", type=int, default=4, help="chunks decoded ahead of the one CLIP is encoding")
parser.add_argument(
    "--on-error",
    default="fail",
    choices=["fail", "skip"],
    help="a bad video stops the run (fail) or is recorded in failed_videos.json and dropped (skip)",
)


@dataclass(frozen=True)
class Plan:
    """The settings every chunk of the work follows, read once from the command line."""

    out: Path
    videos: Path
    spec: DecodeSpec
    batch_videos: int
    text_batch: int
    context_length: int
    decode_ahead: int
    on_error: str


def main(argv=None):
    args = parser.parse_args(argv)
    if args.t_max < 2:
        parser.error("--t-max must be at least 2 (mirror-symmetric sampling may need two middle frames)")
    runtime = setup_runtime(args.device)
    dtype_name = args.dtype if args.dtype != "auto" else ("fp16" if runtime.device.startswith("cuda") else "fp32")

    splits = args.splits or [s for s in ("train", "valid", "test") if (args.annotations / f"{s}.json").exists()]
    if not splits:
        sys.exit(f"no train.json, valid.json or test.json in {args.annotations}")
    try:
        annotations = {split: load_split(args.annotations / f"{split}.json", args.format) for split in splits}
    except AnnotationError as err:
        sys.exit(str(err))
    model, preprocess = clip_vendor.load(args.clip, device=runtime.device, dtype=clip_vendor.DTYPES[dtype_name])
    plan = Plan(
        args.out,
        args.videos,
        DecodeSpec(args.fps, args.t_max, preprocess.size),
        args.batch_videos,
        args.text_batch,
        args.context_length,
        args.decode_ahead,
        args.on_error,
    )
    contract = build_contract(args, splits, annotations, model, preprocess, runtime.device, dtype_name)
    meta = open_cache(args.out, contract, runtime.master)
    runtime.log(
        f"extracting {', '.join(splits)} with {args.clip.name} on {runtime.device} in {dtype_name}, "
        f"{runtime.world_size} process(es), {args.fps} fps, t_max {args.t_max}"
    )

    for split in splits:
        if split in meta["counts"]:
            runtime.log(f"[{split}] already complete: {meta['counts'][split]}")
    todo = [split for split in splits if split not in meta["counts"]]
    video_files = index_video_files(args.videos)
    workers = (
        args.workers if args.workers is not None else max(1, (os.cpu_count() or 1) // runtime.local_world_size - 1)
    )
    pool = multiprocessing.get_context("spawn").Pool(workers, init_decode_worker) if workers > 0 and todo else None
    try:
        for split in todo:
            (args.out / split / PARTS_DIR).mkdir(parents=True, exist_ok=True)
            format_name, records = annotations[split]
            captions = split_captions(records)
            extract_videos(plan, split, records, video_files, model, pool, runtime)
            extract_texts(plan, split, captions, model, runtime)
            runtime.barrier()
            if runtime.master:
                meta = merge_split(args.out, split, format_name, records, captions, meta, runtime.log)
            runtime.barrier()
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    if runtime.master:
        meta["complete"] = True
        atomic_write_json(args.out / META_NAME, meta)
        runtime.log(f"cache complete: {args.out}")
    runtime.finish()


def build_contract(args, splits, annotations, model, preprocess, device, dtype_name):
    """Everything the cached numbers depend on; a resumed run must match it field for field."""
    return {
        "format_version": CACHE_FORMAT_VERSION,
        "clip": {"file": args.clip.name, "sha256": file_sha256(args.clip), "config": asdict(model.config)},
        "tokenizer": {"vocab_sha256": file_sha256(VOCAB_PATH), "context_length": args.context_length, "truncate": True},
        "preprocessing": preprocess.describe(),
        "sampling": {"fps": args.fps, "t_max": args.t_max, "rule": SAMPLING_RULE, "decoder": "OpenCV, sequential"},
        "compute": {
            "device_type": torch.device(device).type,
            "dtype": dtype_name,
            "batch_videos": args.batch_videos,
            "text_batch": args.text_batch,
        },
        "storage_dtype": "float16",
        "on_error": args.on_error,
        "annotations": {
            split: {
                "file": f"{split}.json",
                "format": annotations[split][0],
                "sha256": file_sha256(args.annotations / f"{split}.json"),
            }
            for split in splits
        },
    }


def open_cache(out_dir, contract, master):
    """Create the cache's meta, or check a resumed one against this run's contract."""
    meta_path = out_dir / META_NAME
    if meta_path.exists():
        meta = json.loads(meta_path.read_text())
        mismatch = contract_mismatch(meta["contract"], contract)
        if mismatch:
            sys.exit(
                f"refusing to write into {out_dir}: its {META_NAME} differs in {mismatch}. "
                "Use a new --out, or delete the old cache."
            )
        return meta
    meta = {
        "contract": contract,
        "counts": {},
        "complete": False,
        "git_commit": git_commit(),
        "environment": {"torch": torch.__version__, "opencv": cv2.__version__, "numpy": np.__version__},
    }
    if master:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(meta_path, meta)
    return meta


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


def my_chunks(n_items, chunk_size, runtime):
    """(chunk index, start, stop) of the fixed chunks this rank owns."""
    n_chunks = (n_items + chunk_size - 1) // chunk_size
    return [
        (c, c * chunk_size, min(n_items, (c + 1) * chunk_size))
        for c in range(runtime.rank, n_chunks, runtime.world_size)
    ]


def progress_label(split, what, runtime):
    return f"[{split}] {what}" + (" (this rank's share)" if runtime.world_size > 1 else "")


def extract_videos(plan, split, records, video_files, model, pool, runtime):
    parts_dir = plan.out / split / PARTS_DIR
    chunks = [
        chunk
        for chunk in my_chunks(len(records), plan.batch_videos, runtime)
        if not (parts_dir / f"video_{chunk[0]:06d}.npz").exists()
    ]
    progress = Progress(
        progress_label(split, "videos", runtime), sum(stop - start for _, start, stop in chunks), runtime.log
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
        n_frames = encode_video_chunk(parts_dir / f"video_{chunk_index:06d}.npz", decoded, model, plan.on_error)
        progress.update(len(decoded), frames=n_frames)

    pending = collections.deque()  # chunks the pool decodes while CLIP runs on the oldest
    for chunk_index, start, stop in chunks:
        pending.append((chunk_index, submit(start, stop)))
        if len(pending) > plan.decode_ahead:
            finish(*pending.popleft())
    while pending:
        finish(*pending.popleft())


def encode_video_chunk(part_path, decoded, model, on_error):
    """CLIP over one chunk's frames; writes the part file. Returns the number of frames encoded."""
    failures = [(video_id, reason) for video_id, _, reason in decoded if reason is not None]
    if failures and on_error == "fail":
        video_id, reason = failures[0]
        sys.exit(f"video {video_id!r} failed ({reason}); rerun with --on-error skip to record and drop bad videos")
    crops = [crop for _, crop, reason in decoded if reason is None]
    frame_counts = np.array([0 if reason else len(crop) for _, crop, reason in decoded], dtype=np.int64)
    frame_feats = clip_vendor.encode_crops(model, crops)
    atomic_write_npz(
        part_path,
        frame_feats=frame_feats,
        frame_counts=frame_counts,
        video_ids=np.array([video_id for video_id, _, _ in decoded]),
        failures=np.array([reason or "" for _, _, reason in decoded]),
    )
    return len(frame_feats)


def extract_texts(plan, split, captions, model, runtime):
    parts_dir = plan.out / split / PARTS_DIR
    chunks = [
        chunk
        for chunk in my_chunks(len(captions), plan.text_batch, runtime)
        if not (parts_dir / f"text_{chunk[0]:06d}.npz").exists()
    ]
    progress = Progress(
        progress_label(split, "captions", runtime), sum(stop - start for _, start, stop in chunks), runtime.log
    )
    for chunk_index, start, stop in chunks:
        tokens = clip_vendor.tokenize([caption.text for caption in captions[start:stop]], plan.context_length)
        with torch.no_grad():
            token_feats, token_mask = model.encode_text_tokens(tokens.to(runtime.device))
        rows = torch.arange(len(tokens), device=token_feats.device)
        pooled = token_feats[rows, token_mask.sum(dim=1) - 1]  # the mask ends at the end-of-text token
        atomic_write_npz(
            parts_dir / f"text_{chunk_index:06d}.npz",
            text_feats=pooled.to(torch.float16).cpu().numpy(),
            token_feats=token_feats[token_mask].to(torch.float16).cpu().numpy(),
            token_counts=token_mask.sum(dim=1).cpu().numpy().astype(np.int64),
        )
        progress.update(stop - start)


def merge_split(out_dir, split, format_name, records, captions, meta, log):
    """Rank 0: concatenate the parts in chunk order into the split's final files."""
    split_dir = out_dir / split
    parts_dir = split_dir / PARTS_DIR
    remove_stale_temporaries(split_dir)  # a killed merge's half-written files
    video_parts = sorted(parts_dir.glob("video_*.npz"))
    text_parts = sorted(parts_dir.glob("text_*.npz"))
    video_ids, frame_counts, failed = [], [], []
    for part in video_parts:
        with np.load(part) as data:
            for video_id, count, reason in zip(data["video_ids"], data["frame_counts"], data["failures"], strict=True):
                if reason:
                    failed.append({"video_id": str(video_id), "reason": str(reason)})
                else:
                    video_ids.append(str(video_id))
                    frame_counts.append(int(count))
    expected = [record.video_id for record in records]
    if sorted(video_ids + [f["video_id"] for f in failed]) != sorted(expected):
        sys.exit(
            f"{parts_dir}: the parts do not cover the split's {len(expected)} videos; delete {parts_dir} and rerun"
        )
    video_offsets = np.concatenate([[0], np.cumsum(frame_counts)]).astype(np.int64)
    concat_parts(video_parts, "frame_feats", split_dir / VIDEO_FEATS, int(video_offsets[-1]))
    atomic_write_npy(split_dir / VIDEO_OFFSETS, video_offsets)
    atomic_write_json(split_dir / VIDEO_IDS, video_ids)

    token_counts = np.concatenate(list(part_arrays(text_parts, "token_counts"))).astype(np.int64)
    if len(token_counts) != len(captions):
        sys.exit(f"{parts_dir}: text parts hold {len(token_counts)} captions, the split has {len(captions)}")
    token_offsets = np.concatenate([[0], np.cumsum(token_counts)]).astype(np.int64)
    concat_parts(text_parts, "text_feats", split_dir / TEXT_FEATS, len(captions))
    concat_parts(text_parts, "token_feats", split_dir / TEXT_TOKEN_FEATS, int(token_offsets[-1]))
    atomic_write_npy(split_dir / TEXT_TOKEN_OFFSETS, token_offsets)
    atomic_write_lines(
        split_dir / CAPTIONS,
        [
            json.dumps(
                {
                    "caption_id": c.caption_id,
                    "video_id": c.video_id,
                    "direction": c.direction,
                    "kind": c.kind,
                    "text": c.text,
                    "row": row,
                },
                ensure_ascii=False,
                sort_keys=True,
            )
            for row, c in enumerate(captions)
        ],
    )
    video_row_of = {video_id: row for row, video_id in enumerate(video_ids)}
    for setting, rows in pair_lists(split, format_name, captions, video_row_of).items():
        atomic_write_csv(split_dir / pair_file(split, setting), PAIR_COLUMNS, rows)

    failed_path = out_dir / FAILED_VIDEOS_NAME
    all_failed = json.loads(failed_path.read_text()) if failed_path.exists() else {}
    all_failed[split] = failed
    atomic_write_json(failed_path, all_failed)
    meta["counts"][split] = {
        "videos": len(video_ids),
        "failed_videos": len(failed),
        "frames": int(video_offsets[-1]),
        "captions": len(captions),
        "tokens": int(token_offsets[-1]),
    }
    atomic_write_json(out_dir / META_NAME, meta)
    shutil.rmtree(parts_dir)  # the parts, and any half-written chunk a killed run left among them
    log(f"[{split}] merged: {meta['counts'][split]}" + (f"; {len(failed)} failed, see {failed_path}" if failed else ""))
    return meta


def concat_parts(parts, key, path, n_rows):
    """Stack array `key` of each part file, in order, into one fp16 .npy of n_rows rows."""
    with np.load(parts[0]) as first:
        dim = first[key].shape[1]
    atomic_write_npy_blocks(path, part_arrays(parts, key), (n_rows, dim), np.float16)


def part_arrays(parts, key):
    """Array `key` of each part file in order, each file closed once read."""
    for part in parts:
        with np.load(part) as data:
            yield data[key]


if __name__ == "__main__":
    main()
