"""bench.isolated: a stage's result and peak come back from its own process; a failing one stops the bench."""

import sys

import numpy as np
import pytest

from bench.isolated import measured


def allocate_and_sum(n_bytes):
    return int(np.ones(n_bytes, dtype=np.uint8).sum())


def exit_like_argparse():
    sys.exit(2)


def test_result_and_peak_come_from_the_child():
    result, peak, gpu_peak = measured(allocate_and_sum, (300 * 2**20,), "cpu")
    assert result == 300 * 2**20
    assert peak >= 300 * 2**20  # the child touched every byte of the array
    assert gpu_peak is None


def test_a_child_that_exits_stops_the_bench_instead_of_hanging():
    with pytest.raises(SystemExit, match=r"test_bench_isolated\.exit_like_argparse failed \(exit 2\)"):
        measured(exit_like_argparse, (), "cpu")
