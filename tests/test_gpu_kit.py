"""The GPU kit's CPU dry run (bench/gpu_session.sh --dry-run): every bench end to end at tiny sizes,
so a change that breaks a bench breaks a test here, not on a lent GPU's scarce minutes."""

import json
import subprocess
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]
# what each bench's log must hold besides its exit status: the rows the README's GPU tables are made of
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


def test_every_bench_of_the_gpu_session_runs_its_dry_run(tmp_path):
    out = tmp_path / "out"
    completed = subprocess.run(
        ["bash", "bench/gpu_session.sh", str(out), "--dry-run", *EXPECTED_ROWS],
        cwd=PROJECT,
        capture_output=True,
        text=True,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    for bench, rows in EXPECTED_ROWS.items():
        log = (out / f"{bench}.txt").read_text()
        statuses = [line for line in log.splitlines() if line.startswith(f"[{bench}: exit ")]
        assert statuses and all(line.startswith(f"[{bench}: exit 0 after ") for line in statuses), log[-3000:]
        for row in rows:
            assert row in log, f"{bench}: no '{row}' in\n{log[-3000:]}"
    scale = json.loads((out / "scale.json").read_text())
    assert scale["sizes"] == [160] and scale["table"]["merge"]["160"]["seconds"] > 0
    assert (out / "scale.png").read_bytes().startswith(b"\x89PNG")
