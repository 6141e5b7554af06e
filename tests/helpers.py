"""What several test files share: the demo extraction's arguments, a cache's bytes, and stage
scripts run as separate processes (for kill -9, Ctrl-C and concurrent runs)."""

import os
import subprocess
import sys
import time
from pathlib import Path

from corpus.feature_cache import TIMINGS_NAME

PROJECT = Path(__file__).resolve().parents[1]


def extract_args(demo, out, *extra, videos=None, annotations=None):
    return [
        "--annotations",
        str(annotations or demo / "annotations"),
        "--videos",
        str(videos or demo / "videos"),
        "--clip",
        str(demo / "clip_tiny.pt"),
        "--out",
        str(out),
        "--fps",
        "4",
        "--workers",
        "0",
        "--batch-videos",
        "3",
        "--text-batch",
        "16",
        *extra,
    ]


def verify_args(demo, cache, n_videos, *extra, videos=None):
    """verify.py's arguments for a cache extracted from the demo, re-extracting `n_videos` videos."""
    return [
        "--cache",
        str(cache),
        "--annotations",
        str(demo / "annotations"),
        "--videos",
        str(videos or demo / "videos"),
        "--clip",
        str(demo / "clip_tiny.pt"),
        "--n-videos",
        str(n_videos),
        *extra,
    ]


def cache_files(cache_dir):
    """{relative path: bytes} of every file in a cache but its timings (what the run cost, not what it made)."""
    return {
        str(path.relative_to(cache_dir)): path.read_bytes()
        for path in sorted(cache_dir.rglob("*"))
        if path.is_file() and path.name != TIMINGS_NAME
    }


def start_script(script, arguments):
    """A stage script in its own process, its output captured."""
    return subprocess.Popen(
        [sys.executable, str(PROJECT / script), *arguments],
        cwd=PROJECT,
        env={**os.environ, "PYTHONPATH": str(PROJECT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_until(condition, process):
    """Poll until `condition()` holds; fails if the process ends first (it finished too soon to be
    interrupted at that moment)."""
    while not condition():
        assert process.poll() is None, "the process ended before the moment it was to be interrupted"
        time.sleep(0.002)


def two_nodes(script, arguments_of_node, port):
    """Run `script` under torchrun as two "nodes" of one process each on this machine (loopback
    rendezvous, gloo): node r gets arguments_of_node(r). Returns [(exit code, output)] per node."""
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", f"--node_rank={node}", "--nproc_per_node=1"]
            + ["--master_addr=127.0.0.1", f"--master_port={port}", str(PROJECT / script), *arguments_of_node(node)],
            cwd=PROJECT,
            env={**os.environ, "PYTHONPATH": str(PROJECT)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for node in (0, 1)
    ]
    return [(process.wait(timeout=600), process.communicate()[0]) for process in processes]
