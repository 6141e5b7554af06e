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
run_all.sh --tune reads them. The settings a space may name, and their flags, are train_head.py's
own (heads/training.py: TUNABLE). Exit codes: infra/cli.py.
"""

import argparse
import contextlib
import ctypes
import json
import math
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna

from corpus.feature_cache import content_digest, read_meta
from heads.architectures import HEADS
from heads.checkpoints import LOG
from heads.training import tunable_flags
from infra import cli
from infra.cli import HelpFormatter, StageError, whole_number
from infra.file_io import atomic_write_json, exclusive_folder
from infra.records import first_difference

SCRIPT = Path(__file__).resolve().parent / "train_head.py"
PR_SET_PDEATHSIG = 1  # prctl option: the signal a process gets when its parent dies
FLAGS = tunable_flags()  # {setting: its train_head.py flag}

parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
add = parser.add_argument
add("--cache", required=True, type=Path, help="feature cache written by extract.py (its train and valid splits)")
add("--clip", type=Path, help="the cache's CLIP checkpoint (seqTransf/tightTransf start from its text layers)")
add("--backbone", help="instead of --clip, for a cache of another backbone: KIND:PATH (docs/backbones.md)")
add("--heads", nargs="+", required=True, choices=sorted(HEADS), help="heads to tune, each with the same budget")
add("--trials", type=whole_number(1), default=20, help="finished trials (completed or pruned) per head")
add("--space", type=Path, default=Path(__file__).resolve().parent / "tune_space.json", help="the search space")
add("--out", required=True, type=Path, help="folder for study.sqlite3, the trials' runs and best/{head}.json")
add("--train-args", default="", help="train_head.py settings every trial shares (e.g. --epochs 5 --reverse-negatives)")
add("--seed", type=int, default=0, help="seeds the sampler; every trial trains with train_head.py's --seed 0")
add("--startup-trials", type=whole_number(0), default=3, help="trials before the pruner may stop one")


# train_head.py flags a trial's --train-args may not give: the search sets them itself
# (tests/test_tune.py holds them to train_head.py's parser).
SEARCH_OWNED_FLAGS = ("--head", "--seed", "--out", "--cache", "--clip", "--backbone", "--settings-note")
DEFINITION = "search.json"  # what defines the search in OUT; a rerun with other values is refused
STUDY = "study.sqlite3"
OPTUNA_TABLES = {"studies", "trials", "version_info"}


def main(argv=None):
    args = parser.parse_args(argv)
    space = read_space(args.space)
    check_train_args(args.train_args, space)
    cache_digest = content_digest(read_meta(args.cache))
    definition = {
        "cache_content_sha256": cache_digest,
        "heads": args.heads,
        "space": space,
        "train_args": shlex.split(args.train_args),
        "sampler_seed": args.seed,
        "startup_trials": args.startup_trials,
    }
    with exclusive_folder(args.out):
        storage_path = args.out / STUDY
        check_storage(storage_path)
        check_definition(args.out, definition)
        storage = optuna.storages.RDBStorage(f"sqlite:///{storage_path.resolve()}")
        for head in args.heads:
            tune_head(args, head, space, storage)


def check_train_args(train_args, space):
    """Refuse --train-args that would override what the search sets (the head, the seed, where a
    trial runs, and every tuned setting), naming the flag."""
    try:
        tokens = shlex.split(train_args)
    except ValueError as err:
        parser.error(f"--train-args {train_args!r}: {err}")
    owned = {*SEARCH_OWNED_FLAGS, *(FLAGS[name] for name in space)}
    for token in tokens:
        flag = token.split("=", 1)[0]
        if flag in owned:
            parser.error(
                f"--train-args {train_args!r}: {flag} is set by the search itself (the head, the seed and the tuned "
                f"settings {', '.join(FLAGS[name] for name in space)}); leave it out"
            )


def check_definition(out, definition):
    """A search folder belongs to one search: a rerun must name the same cache, heads, space and
    train args as the run that made it (more trials are welcome), else it is refused."""
    path = out / DEFINITION
    if not path.exists():
        if (out / STUDY).exists():
            raise StageError(f"{out / STUDY} exists without {path}: it belongs to another search; use a new --out")
        atomic_write_json(path, definition)
        return
    difference = first_difference(json.loads(path.read_text()), definition, ("that search has", "this run has"))
    if difference:
        raise StageError(
            f"{out} holds another search (its {difference}); rerun with the same settings to resume it, "
            "or use a new --out"
        )


def check_storage(path):
    """A study file that exists must be an optuna SQLite database; anything else is refused in one
    line, read-only: it is never written into."""
    if not path.exists():
        return
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True)) as connection:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as err:
        message = f"{path} is not a readable SQLite database ({err}); it was not touched: use a new --out"
        raise StageError(message) from None
    if not OPTUNA_TABLES <= tables:
        raise StageError(
            f"{path} is an SQLite database but not an optuna study (no {', '.join(sorted(OPTUNA_TABLES))} tables)"
        )


def read_space(path):
    """{setting: {"low", "high", "log"}}; refuses a setting train_head.py does not take, or bad bounds
    (a log range must start above 0)."""
    try:
        space = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise StageError(f"--space {path}: {err}") from None
    for name, bounds in space.items():
        if name not in FLAGS:
            raise StageError(f"--space {path}: unknown setting {name!r} (known: {', '.join(FLAGS)})")
        if not (isinstance(bounds, dict) and bounds.get("low", math.nan) < bounds.get("high", math.nan)):
            raise StageError(f'--space {path}: {name} needs {{"low": a, "high": b}} with a < b')
        if bounds.get("log") and not bounds["low"] > 0:
            raise StageError(
                f"--space {path}: {name} is searched on a log scale: its low bound must be above 0, not {bounds['low']}"
            )
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


def trial_command(args, head, out, params):
    """The train_head.py command of one trial: the search's cache and backbone, the shared
    --train-args, then the trial's settings."""
    return [
        sys.executable,
        str(SCRIPT),
        "--cache",
        str(args.cache),
        "--head",
        head,
        "--out",
        str(out),
        *(["--clip", str(args.clip)] if args.clip else []),
        *(["--backbone", args.backbone] if args.backbone else []),
        *shlex.split(args.train_args),
        *as_flags(params),
    ]


def run_trial(args, head, trial):
    """Train one trial in its own process, report each epoch's selection metric to the pruner as
    train_head.py logs it, and stop the run if pruned. Returns the best metric, or None if pruned."""
    out = args.out / "trials" / head / f"trial_{trial.number:03d}"
    command = trial_command(args, head, out, trial.params)
    errors = out.with_suffix(".stderr.txt")
    errors.parent.mkdir(parents=True, exist_ok=True)
    with open(errors, "w") as error_file:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=error_file, preexec_fn=die_with_parent)
        records = watch(process, out / LOG, trial)
    if records is None:
        return None
    if process.returncode != 0:
        raise StageError(f"trial {trial.number} of {head} failed ({shlex.join(command)}):\n{errors.read_text()}")
    return max(record["selection"] for record in records)


def die_with_parent():
    """In the trial's process before it starts: the kernel kills it when tune.py dies, even by kill -9,
    so no train_head.py is left running for nobody (Linux's PR_SET_PDEATHSIG)."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


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
    cli.run(main)
