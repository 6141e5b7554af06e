"""How every stage script meets its user: the flags' help and types, one error type for input a
user can fix, and one entry point that turns it into one line and a documented exit code.

Exit codes of every stage script (extract, verify, train_head, evaluate, report, search, tune):
  0    done;
  1    a StageError: an input the user can fix (a file, a record, a flag whose value needs the data
       to check), named in one line on stderr, prefixed with the script's name;
  2    a usage error found before any work (argparse: a flag missing, malformed or out of range);
  130  interrupted (Ctrl-C); what was finished is kept, and the same command resumes.

Library code raises a StageError subclass (CacheError, AnnotationError, VideoError, CheckpointError,
ResultError, OutOfSpace, FolderLocked, NotWritable) and never exits; only `run` does.
"""

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130


class StageError(Exception):
    """Input a user can fix; the message says what was wrong, where (file, record, flag), and what to do."""


def run(main: Callable[[], None], on_interrupt: str = "interrupted; rerun the same command to resume") -> None:
    """Every stage script's entry point: a StageError is one line on stderr and exit 1, Ctrl-C one
    line and exit 130, never a traceback."""
    try:
        main()
    except StageError as err:
        print(f"{Path(sys.argv[0]).name}: {err}", file=sys.stderr)
        sys.exit(EXIT_ERROR)
    except KeyboardInterrupt:
        print(on_interrupt, file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)


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
