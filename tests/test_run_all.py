"""run_all.sh at the scale users run: the heads x seeds matrix N at a time (each run its own log,
one line when it ends, the first failure stopping the rest), the same report as one at a time,
and the matrix printed as self-contained commands for any scheduler.

The demo's matrix takes a minute of subprocesses: it is started as soon as a test here is selected
(tests/conftest.py), followed by the same matrix one at a time and one that fails, each in a copy
of its data and cache; these tests run last, so all of it runs beside the rest of the suite."""

import fcntl
import json
import re
import shlex
import subprocess

import pytest

from evaluation.results import read_result
from tests.demo_numbers import RECORD, run_numbers
from tests.helpers import PROJECT, finished, start_in_background
from tests.peers_restated import binary_similarities, carebench_binary

# A small matrix keeps the suite fast (the full demo is what `bash run_all.sh` runs): one seed of
# an order-aware head and of an order-blind one.
MATRIX = ["--heads", "seqTransf mlpScore", "--seeds", "0"]


def run_all(work, *args):
    command = ["bash", str(PROJECT / "run_all.sh"), "--work", str(work), *args]
    return subprocess.Popen(command, cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def outcome(process):
    stdout, stderr = process.communicate()
    return process.returncode, stdout, stderr


# Drivers run in copies of the demo matrix's work folder once it has ended, beside the rest of the
# suite: {name: their flags}
AFTER_THE_MATRIX = {"one_at_a_time": ["--jobs", "1"], "failing": ["--jobs", "2", "--train-args", "--frames 3"]}


def demo_matrix(folder, after=None):
    """Started now (or once process `after` has ended): the demo's matrix two at a time into
    folder/work, from scratch; once it has ended well, the driver again on it, then each driver of
    AFTER_THE_MATRIX in a copy of its data and cache, one after another (the chain keeps one core
    busy, and the suite the other). Each driver's output and exit code go to folder/{its name}/.
    Its process."""
    work = folder / "work"

    def driver(name, work_folder, flags):
        logs = folder / name
        logs.mkdir()
        command = shlex.join(["bash", str(PROJECT / "run_all.sh"), "--work", str(work_folder), *MATRIX, *flags])
        out, err, code = (shlex.quote(str(logs / file)) for file in ("stdout.txt", "stderr.txt", "code"))
        return f"{command} > {out} 2> {err}; echo $? > {code}"

    matrix_code = shlex.quote(str(folder / "matrix" / "code"))
    lines = [f'{driver("matrix", work, ["--jobs", "2"])}; [ "$(cat {matrix_code})" = 0 ] || exit 1']
    # the driver after a cluster's array, on the finished work folder (before the copies are made)
    lines.append(f"touch {shlex.quote(str(folder / 'again_started'))}; {driver('again', work, ['--skip-runs'])}")
    for name, flags in AFTER_THE_MATRIX.items():
        copy = shlex.quote(str(folder / name / "work"))
        sources = " ".join(shlex.quote(str(work / part)) for part in ("demo", "cache"))
        lines.append(f"mkdir -p {copy} && cp -r {sources} {copy} && ({driver(name, folder / name / 'work', flags)})")
    return start_in_background(["bash", "-c", "\n".join(lines)], folder, after)


def driver_outcome(folder, name):
    """(exit code, stdout, stderr) of a driver the demo matrix's chain ran."""
    logs = folder / name
    return int((logs / "code").read_text()), (logs / "stdout.txt").read_text(), (logs / "stderr.txt").read_text()


@pytest.fixture(scope="module")
def chain(background):
    """The folder of the demo matrix's chain (started at collection), once it has ended."""
    process, folder = background["demo_matrix"]
    code, stdout, stderr = finished(process, folder)
    matrix = driver_outcome(folder, "matrix") if (folder / "matrix" / "code").exists() else (None, "", "")
    assert code == 0, stdout[-2000:] + stderr[-2000:] + matrix[1][-3000:] + matrix[2][-3000:]
    return folder


@pytest.fixture(scope="module")
def demo_work(chain):
    """The demo's matrix run two at a time: (work folder, its output)."""
    code, stdout, stderr = driver_outcome(chain, "matrix")
    assert code == 0, stdout[-3000:] + stderr[-3000:]
    return chain / "work", stdout


def test_demo_run_shows_the_order_aware_head_above_the_order_blind_ones_on_hard(demo_work):
    work, stdout = demo_work
    assert f"Report: {work}/report/report.md" in stdout
    assert "running 2 runs, 2 at a time" in stdout and stdout.count(" done in ") == 2  # one line per run
    for head in ("seqTransf", "mlpScore"):  # each run's own log: its training, then its evaluation
        log = (work / "logs" / f"{head}_seed0.log").read_text()
        assert f"{head}: " in log and "trainable parameters" in log and f"wrote {work}/results/{head}_seed0.json" in log
    hard = json.loads((work / "report" / "report_numbers.json").read_text())["datasets"]["RTime test"]["tables"]
    hard = hard["hard/t2v"]
    for blind in ("meanP zero-shot", "mlpScore"):  # V and flip(V) score alike: every Hard query tied
        assert hard[blind]["n_tied"] == hard[blind]["n_queries"]
    assert hard["seqTransf"]["R@1"]["mean"] > hard["meanP zero-shot"]["R@1"]["mean"] + 5.0, hard
    assert hard["seqTransf"]["n_tied"] == 0


def test_demo_report_sets_carebench_binary_beside_ours_as_the_peer_computes_it(demo_work):
    work, _ = demo_work
    numbers = json.loads((work / "report" / "report_numbers.json").read_text())["datasets"]["RTime test"]
    for method, name in (
        ("meanP zero-shot", "meanP"),
        ("seqTransf", "seqTransf_seed0"),
        ("mlpScore", "mlpScore_seed0"),
    ):
        run = read_result(work / "results" / f"{name}.json")
        peer = carebench_binary(binary_similarities(run.load_array("hard_scores"), run.load_array("hard_ids")))
        for direction in ("t2v", "v2t"):
            reported = numbers["conventions"]["carebench"][method][f"binary/{direction}"]
            assert reported["accuracy"]["mean"] == pytest.approx(100.0 * peer[f"{direction}_acc"], abs=1e-9)
            assert reported["n_pairs"]["mean"] == 24  # the demo's 24 test videos, the forward side only


def test_the_runs_the_suite_repeats_give_the_readmes_recorded_demo_numbers(demo_work):
    """The runs the chain trains with the demo's settings (seed 0 of seqTransf and mlpScore) and
    meanP zero-shot give exactly the numbers docs/demo_numbers.json recorded from `bash run_all.sh`,
    whose texts the README quotes (tests/test_readme.py)."""
    work, _ = demo_work
    recorded = json.loads(RECORD.read_text())["runs"]
    for name in ("meanP", "seqTransf_seed0", "mlpScore_seed0"):
        numbers = run_numbers(read_result(work / "results" / f"{name}.json"))
        assert numbers.keys() == recorded[name].keys()
        for key, value in recorded[name].items():
            assert numbers[key] == pytest.approx(value, abs=1e-9), (name, key)


def test_a_failed_run_stops_the_others(chain):
    code, _, stderr = driver_outcome(chain, "failing")
    failing_work = chain / "failing" / "work"
    assert code == 1 and "stopping the 1 other running run(s)." in stderr
    failed = next(head for head in ("seqTransf", "mlpScore") if f"run {head}_seed0 failed (exit 2); see " in stderr)
    assert "--frames 3: use an even number" in (failing_work / "logs" / f"{failed}_seed0.log").read_text()
    assert "  | " in stderr and "--frames 3: use an even number" in stderr  # the log's end, where the reason is
    assert not (failing_work / "report").exists()


def test_the_printed_matrix_is_one_self_contained_resumable_command_per_run(demo_work, tmp_path):
    work, _ = demo_work
    code, stdout, _ = outcome(run_all(work, "--heads", "seqTransf tightTransf", "--seeds", "0 1", "--print-runs"))
    lines = stdout.strip().split("\n")
    assert code == 0 and len(lines) == 4 and all(line.startswith(f"cd {PROJECT} && ") for line in lines)
    assert not (work / "runs" / "seqTransf_seed1").exists()  # printing ran nothing
    before = json.loads((work / "results" / "seqTransf_seed0.json").read_text())
    completed = subprocess.run(["bash", "-c", lines[0]], cwd=tmp_path, capture_output=True, text=True)  # any folder
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "resuming" in completed.stdout  # the finished run is resumed, not redone
    assert "kept " in completed.stdout  # and its finished evaluation left alone (issue 29)
    after = json.loads((work / "results" / "seqTransf_seed0.json").read_text())
    assert after == before


def test_after_the_array_the_final_driver_leaves_finished_work_alone(demo_work, chain):
    """Issue 29: after --print-runs and the array, the final run_all.sh ran verify, the zero-shot
    evaluation and every evaluation again. The chain ran the driver again (--skip-runs: cache,
    verify, zero-shot) on the matrix's finished work folder: it redid none of them."""
    work, _ = demo_work
    code, stdout, stderr = driver_outcome(chain, "again")
    assert code == 0, stderr[-3000:]
    assert "verify: passed before on this cache_meta.json with these options; not run again" in stdout
    assert f"kept {work}/results/meanP.json: finished" in stdout
    started = (chain / "again_started").stat().st_mtime_ns
    assert all(path.stat().st_mtime_ns < started for path in (work / "results").glob("*.json"))


def test_the_default_work_folders_are_ignored_by_git():
    """Issue 29: a real run wrote into <repo>/work/, which git did not ignore."""
    script = (PROJECT / "run_all.sh").read_text()
    defaults = re.findall(r'WORK="\$\{WORK:-([\w.-]+)\}"', script)
    assert sorted(defaults) == ["work", "work_demo"]
    for folder in defaults:
        ignored = subprocess.run(["git", "check-ignore", "-q", f"{folder}/report/report.md"], cwd=PROJECT)
        assert ignored.returncode == 0, f"{folder}/ is not ignored by git"


def test_run_all_refuses_a_gpu_count_that_is_not_a_number(tmp_path):
    import subprocess

    completed = subprocess.run(
        ["bash", str(PROJECT / "run_all.sh"), "--gpus", "abc", "--work", str(tmp_path)], capture_output=True, text=True
    )
    assert completed.returncode == 2 and "--gpus 'abc'" in completed.stderr


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--jobs", ""], "--jobs needs a value"),
        (["--jobs"], "--jobs needs a value"),
        (["--seeds", ""], "--seeds needs a value"),
        (["--seeds", " "], "--seeds ' ': give at least one seed"),
        (["--seeds", "0 x"], "--seeds '0 x': give whole numbers"),
        (["--gpus", "1", "--jobs", "3"], "--jobs 3 with --gpus 1: each run takes one GPU, so at most 1 run at once"),
    ],
)
def test_run_all_refuses_a_flag_it_would_misread_before_touching_anything(tmp_path, flags, message):
    """Round four: `--jobs ''` and a trailing `--jobs` were an unbound-variable crash or the default,
    `--seeds ''` ran nothing with exit 0, `--gpus 1 --jobs 3` handed out CUDA_VISIBLE_DEVICES 0, 1, 2."""
    work = tmp_path / "work"
    completed = subprocess.run(
        ["bash", str(PROJECT / "run_all.sh"), "--work", str(work), *flags], capture_output=True, text=True
    )
    assert completed.returncode == 2 and f"run_all.sh: {message}" in completed.stderr, completed.stderr
    assert not work.exists()


def test_a_second_driver_on_one_work_folder_is_refused_before_it_touches_anything(tmp_path):
    """Round four: a second run_all.sh on the same work folder failed on the first one's locks and
    truncated its runs' logs (NUL bytes). It is now refused before anything, naming the holder."""
    work = tmp_path / "work"
    (work / "logs").mkdir(parents=True)
    (work / "logs" / "seqTransf_seed0.log").write_text("epoch 1 ...\n")
    lock = work / ".run_all.lock"
    lock.write_text("4242\n")
    with open(lock, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the first driver, alive
        completed = subprocess.run(
            ["bash", str(PROJECT / "run_all.sh"), "--work", str(work)], capture_output=True, text=True
        )
    assert completed.returncode == 2
    assert f"another run_all.sh (pid 4242) is running on {work}: wait for it to end, or stop it" in completed.stderr
    assert lock.read_text() == "4242\n" and (work / "logs" / "seqTransf_seed0.log").read_text() == "epoch 1 ...\n"
    assert sorted(path.name for path in work.rglob("*")) == [".run_all.lock", "logs", "seqTransf_seed0.log"]


def test_one_at_a_time_gives_the_same_report(demo_work, chain):
    work, _ = demo_work
    code, stdout, stderr = driver_outcome(chain, "one_at_a_time")
    assert code == 0, stdout[-3000:] + stderr[-3000:]
    assert "running 2 runs, 1 at a time" in stdout
    numbers = "report/report_numbers.json"
    assert (chain / "one_at_a_time" / "work" / numbers).read_bytes() == (work / numbers).read_bytes()


def test_help_is_the_scripts_whole_header_and_names_every_flag():
    completed = subprocess.run(["bash", str(PROJECT / "run_all.sh"), "--help"], capture_output=True, text=True)
    lines = completed.stdout.splitlines()
    header = (PROJECT / "run_all.sh").read_text().split("\nset -euo pipefail", 1)[0].splitlines()[1:]
    assert completed.returncode == 0 and lines == header and all(line.startswith("#") for line in lines)
    script = (PROJECT / "run_all.sh").read_text()
    for flag in re.findall(r"^    (--[a-z-]+)\)", script, flags=re.MULTILINE):
        assert flag in completed.stdout, flag
