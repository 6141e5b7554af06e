"""tune.py: every head gets the same number of trials on valid (test is never read), the best
settings are written for run_all.sh, and a search killed at any moment resumes."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import optuna
import pytest

import clip_vendor
import train_head
import tune
from corpus.feature_cache import write_meta
from fixtures.synthetic_cache import write_order_only_cache
from infra.cli import StageError
from make_demo_data import write_tiny_clip
from tests.helpers import finished, start_in_background, start_script, tune_args, usage_error, wait_until

TRAIN_ARGS = "--epochs 2 --batch-size 16 --reverse-negatives --device cpu"


def write_cache_without_test(root):
    """The order task with train and valid only, under root: a search that read test would fail.
    (cache, clip)."""
    write_tiny_clip(root / "clip.pt", seed=0, matrix_std=0.05)
    config = asdict(clip_vendor.load(root / "clip.pt")[0].config)
    write_order_only_cache(root / "cache", root / "clip.pt", config, n_train=64, n_valid=16, n_test=4, n_frames=4)
    shutil.rmtree(root / "cache" / "test")
    meta = json.loads((root / "cache" / "cache_meta.json").read_text())
    del meta["counts"]["test"], meta["contract"]["annotations"]["test"]
    write_meta(root / "cache", meta)
    return root / "cache", root / "clip.pt"


@pytest.fixture(scope="module")
def cache_without_test(tmp_path_factory):
    return write_cache_without_test(tmp_path_factory.mktemp("tune"))


def search_args(cache, clip, out, *heads):
    """Two trials per head, each two short epochs."""
    inputs = ["--cache", str(cache), "--clip", str(clip), "--out", str(out)]
    return [*inputs, "--heads", *heads, "--trials", "2", "--train-args", TRAIN_ARGS]


def trials_of(out, head):
    study = optuna.load_study(study_name=head, storage=f"sqlite:///{out / 'study.sqlite3'}")
    return study.get_trials()


def search_of_two_heads(folder, after=None):
    """Started now (or once process `after` has ended): a search of two heads, two trials each, on a
    cache of its own, into folder/tuning. Every trial is a process of its own, seconds of start-up:
    it runs beside the suite (tests/conftest.py). Its process."""
    cache, clip = write_cache_without_test(folder)
    command = [sys.executable, "tune.py", *search_args(cache, clip, folder / "tuning", "seqTransf", "mlpScore")]
    return start_in_background(command, folder, after)


def test_every_head_gets_the_same_trials_and_the_best_settings_are_written(background):
    process, folder = background["tune_search"]
    code, _, errors = finished(process, folder)
    assert code == 0, errors[-2000:]
    out = folder / "tuning"
    for head in ("seqTransf", "mlpScore"):
        trials = trials_of(out, head)
        assert len(trials) == 2 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
        assert all(sorted(t.intermediate_values) == [1, 2] for t in trials)  # every epoch went to the pruner
        best = json.loads((out / "best" / f"{head}.json").read_text())
        top = max(trials, key=lambda t: t.value)
        assert best["params"] == top.params and best["value"] == top.value == max(t.value for t in trials)
        assert best["train_args"][best["train_args"].index("--lr") + 1] == repr(top.params["lr"])
        assert "2 trials on valid" in best["train_args"][-1]
        assert set(top.params) == set(json.loads(tune.parser.get_default("space").read_text()))
    assert len({t.params["lr"] for t in trials_of(out, "seqTransf")}) == 2


def processes_naming(path):
    """Pids of running processes whose command line names `path` (a trial's train_head.py)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and str(path) in (entry / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(entry.name))
        except OSError:  # gone meanwhile
            pass
    return found


def test_a_killed_search_resumes_to_the_full_number_of_trials(cache_without_test, tmp_path):
    cache, clip = cache_without_test
    out = tmp_path / "tuning"
    args = search_args(cache, clip, out, "mlpScore")
    process = start_script("tune.py", args)
    wait_until(lambda: (out / "trials" / "mlpScore" / "trial_001").exists(), process)  # trial 0 done, 1 running
    wait_until(lambda: processes_naming(out / "trials"), process)  # trial 1's train_head.py has started
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.time() + 1  # the kernel kills it at once; a trial left running would train for seconds
    while processes_naming(out / "trials") and time.time() < deadline:
        time.sleep(0.05)
    assert not processes_naming(out / "trials"), "a trial's train_head.py outlived the killed search"
    tune.main(args)
    states = [t.state for t in trials_of(out, "mlpScore")]
    finished = [s for s in states if s in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    assert len(finished) == 2 and states.count(optuna.trial.TrialState.FAIL) == 1  # the killed trial, run again
    assert (out / "best" / "mlpScore.json").exists()


def test_a_search_space_with_an_unknown_setting_is_refused(cache_without_test, tmp_path):
    cache, _ = cache_without_test
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"learning_rate": {"low": 1e-4, "high": 1e-2}}))
    with pytest.raises(StageError, match="unknown setting 'learning_rate'"):
        tune.main(["--cache", str(cache), "--heads", "meanP", "--space", str(space), "--out", str(tmp_path / "t")])


def test_a_search_folder_is_refused_to_another_search(order, tmp_path):
    out = tmp_path / "tuning"
    tune.main(tune_args(order, out, "--trials", "1", "--train-args", "--epochs 1 --batch-size 8"))
    before = sorted(path.name for path in (out / "trials" / "mlpScore").iterdir())
    with pytest.raises(
        StageError,
        match=r"holds another search \(its train_args: that search has \['--epochs', '1', '--batch-size', '8'\]",
    ):
        tune.main(tune_args(order, out, "--trials", "2", "--train-args", "--epochs 2 --batch-size 8"))
    with pytest.raises(StageError, match=r"holds another search \(its heads: that search has"):
        tune.main(tune_args(order, out, "seqTransf", "--trials", "2", "--train-args", "--epochs 1 --batch-size 8"))
    assert sorted(path.name for path in (out / "trials" / "mlpScore").iterdir()) == before  # nothing ran


@pytest.mark.parametrize("flag", ["--head meanP", "--seed 3", "--lr=0.1", "--logit-scale 20"])
def test_train_args_may_not_override_what_the_search_sets(order, tmp_path, capsys, flag):
    message = usage_error(tune.main, tune_args(order, tmp_path / "t", "--train-args", f"--epochs 1 {flag}"), capsys)
    assert f"{flag.split()[0].split('=')[0]} is set by the search itself" in message
    assert not (tmp_path / "t").exists()


@pytest.mark.parametrize("content", [b"this is no database", "sqlite-foreign"])
def test_a_corrupt_or_foreign_study_file_is_refused_and_left_untouched(order, tmp_path, content):
    out = tmp_path / "tuning"
    out.mkdir()
    study = out / "study.sqlite3"
    if content == "sqlite-foreign":
        subprocess.run(
            [
                "python3",
                "-c",
                f"import sqlite3; c = sqlite3.connect({str(study)!r}); c.execute('create table notes (x)'); c.commit()",
            ],
            check=True,
        )
    else:
        study.write_bytes(content)
    before = study.read_bytes()
    with pytest.raises(StageError, match="not a readable SQLite database|not an optuna study") as exit_info:
        tune.main(tune_args(order, out, "--trials", "1", "--train-args", "--epochs 1"))
    assert "\n" not in str(exit_info.value) and study.read_bytes() == before


def test_a_log_scale_search_range_from_zero_is_refused(order, tmp_path):
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"lr": {"low": 0, "high": 1e-2, "log": True}}))
    with pytest.raises(
        StageError, match=r"space.json: lr is searched on a log scale: its low bound must be above 0, not 0"
    ):
        tune.main(tune_args(order, tmp_path / "t", "--space", str(space)))


def test_the_flags_a_search_sets_or_tunes_are_train_heads_own():
    """tune.py passes these to train_head.py: a flag renamed there must fail here, not at trial 1."""
    flags = {option for action in train_head.parser._actions for option in action.option_strings}
    assert set(tune.SEARCH_OWNED_FLAGS) <= flags
    assert tune.FLAGS == {
        "lr": "--lr",
        "weight_decay": "--weight-decay",
        "warmup": "--warmup",
        "logit_scale": "--logit-scale",
    }
    assert set(tune.FLAGS.values()) <= flags
