"""Are the CUDA paths right? The same work on the device and on the CPU, compared in one run.

    python -m bench.device_parity --videos .gpu_kit/media                    # on a GPU machine
    python -m bench.device_parity --device cpu --shape tiny --seeds 0 --heads seqTransf   # a dry run

1. Extraction: extract.py over the files of --videos with a random-weight CLIP of --shape, once with
   --device DEVICE --dtype DTYPE and once on the CPU in fp32. The same frames go in (decoding and
   preprocessing run on the CPU both times); printed: the least and median cosine between the two
   caches, per cached frame and per caption. Target: >= 0.999.
2. Training: the demo (make_demo_data.py, extracted on the CPU), each head of --heads trained with
   run_all.sh's demo settings for each seed, on DEVICE and on the CPU from the same cache; printed:
   each run's best valid Hard t2v R@1 (expected) and each device's mean and spread over the seeds.
   Target: the means differ by less than the spread between seeds.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

import extract
import verify
from corpus.feature_cache import open_split
from fixtures.synthetic_cache import CLIP_SHAPES, write_random_clip

REPO = Path(__file__).resolve().parents[1]
DEMO_TRAIN_ARGS = {  # run_all.sh's demo settings
    "seqTransf": ["--frames", "8", "--epochs", "60", "--batch-size", "32", "--lr", "3e-3", "--learn-temp"],
    "tightTransf": ["--frames", "4", "--epochs", "30", "--batch-size", "16", "--lr", "3e-3"],
    "mlpScore": ["--frames", "8", "--epochs", "30", "--batch-size", "32", "--lr", "3e-3", "--learn-temp"],
}

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--device", default="cuda", help="the device checked against the CPU")
parser.add_argument("--dtype", default="fp16", help="extract.py --dtype on that device")
parser.add_argument("--videos", type=Path, default=None, help="folder of videos to extract (default: the demo's test)")
parser.add_argument("--shape", default="B32", choices=sorted(CLIP_SHAPES), help="CLIP shape for (1), random weights")
parser.add_argument("--heads", nargs="+", default=["seqTransf", "tightTransf"], choices=sorted(DEMO_TRAIN_ARGS))
parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="training seeds per head and device")
parser.add_argument("--epochs", type=int, default=None, help="epochs per run (default: run_all.sh's demo settings)")
parser.add_argument("--workers", type=int, default=4, help="extract.py --workers (0: decode in the main process)")


def run_extract(annotations, videos, checkpoint, out, device, dtype, workers, extra=()):
    extract.main(
        [
            *("--annotations", str(annotations), "--videos", str(videos), "--clip", str(checkpoint)),
            *("--out", str(out), "--device", device, "--dtype", dtype, "--workers", str(workers), *extra),
        ]
    )


def extraction_parity(tmp, demo, args):
    """Rows of (what, count, least cosine, median cosine) between DEVICE and CPU fp32 extraction."""
    if args.videos:
        video_ids = sorted(path.stem for path in args.videos.iterdir() if path.is_file())
        annotations, videos = tmp / "annotations", args.videos
        annotations.mkdir()
        captions = {video_id: {"sentences": [f"a clip called {video_id}"]} for video_id in video_ids}
        (annotations / "test.json").write_text(json.dumps(captions))
    else:
        annotations, videos = demo / "annotations", demo / "videos"
    checkpoint = write_random_clip(tmp / "random_clip.pt", CLIP_SHAPES[args.shape])
    caches = {}
    for name, device, dtype in (("device", args.device, args.dtype), ("cpu", "cpu", "fp32")):
        caches[name] = tmp / f"cache_{name}"
        run_extract(annotations, videos, checkpoint, caches[name], device, dtype, args.workers, ("--splits", "test"))
    on_device, on_cpu = open_split(caches["device"], "test"), open_split(caches["cpu"], "test")
    if on_device.video_ids != on_cpu.video_ids or not np.array_equal(on_device.video_offsets, on_cpu.video_offsets):
        raise SystemExit("the two extractions kept different videos or frame counts")
    rows = []
    for what, device_rows, cpu_rows in (
        ("frames", on_device.video_feats, on_cpu.video_feats),
        ("captions (pooled)", on_device.text_feats, on_cpu.text_feats),
        ("caption tokens", on_device.text_token_feats, on_cpu.text_token_feats),
    ):
        cosines = verify.cosine(np.asarray(device_rows, np.float32), np.asarray(cpu_rows, np.float32))
        rows.append((what, len(cosines), float(cosines.min()), float(np.median(cosines))))
    return rows


def start_training(cache, clip, head, seed, device, out, epochs):
    """Start training one head in its own process (runs of both devices go at once: one CPU thread
    each, and the device's runs are small); returns the process."""
    command = [sys.executable, str(REPO / "train_head.py"), "--cache", str(cache), "--clip", str(clip)]
    command += ["--head", head, "--seed", str(seed), "--device", device, "--out", str(out), "--reverse-negatives"]
    command += DEMO_TRAIN_ARGS[head] + (["--epochs", str(epochs)] if epochs else [])  # the last --epochs counts
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL)


def best_valid(process, out):
    """The run's best valid selection metric (Hard t2v R@1, expected) over its epochs."""
    if process.wait() != 0:
        raise SystemExit(f"training into {out} failed (exit {process.returncode})")
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    return max(entry["selection"] for entry in log)


def training_parity(tmp, demo, args):
    """{(head, device): [best valid per seed]} for DEVICE and the CPU on the demo cache."""
    cache = tmp / "demo_cache"
    run_extract(
        demo / "annotations", demo / "videos", demo / "clip_tiny.pt", cache, "cpu", "fp32", args.workers, ("--fps", "4")
    )
    runs = {
        (head, device, seed): tmp / f"{head}_{device}_{seed}"
        for head in args.heads
        for device in (args.device, "cpu")
        for seed in args.seeds
    }
    processes = {
        (head, device, seed): start_training(cache, demo / "clip_tiny.pt", head, seed, device, out, args.epochs)
        for (head, device, seed), out in runs.items()
    }
    results = {}
    try:
        for (head, device, seed), out in runs.items():
            results.setdefault((head, device), []).append(best_valid(processes[(head, device, seed)], out))
            print(f"{head} on {device}, seed {seed}: {results[(head, device)][-1]:.2f}", flush=True)
    finally:  # one run failed: stop the others before their folders are deleted under them
        for process in processes.values():
            process.kill()
    return results


def spread(values):
    return statistics.stdev(values) if len(values) > 1 else 0.0


def main(argv=None):
    args = parser.parse_args(argv)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device
    print(f"device: {device_name}, torch {torch.__version__}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        demo = tmp / "demo"
        subprocess.run([sys.executable, str(REPO / "make_demo_data.py"), "--out", str(demo)], check=True, cwd=REPO)
        print_extraction(extraction_parity(tmp, demo, args), args)  # printed now: a run cut short keeps it
        training = training_parity(tmp, demo, args)
    print_training(training, args)


def print_extraction(extraction, args):
    print(f"\n(1) extraction, CLIP {args.shape} (random weights): {args.device} {args.dtype} against cpu fp32")
    print("| rows | count | least cosine | median cosine | target |")
    print("|---|---|---|---|---|")
    for what, count, least, median in extraction:
        print(f"| {what} | {count} | {least:.5f} | {median:.5f} | {'met' if least >= 0.999 else 'MISSED'} (>= 0.999) |")
    print(flush=True)


def print_training(training, args):
    print(f"\n(2) training on the demo cache, best valid Hard t2v R@1 (expected), seeds {args.seeds}")
    print(f"| head | {args.device}: per seed | cpu: per seed | {args.device} mean ± sd | cpu mean ± sd | difference |")
    print("|---|---|---|---|---|---|")
    for head in args.heads:
        on_device, on_cpu = training[(head, args.device)], training[(head, "cpu")]
        difference = statistics.mean(on_device) - statistics.mean(on_cpu)
        noise = max(spread(on_device), spread(on_cpu))
        verdict = "within seed noise" if abs(difference) <= noise else "BEYOND seed noise"
        print(
            f"| {head} | {', '.join(f'{v:.1f}' for v in on_device)} | {', '.join(f'{v:.1f}' for v in on_cpu)} | "
            f"{statistics.mean(on_device):.1f} ± {spread(on_device):.1f} | "
            f"{statistics.mean(on_cpu):.1f} ± {spread(on_cpu):.1f} | {difference:+.1f} ({verdict}) |"
        )


if __name__ == "__main__":
    main()
