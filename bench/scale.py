"""The cost curve: every stage's wall time and peak memory on synthetic caches of growing size.

    python -m bench.scale --out bench_out/scale                   # 1k, 4k, 21.5k (RTime) and 100k videos, CPU
    python -m bench.scale --sizes 1000 4000 --out /tmp/scale      # a quick look
    python -m bench.scale --device cuda --out bench_out/scale_gpu
    python -m bench.scale --capped 2 --out /tmp/capped             # a cache larger than a 2 GiB memory cap trains

A cache of N videos is split as RTime is (train, then valid 2.3% and test 4.65% of N), 24 frames of
512 per video, fp16, each video with one forward and one reverse caption of 4 tokens (RTime's
human captions; its 8 rewrites per video would multiply only the text). Features are random:
speed and memory only. For each N, each stage runs in its own process (so each peak memory is its
own: the process's peak resident set, and on CUDA the most torch allocated):

- merge: extract.py's merge of every split's chunk files into the cache (the chunks written first, untimed);
- digests: verify.py's sha256 check of every cache file against the meta;
- train: one epoch of meanP (learned temperature), seqTransf and mlpScore, batch 128 + reversals,
  validation on valid included;
- evaluate: evaluate.py on test (Origin, Hard: test x its reversals, both directions, Binary, and
  the order-sensitivity passes), every array written: meanP zero-shot and the two trained heads,
  each its own stage;
- tightTransf: all-pairs scoring of 16 test queries against (up to) 1024 test candidates, per 1k pairs;
- report: report.py over those three results.

It prints the table and each stage's growth exponent (the slope of log time against log N over the
sizes from 4k up), and writes scale.json and scale.png (log-log) to --out. --capped G instead
trains meanP and mlpScore for one epoch on a cache whose train frames exceed G GiB, in a cgroup
capped at G GiB (root and a writable cgroup file system needed): with `--data-on auto` the
batches come from the host; with `--data-on device` the same run is killed by the cap.
"""

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

import evaluate
import report
import train_head
import verify
from backbones.openai import contract_entry
from bench.isolated import measured
from clip_vendor.model import ClipConfig
from corpus.annotations import SPLITS, VideoRecord, make_caption, split_captions
from corpus.feature_cache import (
    META_NAME,
    content_digest,
    merge_split,
    open_cache_meta,
    text_part_path,
    video_part_path,
    write_meta,
    write_text_part,
    write_video_part,
)
from corpus.video_frames import DecodedVideo
from evaluation.scoring import read_setting
from fixtures.synthetic_cache import clip_parameters, write_random_clip
from heads.architectures import HeadShape, build_head
from heads.loaded_split import load_split_tensors
from infra.file_io import atomic_write_json, file_sha256
from infra.runtime import fix_cpu_threads
from reporting.plots import save_figure

FRAMES, DIM, TOKENS = 24, 512, 4
VALID_SHARE, TEST_SHARE = 500 / 21500, 1000 / 21500  # RTime: 20k train, 500 valid, 1k test
VIDEOS_PER_PART, CAPTIONS_PER_PART = 32, 512  # extract.py's default chunks
HEADS = ("meanP", "seqTransf", "mlpScore")
STAGES = (
    "merge",
    "digests",
    *(f"train {head}" for head in HEADS),
    *(f"evaluate {head}" for head in HEADS),
    "tightTransf",
    "report",
)

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 21500, 100000], help="videos per cache")
parser.add_argument("--device", default="cpu", help="cpu or cuda")
parser.add_argument(
    "--out", type=Path, required=True, help="folder for the caches (deleted after each size), json, png"
)
parser.add_argument("--capped", type=float, default=None, help="GiB: instead, train under a memory cap of this size")
parser.add_argument(
    "--in-process",
    action="store_true",
    help="run every stage in this process (a quick dry run: times only, no stage's own peak memory)",
)
parser.add_argument(
    "--seqtransf-up-to",
    type=int,
    default=None,
    help="time seqTransf's epoch only up to this many videos (default: 21500 on a CPU, where an epoch costs about "
    "50 ms per video with one thread; every size on a GPU)",
)


def split_sizes(n_videos):
    valid, test = max(8, round(VALID_SHARE * n_videos)), max(16, round(TEST_SHARE * n_videos))
    return {"train": n_videos - valid - test, "valid": valid, "test": test}


def clip_config():
    # the heads read only the text tower (seqTransf starts from its first 4 layers) and the width
    return ClipConfig(DIM, 32, 1, 64, 8, 77, 49408, DIM, 4)


def contract(clip_path):
    config = clip_config()
    return {
        "backbone": contract_entry(file_sha256(clip_path), config, clip_parameters(asdict(config))),
        "tokenizer": {"context_length": 77, "long_text": "truncate"},
        "preprocessing": {"size": config.image_resolution},
        "sampling": {"fps": 1.0, "t_max": FRAMES, "rule": "synthetic", "decoder": {"name": "synthetic"}},
        "compute": {"dtype": "fp32"},
        "storage_dtype": "float16",
        "annotations": {split: {"file": f"{split}.json", "format": "rtime", "paragraphs": False} for split in SPLITS},
    }


def records_of(split, n_videos):
    return [
        VideoRecord(
            f"{split}{row}",
            True,
            (
                make_caption(f"{split}{row}", "forward", "human", 0, "a"),
                make_caption(f"{split}{row}", "reverse", "human", 0, "b"),
            ),
        )
        for row in range(n_videos)
    ]


def write_parts(cache_dir, split, records, rng):
    """The chunk files extract.py's ranks would write for a split (random features)."""
    (cache_dir / split / "parts").mkdir(parents=True)
    for chunk, start in enumerate(range(0, len(records), VIDEOS_PER_PART)):
        chunk_records = records[start : start + VIDEOS_PER_PART]
        decoded = [DecodedVideo(record.video_id, None, None, "opencv") for record in chunk_records]
        feats = rng.standard_normal((len(chunk_records) * FRAMES, DIM), dtype=np.float32).astype(np.float16)
        write_video_part(video_part_path(cache_dir, split, chunk), decoded, [FRAMES] * len(decoded), feats)
    n_captions = len(split_captions(records))
    for chunk, start in enumerate(range(0, n_captions, CAPTIONS_PER_PART)):
        n = min(CAPTIONS_PER_PART, n_captions - start)
        pooled = rng.standard_normal((n, DIM), dtype=np.float32).astype(np.float16)
        tokens = rng.standard_normal((n * TOKENS, DIM), dtype=np.float32).astype(np.float16)
        write_text_part(text_part_path(cache_dir, split, chunk), pooled, tokens, np.full(n, TOKENS), np.zeros(n, bool))


# --- the stages, each run in its own process by `measured` -------------------------------------------


def stage_merge(cache_dir, n_videos, clip_path):
    rng = np.random.default_rng(0)
    wanted = contract(clip_path)
    cache_dir.mkdir(parents=True)
    meta = open_cache_meta(cache_dir, wanted, {"dataset": "synthetic"}, write=True)
    splits = {split: records_of(split, n) for split, n in split_sizes(n_videos).items()}
    for split, records in splits.items():
        (cache_dir / split).mkdir(parents=True, exist_ok=True)
        (cache_dir / split / "video_files.json").write_text("{}")
        write_parts(cache_dir, split, records, rng)
    started = time.perf_counter()
    for split, records in splits.items():
        meta = merge_split(cache_dir, split, "rtime", records, split_captions(records), meta)
    seconds = time.perf_counter() - started
    write_meta(cache_dir, {**meta, "complete": True, "content_sha256": content_digest(meta)})
    return seconds


def stage_digests(cache_dir):
    started = time.perf_counter()
    checks = verify.Report()
    verify.check_file_digests(cache_dir, json.loads((cache_dir / META_NAME).read_text()), checks)
    assert not checks.failed, checks.rows
    return time.perf_counter() - started


def stage_train(cache_dir, clip_path, head, device):
    started = time.perf_counter()
    extra = ["--learn-temp"] if head in ("meanP", "mlpScore") else []
    train_head.main(
        [
            "--cache",
            str(cache_dir),
            "--head",
            head,
            "--out",
            str(cache_dir.parent / "runs" / head),
            "--clip",
            str(clip_path),
        ]
        + ["--epochs", "1", "--batch-size", "128", "--reverse-negatives", "--device", device, *extra]
    )
    return time.perf_counter() - started


def stage_evaluate(cache_dir, device, head):
    """meanP zero-shot, or the head trained by stage_train."""
    weights = ["--head", "meanP"] if head == "meanP" else ["--ckpt", str(cache_dir.parent / "runs" / head / "best.pt")]
    results = cache_dir.parent / "results"
    started = time.perf_counter()
    evaluate.main(["--cache", str(cache_dir), *weights, "--out", str(results / f"{head}.json"), "--device", device])
    return time.perf_counter() - started


def stage_tight(cache_dir, device, n_queries=16, n_candidates=1024):
    """Seconds per 1k (text, video) pairs of tightTransf's all-pairs scoring: 16 test queries
    against the first 1024 test candidates (its cost per pair is what grows, or not, with N)."""
    fix_cpu_threads(device)
    setting = read_setting(cache_dir, "test", "hard")
    setting.candidates = setting.candidates[:n_candidates]
    data = load_split_tensors(cache_dir, "test", FRAMES, device)
    head = build_head("tightTransf", HeadShape(DIM, FRAMES)).to(device).eval()
    rows = torch.tensor([row for row, _ in setting.candidates], device=device)
    flags = torch.tensor([flag for _, flag in setting.candidates], device=device)
    captions = torch.from_numpy(setting.caption_rows[:n_queries]).to(device)
    with torch.no_grad():
        frames, mask = data.video_batch(rows, flags)
        text, text_mask = data.text_input(captions, "pooled")
        started = time.perf_counter()
        head.score_matrix(text, text_mask, frames, mask)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    return (time.perf_counter() - started) / (len(captions) * len(rows) / 1000)


def stage_report(cache_dir):
    started = time.perf_counter()
    report.main(["--results", str(cache_dir.parent / "results"), "--out", str(cache_dir.parent / "report")])
    return time.perf_counter() - started


def growth_exponent(sizes, values):
    """Least-squares slope of log(value) against log(size): 1 linear, 2 quadratic."""
    points = [(math.log(s), math.log(v)) for s, v in zip(sizes, values, strict=True) if v and v > 0]
    if len(points) < 2:
        return float("nan")
    return float(np.polyfit(*zip(*points, strict=True), 1)[0])


def plot(table, sizes, path):
    figure = Figure(figsize=(7.5, 4.2), layout="constrained")
    ax = figure.subplots()
    for index, stage in enumerate(STAGES):
        timed = [size for size in sizes if size in table[stage]]
        ax.plot(timed, [table[stage][size]["seconds"] for size in timed], marker="osv^D<>Pxh"[index], label=stage)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("videos in the cache (log scale)")
    ax.set_ylabel("wall time (s; tightTransf: s per 1k pairs)")
    ax.set_title("Cost of each stage against cache size", fontsize=10)
    figure.legend(*ax.get_legend_handles_labels(), loc="outside right upper", fontsize=8)
    save_figure(figure, path)


def run_sizes(args):
    table = {stage: {} for stage in STAGES}
    seqtransf_limit = args.seqtransf_up_to or (21500 if args.device == "cpu" else max(args.sizes))
    for size in args.sizes:
        root = args.out / f"n{size}"
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        clip_path = root / "clip.pt"
        write_random_clip(clip_path, clip_config())
        cache = root / "cache"
        heads = [head for head in HEADS if head != "seqTransf" or size <= seqtransf_limit]
        jobs = [
            ("merge", stage_merge, (cache, size, clip_path)),
            ("digests", stage_digests, (cache,)),
            *((f"train {head}", stage_train, (cache, clip_path, head, args.device)) for head in heads),
            *((f"evaluate {head}", stage_evaluate, (cache, args.device, head)) for head in heads),
            ("tightTransf", stage_tight, (cache, args.device)),
            ("report", stage_report, (cache,)),
        ]
        for stage, function, arguments in jobs:
            if args.in_process:
                seconds, peak, gpu_peak = function(*arguments), 0, None
            else:
                seconds, peak, gpu_peak = measured(function, arguments, args.device)
            table[stage][size] = {"seconds": seconds, "peak_bytes": peak, "gpu_peak_bytes": gpu_peak}
            print(f"N={size:>7}: {stage:<18} {seconds:10.3f} s   peak {peak / 2**20:8.0f} MiB", flush=True)
        shutil.rmtree(root)
        # saved after every size: the 100k row takes most of an hour on a CPU, and a lost session
        # should not take the smaller sizes with it
        write_results(table, args.sizes, args.device, args.out)
    print_table(table, args.sizes)
    print(f"\nwrote {args.out / 'scale.json'} and {args.out / 'scale.png'}")


def exponents_of(table, sizes):
    fitted = [size for size in sizes if size >= 4000] or sizes
    exponents = {}
    for stage in STAGES:
        timed = [size for size in fitted if size in table[stage]]
        exponents[stage] = growth_exponent(timed, [table[stage][size]["seconds"] for size in timed])
    return exponents


def write_results(table, sizes, device, out):
    exponents = exponents_of(table, sizes)
    atomic_write_json(out / "scale.json", {"sizes": sizes, "device": device, "table": table, "exponents": exponents})
    plot(table, sizes, out / "scale.png")


def print_table(table, sizes):
    exponents = exponents_of(table, sizes)
    print(f"\n| stage | {' | '.join(f'{s:,} videos' for s in sizes)} | growth exponent (time) |")
    print("|---" * (len(sizes) + 2) + "|")
    for stage in STAGES:
        cells = [
            f"{table[stage][s]['seconds']:.3g} s, {table[stage][s]['peak_bytes'] / 2**30:.2f} GiB"
            if s in table[stage]
            else "not timed"
            for s in sizes
        ]
        print(f"| {stage} | {' | '.join(cells)} | {exponents[stage]:.2f} |")


def capped_run(args):
    """Train on a cache whose train frames exceed a memory cap, inside a cgroup with that cap."""
    cap = int(args.capped * 2**30)
    n_videos = int(1.25 * cap / (FRAMES * DIM * 2)) + 1000  # train frames 1.25x the cap
    root = args.out / "capped"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    write_random_clip(root / "clip.pt", clip_config())
    measured(stage_merge, (root / "cache", n_videos, root / "clip.pt"), "cpu")
    frames_bytes = split_sizes(n_videos)["train"] * FRAMES * DIM * 2
    group = cgroup(cap)
    print(f"cache: {n_videos:,} videos, train frames {frames_bytes / 2**30:.2f} GiB; cap {args.capped} GiB ({group})")
    for head in ("meanP", "mlpScore"):
        for where in ("auto", "device"):
            command = [sys.executable, "train_head.py", "--cache", str(root / "cache"), "--head", head, "--out"]
            command += [str(root / f"{head}_{where}"), "--epochs", "1", "--batch-size", "128", "--learn-temp"]
            command += ["--reverse-negatives", "--device", "cpu", "--data-on", where]
            started = time.perf_counter()
            completed = subprocess.run(
                ["sh", "-c", f'echo $$ > {group}/cgroup.procs && exec "$@"', "sh", *command],
                capture_output=True,
                text=True,
            )
            placement = next((line for line in completed.stdout.splitlines() if line.startswith("frames on")), "")
            print(
                f"{head}, --data-on {where}: exit {completed.returncode} after {time.perf_counter() - started:.1f} s; "
                f"{placement or completed.stderr.strip()[-200:]}"
            )
    print(f"peak memory of the cgroup: {int(Path(group, 'memory.max_usage_in_bytes').read_text()) / 2**30:.2f} GiB")
    group.rmdir()
    shutil.rmtree(root)


def cgroup(cap):
    """A memory cgroup (v1) capped at `cap` bytes, made for this run."""
    group = Path("/sys/fs/cgroup/memory") / f"bench_scale_{os.getpid()}"
    try:
        group.mkdir()
        (group / "memory.limit_in_bytes").write_text(str(cap))
    except OSError as err:
        raise SystemExit(f"--capped needs a writable memory cgroup (v1) as root: {err}") from None
    return group


def main(argv=None):
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    capped_run(args) if args.capped else run_sizes(args)


if __name__ == "__main__":
    main()
