"""How every stage script meets its user: the flags' help and types, one error type for input a
user can fix, and one entry point that turns it into one line and a documented exit code.

Exit codes of every stage script (extract, verify, train_head, evaluate, report, search, tune):
  0    done;
  1    a StageError: an input the user can fix (a file, a record, a flag whose value needs the data
       to check), named in one line on stderr, prefixed with the script's name;
  2    a usage error found before any work (argparse: a flag missing, malformed or out of range);
  130  interrupted (Ctrl-C, or the run_all.sh that started it is gone); what was finished is kept,
       and the same command resumes.

Under run_all.sh (its pid in RUN_ALL_DRIVER), a stage never outlives its driver: a thread watches
the driver and interrupts the stage as Ctrl-C would once it is gone, even killed with SIGKILL
(killed outright if the interruption has not ended it after DRIVER_GRACE_S).

Library code raises a StageError subclass (CacheError, AnnotationError, VideoError, CheckpointError,
ResultError, OutOfSpace, FolderLocked, NotWritable) and never exits; only `run` does.
"""

import argparse
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
DRIVER_ENV = "RUN_ALL_DRIVER"
DRIVER_GRACE_S = 60.0  # for the interrupted stage to save its state and release its locks


class StageError(Exception):
    """Input a user can fix; the message says what was wrong, where (file, record, flag), and what to do."""


def run(main: Callable[[], None], on_interrupt: str = "interrupted; rerun the same command to resume") -> None:
    """Every stage script's entry point: a StageError is one line on stderr and exit 1, Ctrl-C one
    line and exit 130, never a traceback. A Ctrl-C is remembered as well as raised: one that lands
    in a destructor (numpy's NpzFile.__del__ in CI) is printed as "ignored" and lost as an
    exception, and the stage would otherwise end 0 as if nobody had pressed it."""
    if os.environ.get(DRIVER_ENV):
        watch_driver(int(os.environ[DRIVER_ENV]))
    pressed = threading.Event()

    def interrupt(signum, frame):
        pressed.set()
        signal.default_int_handler(signum, frame)

    previous = signal.signal(signal.SIGINT, interrupt)
    try:
        main()
        if pressed.is_set():
            raise KeyboardInterrupt
    except StageError as err:
        print(f"{Path(sys.argv[0]).name}: {err}", file=sys.stderr)
        sys.exit(EXIT_ERROR)
    except KeyboardInterrupt:
        print(on_interrupt, file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    finally:
        signal.signal(signal.SIGINT, previous)
        release_process_group()


def release_process_group() -> None:
    """Destroy a torch.distributed process group a stage that stopped left behind: left to the
    interpreter's teardown, gloo's threads abort it ("terminate called", exit -6 instead of the
    stage's own code). torch is only looked up here, never imported: report.py has none."""
    distributed = sys.modules.get("torch.distributed")
    if distributed is not None and distributed.is_available() and distributed.is_initialized():
        distributed.destroy_process_group()


def process_start(pid: int) -> str | None:
    """When a live process started (its /proc start time), or None if it is gone or a zombie: a pid
    reused by another process reads as another start."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else fields[19]


def watch_driver(pid: int, interval: float = 0.5) -> None:
    """Interrupt this process as Ctrl-C would once the driver `pid` is gone; kill it if that has not
    ended it within DRIVER_GRACE_S (a main thread blocked in a collective never sees the interrupt)."""
    started = process_start(pid)

    def watch():
        while started is not None and process_start(pid) == started:
            time.sleep(interval)
        stage = Path(sys.argv[0]).name
        print(f"{stage}: run_all.sh (pid {pid}), which started this, is gone: stopping", file=sys.stderr)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # wakes a main thread that waits
        time.sleep(DRIVER_GRACE_S)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, daemon=True, name="driver-watch").start()


def whole_number(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least `minimum` (argparse names the flag on a refusal,
    exit 2), so a count of -1 or 0 never reaches the work."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value}: must be at least {minimum}")
        return value

    return parse


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every stage's --help: the module docstring's layout kept, and each flag's default shown
    (not for flags without one)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is argparse.SUPPRESS or action.required:
            return action.help
        return super()._get_help_string(action)
