"""Fixtures several test files share, each built once per session: the demo data and its cache, a
small CLIP, and small trained-and-evaluated setups (tests that change one copy it first); and the
checks that are subprocesses for seconds or minutes (a tune.py search, the demo's run matrix, the
GPU kit's dry run, the other backbones end to end), started in the background, one after another,
as soon as one of their tests is selected."""

import importlib
import os
import shutil
import signal
import tempfile
from dataclasses import asdict
from pathlib import Path

import pytest

import clip_vendor
import evaluate
import extract
import make_demo_data
import report
import train_head
from fixtures.synthetic_cache import write_order_only_cache
from make_demo_data import write_tiny_clip
from tests.helpers import extract_args, order_only_cache, train_args

# Checks that are seconds to minutes of subprocesses: each is started at collection when a test of
# its file is selected (and runs once the one before has ended), and that file's tests run last, so
# the checks run beside the rest of the suite, on the core it mostly leaves free.
# {name: (test file, module, its starter(folder, pid to wait for) -> process)}
BACKGROUND_CHECKS = {
    "tune_search": ("tests/test_tune.py", "tests.test_tune", "search_of_two_heads"),
    "demo_matrix": ("tests/test_run_all.py", "tests.test_run_all", "demo_matrix"),
    "gpu_kit": ("tests/test_gpu_kit.py", "tests.test_gpu_kit", "dry_run"),
    "backbone_matrix": ("tests/test_backbones.py", "tests.test_backbones", "backbone_matrix"),
}
STARTED = {}  # name: (process, its folder)


def pytest_collection_modifyitems(config, items):
    """Start each background check whose tests are selected, one after another, and move those
    tests last."""
    previous = None  # the check started before: the next one waits for it to end
    for name, (test_file, module, starter) in BACKGROUND_CHECKS.items():
        selected = [item for item in items if item.nodeid.startswith(test_file)]
        if not selected:
            continue
        items[:] = [item for item in items if item not in selected] + selected
        folder = Path(tempfile.mkdtemp(prefix=f"{name}_"))
        STARTED[name] = (getattr(importlib.import_module(module), starter)(folder, previous), folder)
        previous = STARTED[name][0].pid


def pytest_sessionfinish(session, exitstatus):
    """Stop a check the session ended before (-x, Ctrl-C), and remove every check's folder."""
    for process, folder in STARTED.values():
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)  # the check and every process it started
        process.wait()
        shutil.rmtree(folder, ignore_errors=True)
    STARTED.clear()


@pytest.fixture(scope="session")
def background():
    """{name: (process, its folder)} of the checks started at collection."""
    return STARTED


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    """A small RTime-format demo set: 8 train (one not reversible), 4 valid, 4 test videos, tiny CLIP."""
    out = tmp_path_factory.mktemp("demo")
    make_demo_data.main(["--out", str(out), "--train", "8", "--valid", "4", "--test", "4"])
    return out


@pytest.fixture(scope="session")
def demo_cache(demo_data, tmp_path_factory):
    """The demo extracted as tests.helpers.extract_args says (never changed: tests copy it first)."""
    out = tmp_path_factory.mktemp("demo_cache") / "cache"
    extract.main(extract_args(demo_data, out))
    return out


@pytest.fixture(scope="session")
def lone_cache(demo_data, tmp_path_factory):
    """The demo extracted by one uninterrupted run, one video per chunk (the reference bytes)."""
    out = tmp_path_factory.mktemp("lone") / "cache"
    extract.main(extract_args(demo_data, out, "--batch-videos", "1"))
    return out


@pytest.fixture(scope="session")
def small_clip(tmp_path_factory):
    """A tiny random CLIP with small weights (std 0.05): near-uniform attention at the start."""
    path = tmp_path_factory.mktemp("clip") / "clip_small_init.pt"
    write_tiny_clip(path, seed=0, matrix_std=0.05)
    return path


@pytest.fixture(scope="session")
def order(small_clip, tmp_path_factory):
    """A small synthetic order-only cache (root/cache), its CLIP (root/clip.pt), meanP zero-shot and
    a one-epoch seqTransf (root/seqTransf), evaluated (root/results)."""
    root = tmp_path_factory.mktemp("order")
    clip = root / "clip.pt"
    clip.write_bytes(small_clip.read_bytes())
    cache = order_only_cache(clip, root / "cache", n_train=16, n_valid=4, n_test=6, n_frames=4)
    run = root / "seqTransf"
    train_head.main(train_args(cache, clip, run, "seqTransf", "--epochs", "1", batch_size=8))
    results = root / "results"
    evaluate.main(["--cache", str(cache), "--head", "meanP", "--out", str(results / "meanP.json")])
    evaluate.main(["--cache", str(cache), "--ckpt", str(run / "best.pt"), "--out", str(results / "seqTransf.json")])
    return root


@pytest.fixture(scope="session")
def evaluated(small_clip, tmp_path_factory):
    """A synthetic order-only cache (root/cache, with root/clip.pt), meanP, and seqTransf trained with
    two seeds (root/seqTransf_seed{0,1}), all evaluated; returns (cache, results folder)."""
    root = tmp_path_factory.mktemp("evaluated")
    cache, clip = root / "cache", root / "clip.pt"
    clip.write_bytes(small_clip.read_bytes())
    config = asdict(clip_vendor.load(clip)[0].config)
    write_order_only_cache(cache, clip, config, n_train=64, n_valid=16, n_test=12, n_frames=4)
    results = root / "results"
    evaluate.main(["--cache", str(cache), "--head", "meanP", "--out", str(results / "meanP.json")])
    for seed in (0, 1):
        run = root / f"seqTransf_seed{seed}"
        args = train_args(cache, clip, run, "seqTransf", "--seed", str(seed), "--epochs", "3", batch_size=16)
        train_head.main(args + ["--reverse-negatives"])
        ckpt = ["--cache", str(cache), "--ckpt", str(run / "best.pt"), "--method", "seqTransf"]
        evaluate.main([*ckpt, "--out", str(results / f"seqTransf_seed{seed}.json")])
    return cache, results


@pytest.fixture(scope="session")
def demo(demo_data, demo_cache, tmp_path_factory):
    """The demo cache with meanP zero-shot, mlpScore and seqTransf (two seeds) evaluated with the
    rewrites; seqTransf with DSL too; the report with examples. root/cache is the demo cache."""
    root = tmp_path_factory.mktemp("analyses")
    (root / "cache").symlink_to(demo_cache)
    cache, results, clip = root / "cache", root / "results", demo_data / "clip_tiny.pt"
    evaluate.main(["--cache", str(cache), "--head", "meanP", "--rewrites", "--out", str(results / "meanP.json")])
    for head, seed, epochs in (("mlpScore", 0, "1"), ("seqTransf", 0, "4"), ("seqTransf", 1, "4")):
        run = root / f"{head}_{seed}"
        train_head.main(
            ["--cache", str(cache), "--head", head, "--seed", str(seed), "--out", str(run), "--clip", str(clip)]
            + ["--epochs", epochs, "--batch-size", "4", "--lr", "3e-3", "--reverse-negatives"]
        )
        ckpt = ["--cache", str(cache), "--ckpt", str(run / "best.pt"), "--method", head]
        evaluate.main([*ckpt, "--rewrites", "--out", str(results / f"{head}_{seed}.json")])
        if head == "seqTransf":
            evaluate.main([*ckpt, "--postprocess", "dsl", "--out", str(results / f"{head}_{seed}_dsl.json")])
    videos = demo_data / "videos"
    report.main(["--results", str(results), "--out", str(root / "report"), "--examples", "2", "--videos", str(videos)])
    return root
