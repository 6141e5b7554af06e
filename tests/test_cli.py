"""One error mechanism for every stage (infra/cli.py): library code raises a StageError and never
exits; a stage's entry point turns it into one line on stderr and exit 1, Ctrl-C into exit 130,
and a usage error found before any work is argparse's exit 2."""

import ast
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

import train_head
from corpus.annotations import AnnotationError
from corpus.feature_cache import CacheError
from corpus.video_frames import VideoError
from evaluation.results import ResultError
from heads.checkpoints import CheckpointError
from infra import cli
from infra.cli import StageError
from infra.file_io import FolderLocked, NotWritable, OutOfSpace
from tests.helpers import PROJECT, train_args

STAGE_SCRIPTS = ("extract.py", "verify.py", "train_head.py", "evaluate.py", "report.py", "search.py", "tune.py")


@pytest.mark.parametrize(
    "error",
    [CacheError, AnnotationError, VideoError, CheckpointError, ResultError, OutOfSpace, FolderLocked, NotWritable],
)
def test_every_domain_error_is_a_stage_error_and_ends_in_one_line_and_exit_1(error, monkeypatch, capsys):
    assert issubclass(error, StageError)
    monkeypatch.setattr(sys, "argv", ["stage.py"])

    def main():
        raise error.__new__(error)  # the message is set below: some take other arguments

    def failing():
        failure = error.__new__(error)
        Exception.__init__(failure, "data/x.json: what was wrong, and what to do")
        raise failure

    with pytest.raises(SystemExit) as stop:
        cli.run(failing)
    assert stop.value.code == 1
    assert capsys.readouterr().err == "stage.py: data/x.json: what was wrong, and what to do\n"


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys):
    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as stop:
        cli.run(interrupted, "interrupted; the epochs finished so far are kept")
    assert stop.value.code == 130 and capsys.readouterr().err == "interrupted; the epochs finished so far are kept\n"


def test_a_ctrl_c_swallowed_on_the_way_still_ends_in_exit_130(capsys):
    """In CI a Ctrl-C landed in numpy's NpzFile.__del__, where Python prints an exception as
    ignored and drops it: extract.py finished and exited 0, as if nobody had pressed it."""

    def swallowing():
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # the handler runs here
        except KeyboardInterrupt:
            pass  # what a destructor does with it
        return "finished"

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(SystemExit) as stop:
        cli.run(swallowing)
    assert stop.value.code == 130 and "interrupted" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is before  # the stage's handler goes with it


def test_no_library_code_exits(tmp_path):
    """sys.exit and SystemExit belong to infra/cli.py's entry point alone, and parser.error to a
    stage's check_* functions (before any work); everything else raises."""
    allowed_exits = {"infra/cli.py", "clip_vendor/fetch_vocab.py", "heads/__main__.py"}  # the last two: setup tools
    found = []
    for path in sorted(PROJECT.glob("**/*.py")):
        relative = path.relative_to(PROJECT).as_posix()
        if relative.split("/")[0] in {".venv", "tests", "bench", "fixtures"} or relative in allowed_exits:
            continue
        tree = ast.parse(path.read_text())
        for function in [node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)]:
            for call in [node for node in ast.walk(function) if isinstance(node, ast.Call | ast.Raise)]:
                text = ast.unparse(call)
                if "sys.exit(" in text or "SystemExit" in text:
                    found.append(f"{relative}:{call.lineno} {function.name}: {text[:60]}")
                if text.startswith("parser.error(") and not function.name.startswith("check_"):
                    found.append(f"{relative}:{call.lineno} {function.name}: parser.error outside a check")
    assert found == []


def test_every_stage_script_enters_through_the_one_entry_point():
    for script in STAGE_SCRIPTS:
        tail = (PROJECT / script).read_text().rstrip().splitlines()[-1]
        assert tail.startswith("    cli.run(main"), script


def test_a_missing_pair_list_is_one_line_naming_it_not_a_traceback(demo_cache, tmp_path):
    """Once a FileNotFoundError traceback out of evaluate.py."""
    cache = tmp_path / "cache"
    shutil.copytree(demo_cache, cache)
    (cache / "test" / "test_pairs.csv").unlink()
    completed = subprocess.run(
        [sys.executable, "evaluate.py", "--cache", str(cache), "--head", "meanP", "--out", str(tmp_path / "r.json")],
        cwd=PROJECT,
        capture_output=True,
        text=True,
    )
    assert completed.returncode == 1
    assert (
        completed.stderr == f"evaluate.py: {cache / 'test' / 'test_pairs.csv'} is missing; extract the cache again "
        "into a new --out (or run verify.py to see what else is wrong)\n"
    )
    assert not (tmp_path / "r.json").exists()


def test_a_checkpoint_that_cannot_be_saved_is_one_line_not_a_traceback(order, tmp_path, monkeypatch, capsys):
    """Once a CheckpointError traceback out of train_head.py's save."""

    def unsavable(*args, **kwargs):
        raise CheckpointError("the temperature is not finite; nothing saved")

    monkeypatch.setattr(train_head, "head_checkpoint", unsavable)
    monkeypatch.setattr(sys, "argv", ["train_head.py"])
    args = train_args(order / "cache", order / "clip.pt", tmp_path / "run", "mlpScore", "--epochs", "1", batch_size=8)
    with pytest.raises(SystemExit) as stop:
        cli.run(lambda: train_head.main(args))
    assert stop.value.code == 1
    assert capsys.readouterr().err == "train_head.py: the temperature is not finite; nothing saved\n"
    assert not (tmp_path / "run" / "best.pt").exists()


def test_a_stage_stops_once_the_run_all_that_started_it_is_killed(tmp_path):
    """Round four: after a SIGKILL or SIGHUP of run_all.sh its runs went on as orphans, and a rerun
    then failed on their locks. A stage started under run_all.sh (RUN_ALL_DRIVER) watches the driver
    and stops as Ctrl-C stops it (exit 130, its state kept) once the driver is gone."""
    driver = subprocess.Popen(["sleep", "300"])
    stage = subprocess.Popen(
        [sys.executable, "-c", "import time; from infra import cli; cli.run(lambda: time.sleep(120))"],
        cwd=PROJECT,
        env={**os.environ, "PYTHONPATH": str(PROJECT), cli.DRIVER_ENV: str(driver.pid)},
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.0)
    assert stage.poll() is None  # the driver is alive: the stage works on
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    _, stderr = stage.communicate(timeout=30)
    assert stage.returncode == cli.EXIT_INTERRUPTED
    assert f"run_all.sh (pid {driver.pid}), which started this, is gone: stopping" in stderr


def test_a_zombie_or_a_reused_pid_is_not_a_live_driver():
    process = subprocess.Popen(["sleep", "300"])
    started = cli.process_start(process.pid)
    assert started is not None and started == cli.process_start(process.pid)
    process.kill()
    time.sleep(0.2)  # not reaped yet: a zombie
    assert cli.process_start(process.pid) is None
    process.wait()


def test_a_process_knows_how_long_ago_it_started():
    """The cost table counts each stage's start-up (issue 29) from the process's own start time."""
    code = "import time; time.sleep(0.6); from infra.runtime import process_seconds; print(process_seconds())"
    started = time.monotonic()
    completed = subprocess.run([sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True, check=True)
    elapsed = time.monotonic() - started
    assert 0.6 <= float(completed.stdout) <= elapsed + 0.02  # clock ticks are 10 ms
