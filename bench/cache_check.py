"""What checking a cache's bytes at read time costs: a split opened with every file hashed against
cache_meta.json's sha256, with the fast path (files unchanged since their last check), and with no
check at all (the baseline, as before the check existed), side by side in one process.

    python -m bench.cache_check                          # RTime's test split: 2k videos x 12 frames x 512
    python -m bench.cache_check --videos 10000 --frames 24   # RTime's train split at 24 frames

Prints seconds and MB/s for each, and the ratio of each to the baseline. The cache is synthetic (random
features, order-only captions): the cost depends on the bytes, not on what they hold.
"""

import argparse
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from clip_vendor.model import ClipConfig
from corpus import feature_cache
from corpus.feature_cache import CHECKED_NAME, open_split
from fixtures.synthetic_cache import write_order_only_cache, write_random_clip

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--videos", type=int, default=2000, help="videos in the split opened")
parser.add_argument("--frames", type=int, default=12, help="frames per video")
parser.add_argument("--dim", type=int, default=512, help="embedding width (ViT-B: 512)")
parser.add_argument("--repeats", type=int, default=3, help="timings per way of opening (the best is shown)")


def best_time(open_once, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        open_once()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv=None):
    args = parser.parse_args(argv)
    config = ClipConfig(args.dim, 224, 1, 768, 32, 77, 49408, args.dim, 4)
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        clip_path = write_random_clip(Path(tmp) / "clip.pt", config)
        write_order_only_cache(
            cache, clip_path, asdict(config), n_train=2, n_valid=2, n_test=args.videos, n_frames=args.frames
        )
        megabytes = sum(path.stat().st_size for path in (cache / "test").iterdir()) / 1e6

        def full_check():
            (cache / "test" / CHECKED_NAME).unlink(missing_ok=True)
            feature_cache.CHECKED_IN_PROCESS.clear()
            open_split(cache, "test")

        timings = {
            "no check (baseline)": best_time(lambda: open_split(cache, "test", check_bytes=False), args.repeats),
            "full check (sha256)": best_time(full_check, args.repeats),
        }
        open_split(cache, "test")  # leaves the stamp the fast path reads
        timings["fast path (unchanged)"] = best_time(lambda: open_split(cache, "test"), args.repeats)
    baseline = timings["no check (baseline)"]
    print(f"split of {args.videos:,} videos x {args.frames} frames x {args.dim}: {megabytes:,.1f} MB")
    for name, seconds in timings.items():
        print(f"  {name:<22} {seconds:8.3f} s  {megabytes / seconds:10,.0f} MB/s  {seconds / baseline:6.1f}x baseline")


if __name__ == "__main__":
    main()
