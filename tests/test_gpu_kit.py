"""The GPU kit's CPU dry run (bench/gpu_session.sh --dry-run): every bench end to end at tiny sizes,
so a change that breaks a bench breaks a test here, not on a lent GPU's scarce minutes.

The dry run is minutes of one process, and the rest of the suite mostly keeps one core busy: it
is started as soon as its test is selected (tests/conftest.py) and checked last, so it runs beside
the other tests."""

import json

from tests.helpers import PROJECT, finished, start_in_background

# what each bench's log must hold besides its exit status: the rows docs/gpu.md and the other docs pages tabulate
EXPECTED_ROWS = {
    "env": ["torch ", "| OpenCV "],
    "parity": ["| frames | 31 |", "| captions (pooled) | 7 |", "| seqTransf | "],
    "encoder": [
        "| tiny | openai | fp32 | 4 |",
        "| tiny | ours | fp32 | 4 |",
        "| tiny | ours + conv-patches | fp32 | 4 |",
    ],
    "extract": ["decode knee:", "| end-to-end extract.py (wall clock, start-up included) | 1 |"],
    "eval": ["| cpu | tightTransf | 4 |", "CLIP4Clip-style loop", "| cpu | seqTransf | 2 |"],
    "train": ["| seqTransf | ", "| tightTransf | ", "tightTransf all-pairs scoring:"],
    "scale": ["| merge | ", "| evaluate mlpScore | ", "| report | "],
}


def dry_run(folder, after=None):
    """The dry run of every bench into folder/out, started now (or once process `after` has ended):
    its process."""
    script = PROJECT / "bench" / "gpu_session.sh"
    return start_in_background(["bash", str(script), str(folder / "out"), "--dry-run", *EXPECTED_ROWS], folder, after)


def test_every_bench_of_the_gpu_session_runs_its_dry_run(background):
    process, folder = background["gpu_kit"]
    code, _, errors = finished(process, folder)
    assert code == 0, errors[-2000:]
    out = folder / "out"
    for bench, rows in EXPECTED_ROWS.items():
        log = (out / f"{bench}.txt").read_text()
        statuses = [line for line in log.splitlines() if line.startswith(f"[{bench}: exit ")]
        assert statuses and all(line.startswith(f"[{bench}: exit 0 after ") for line in statuses), log[-3000:]
        for row in rows:
            assert row in log, f"{bench}: no '{row}' in\n{log[-3000:]}"
    scale = json.loads((out / "scale.json").read_text())
    assert scale["sizes"] == [160] and scale["table"]["merge"]["160"]["seconds"] > 0
    assert (out / "scale.png").read_bytes().startswith(b"\x89PNG")
