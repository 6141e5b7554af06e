"""What several test files share: the stages' arguments for the demo and for small synthetic caches,
a cache's bytes, one tensor-equality rule, and stage scripts run as separate processes (for kill -9,
Ctrl-C and concurrent runs)."""

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

import clip_vendor
from corpus.feature_cache import BOOKKEEPING, split_file_digests, write_meta
from fixtures.synthetic_cache import write_order_only_cache
from infra.cli import StageError

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


def copied_annotations(demo, tmp_path):
    """A copy of the demo's annotation folder, to change."""
    return copied(demo / "annotations", tmp_path / "annotations")


def copy_cache(cache, destination, **contract_changes):
    """A copy of `cache` whose contract has the given {section: {field: value}} changes."""
    shutil.copytree(cache, destination)
    meta = json.loads((destination / "cache_meta.json").read_text())
    meta["git_commit"] = "another commit"
    for section, fields in contract_changes.items():
        meta["contract"][section].update(fields)
    write_meta(destination, meta)
    return destination


def planted(cache, split, name, array):
    """Save `array` as a file of a split and record the split's digests in the meta anew: a cache an
    extractor wrote with that value in it, whose bytes the read-time check then passes, so what is
    tested is the check of the stage that meets the value."""
    np.save(cache / split / name, array)
    recorded_anew(cache, split)


def recorded_anew(cache, split):
    """The meta of a cache whose split's files were changed by hand, recording their digests anew."""
    meta = json.loads((cache / "cache_meta.json").read_text())
    meta["files"][split] = split_file_digests(cache, split)
    write_meta(cache, meta)


def cache_files(cache_dir):
    """{relative path: bytes} of every file in a cache but its bookkeeping (what runs cost and checked, not
    what they made)."""
    return {
        str(path.relative_to(cache_dir)): path.read_bytes()
        for path in sorted(cache_dir.rglob("*"))
        if path.is_file() and path.name not in BOOKKEEPING
    }


def start_in_background(command, logs, after=None):
    """A command in its own process group, at the lowest priority (the tests in the foreground come
    first), run from the project's root once process `after` (a pid) has ended, its output written
    to logs/stdout.txt and logs/stderr.txt (files, not pipes: nobody reads a pipe while it runs).
    Niceness alone does not hold it back where the kernel groups processes by session (autogroup:
    each session, as run_all.sh's runs are, gets an equal share whatever its niceness), so the
    background checks run one after another, on one core (the last this process may use), and the
    suite keeps the others."""
    logs.mkdir(parents=True, exist_ok=True)
    if after is not None:  # ended: gone, or a zombie its parent (this session) has not waited for yet
        wait = 'while kill -0 "$0" 2>/dev/null && [ "$(cut -d" " -f3 "/proc/$0/stat")" != Z ]; do sleep 0.5; done'
        command = ["bash", "-c", f'{wait}; exec "$@"', str(after), *command]
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) > 1 and shutil.which("taskset"):
        command = ["taskset", "-c", str(cores[-1]), *command]
    with open(logs / "stdout.txt", "w") as stdout, open(logs / "stderr.txt", "w") as stderr:
        command = ["nice", "-n", "19", *command]
        return subprocess.Popen(command, cwd=PROJECT, stdout=stdout, stderr=stderr, start_new_session=True)


def finished(process, logs):
    """(exit code, stdout, stderr) of a process start_in_background started, once it has ended."""
    code = process.wait()
    return code, (logs / "stdout.txt").read_text(), (logs / "stderr.txt").read_text()


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


def two_ranks(script, arguments_of_rank, port):
    """Run `script` as the two ranks of one job on this machine without torchrun's launcher (the
    environment it would set: loopback rendezvous, gloo), rank r with arguments_of_rank(r): half
    the processes to start where what is tested happens before any work. [(exit code, output)] per rank."""
    processes = [
        subprocess.Popen(
            [sys.executable, str(PROJECT / script), *arguments_of_rank(rank)],
            cwd=PROJECT,
            env={
                **os.environ,
                "PYTHONPATH": str(PROJECT),
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
                "RANK": str(rank),
                "LOCAL_RANK": "0",
                "WORLD_SIZE": "2",
                "LOCAL_WORLD_SIZE": "1",
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in (0, 1)
    ]
    return [(process.wait(timeout=600), process.communicate()[0]) for process in processes]


def order_only_cache(clip, out, **sizes):
    """A synthetic RTime-layout cache (fixtures.synthetic_cache.write_order_only_cache) for `clip`."""
    write_order_only_cache(out, clip, asdict(clip_vendor.load(clip)[0].config), **sizes)
    return out


def train_args(cache, clip, out, head, *extra, batch_size=None):
    """train_head.py's arguments on the CPU; `batch_size` goes before `extra`, which may override it."""
    size = ["--batch-size", str(batch_size)] if batch_size else []
    return ["--cache", str(cache), "--head", head, "--out", str(out), "--clip", str(clip), "--device", "cpu"] + [
        *size,
        *extra,
    ]


def assert_same_tensors(a: dict, b: dict) -> None:
    """Two {name: tensor} dicts hold the same names, both ways, and equal tensors under each."""
    assert a.keys() == b.keys(), sorted(a.keys() ^ b.keys())
    for key in a:
        assert torch.equal(a[key], b[key]), key


def copied(source, destination):
    shutil.copytree(source, destination)
    return destination


def ids_of(demo, split):
    """The video ids of a demo split, in file order."""
    return list(json.loads((demo / "annotations" / f"{split}.json").read_text()))


def result_json(results, name):
    """The JSON of result `name` in a results folder."""
    return json.loads((results / f"{name}.json").read_text())


def tune_args(order, out, *extra):
    """tune.py's arguments for the `order` fixture's cache: one head, mlpScore."""
    return [
        "--cache",
        str(order / "cache"),
        "--clip",
        str(order / "clip.pt"),
        "--out",
        str(out),
        "--heads",
        "mlpScore",
    ] + [*extra]


def refusal(main, args):
    """The StageError a stage must raise for `args` (its exit 1, one line): returned to be checked."""
    with pytest.raises(StageError) as stop:
        main(args)
    return stop.value


def usage_error(main, args, capsys):
    """Run a stage that must refuse its flags before any work (argparse, exit 2); returns its message."""
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 2
    return capsys.readouterr().err


class RunsShell:
    """Pickled, it runs a shell command when unpickled: what a crafted checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))
