"""Tune each head's training settings on valid, with the same budget for every head.

    python tune.py --cache OUT --clip ViT-B-32.pt --heads seqTransf tightTransf --trials 20 --out tuning/
    python tune.py ... --space tune_space.json --train-args "--epochs 5 --reverse-negatives"

A fair comparison gives each head the same search: optuna's TPE sampler (seeded) proposes the
settings of the search space (a small JSON file: lr, weight decay, warm-up and temperature by
default), each trial trains with train_head.py on train and is scored on valid by the selection
metric after every epoch, and a median pruner stops trials that fall below the median of earlier
trials at the same epoch. Test is never read. Every head gets --trials finished trials (completed
or pruned). Trials are stored in OUT/study.sqlite3, so a search killed at any moment resumes with
the same command. The best settings of each head are written to OUT/best/{head}.json, where
run_all.sh --tune reads them.
"""

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import optuna

from heads.architectures import HEADS
from infra.file_io import atomic_write_json, exclusive_folder
from infra.runtime import HelpFormatter

SCRIPT = Path(__file__).resolve().parent / "train_head.py"
FLAGS = {"lr": "--lr", "weight_decay": "--weight-decay", "warmup": "--warmup", "logit_scale": "--logit-scale"}

parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
add = parser.add_argument
add("--cache", required=True, type=Path, help="feature cache written by extract.py (its train and valid splits)")
add("--clip", type=Path, help="the cache's CLIP checkpoint (seqTransf/tightTransf start from its text layers)")
add("--heads", nargs="+", required=True, choices=sorted(HEADS), help="heads to tune, each with the same budget")
add("--trials", type=int, default=20, help="finished trials (completed or pruned) per head")
add("--space", type=Path, default=Path(__file__).resolve().parent / "tune_space.json", help="the search space")
add("--out", required=True, type=Path, help="folder for study.sqlite3, the trials' runs and best/{head}.json")
add("--train-args", default="", help="train_head.py settings every trial shares (e.g. --epochs 5 --reverse-negatives)")
add("--seed", type=int, default=0, help="seeds the sampler; every trial trains with train_head.py's --seed 0")
add("--startup-trials", type=int, default=3, help="trials before the pruner may stop one")


def main(argv=None):
    args = parser.parse_args(argv)
    if args.trials < 1:
        parser.error(f"--trials {args.trials}: at least 1")
    space = read_space(args.space)
    with exclusive_folder(args.out):
        storage = optuna.storages.RDBStorage(f"sqlite:///{(args.out / 'study.sqlite3').resolve()}")
        for head in args.heads:
            tune_head(args, head, space, storage)


def read_space(path):
    """{setting: {"low", "high", "log"}}; refuses a setting train_head.py does not take, or bad bounds."""
    try:
        space = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        sys.exit(f"--space {path}: {err}")
    for name, bounds in space.items():
        if name not in FLAGS:
            sys.exit(f"--space {path}: unknown setting {name!r} (known: {', '.join(FLAGS)})")
        if not (isinstance(bounds, dict) and bounds.get("low", math.nan) < bounds.get("high", math.nan)):
            sys.exit(f'--space {path}: {name} needs {{"low": a, "high": b}} with a < b')
    return space


def tune_head(args, head, space, storage):
    sampler = optuna.samplers.TPESampler(seed=args.seed)
    pruner = optuna.pruners.MedianPruner(n_startup_trials=args.startup_trials, n_warmup_steps=1)
    study = optuna.create_study(
        study_name=head, storage=storage, sampler=sampler, pruner=pruner, direction="maximize", load_if_exists=True
    )
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        # a trial of a killed search (this folder is locked: no other search runs it): run it again
        storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    while len(study.get_trials(deepcopy=False, states=finished)) < args.trials:
        trial = study.ask({name: distribution(bounds) for name, bounds in space.items()})
        outcome = run_trial(args, head, trial)
        if outcome is None:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, outcome)
        done = study.get_trials(deepcopy=False, states=finished)
        print(
            f"[{head}] trial {trial.number}: {trial.params} -> "
            f"{'pruned' if outcome is None else f'{outcome:.2f}'} ({len(done)}/{args.trials})",
            flush=True,
        )
    write_best(args, head, study, space)


def distribution(bounds):
    return optuna.distributions.FloatDistribution(bounds["low"], bounds["high"], log=bool(bounds.get("log")))


def run_trial(args, head, trial):
    """Train one trial in its own process, report each epoch's selection metric to the pruner as
    train_head.py logs it, and stop the run if pruned. Returns the best metric, or None if pruned."""
    out = args.out / "trials" / head / f"trial_{trial.number:03d}"
    command = [
        sys.executable,
        str(SCRIPT),
        "--cache",
        str(args.cache),
        "--head",
        head,
        "--out",
        str(out),
        *(["--clip", str(args.clip)] if args.clip else []),
        *shlex.split(args.train_args),
        *as_flags(trial.params),
    ]
    errors = out.with_suffix(".stderr.txt")
    errors.parent.mkdir(parents=True, exist_ok=True)
    with open(errors, "w") as error_file:
        process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=error_file, env={**os.environ, "PYTHONPATH": str(SCRIPT.parent)}
        )
        records = watch(process, out / "log.jsonl", trial)
    if records is None:
        return None
    if process.returncode != 0:
        sys.exit(f"trial {trial.number} of {head} failed ({shlex.join(command)}):\n{errors.read_text()}")
    return max(record["selection"] for record in records)


def as_flags(params):
    """A trial's settings as train_head.py arguments: ["--lr", "0.001", ...]."""
    return [value for name, x in params.items() for value in (FLAGS[name], repr(x))]


def watch(process, log, trial):
    """Report each epoch train_head.py logs to the pruner; kill the run if pruned (returns None),
    else wait for it to end and return its log."""
    reported = 0
    while True:
        finished = process.poll() is not None
        records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        for record in records[reported:]:
            trial.report(record["selection"], record["epoch"])
            if trial.should_prune():
                process.kill()
                process.wait()
                return None
        reported = len(records)
        if finished:
            return records
        time.sleep(0.2)


def write_best(args, head, study, space):
    best = study.best_trial
    states = [trial.state for trial in study.get_trials(deepcopy=False)]
    note = (
        f"tune.py: optuna TPE (seed {args.seed}), {args.trials} trials on valid, median pruning; best of "
        f"{states.count(optuna.trial.TrialState.COMPLETE)} completed"
    )
    (args.out / "best").mkdir(exist_ok=True)
    atomic_write_json(
        args.out / "best" / f"{head}.json",
        {
            "head": head,
            "params": best.params,
            "value": best.value,
            "trial": best.number,
            "space": space,
            "train_args": as_flags(best.params) + ["--settings-note", note],
            "shared_train_args": args.train_args,
            "trials": {
                "completed": states.count(optuna.trial.TrialState.COMPLETE),
                "pruned": states.count(optuna.trial.TrialState.PRUNED),
                "failed": states.count(optuna.trial.TrialState.FAIL),
            },
        },
    )
    print(
        f"[{head}] best: trial {best.number}, {best.params}, valid {best.value:.2f} -> "
        f"{args.out / 'best' / f'{head}.json'}"
    )


if __name__ == "__main__":
    main()
