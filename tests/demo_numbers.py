"""The demo's numbers the README quotes, recorded from a `bash run_all.sh` work folder into
docs/demo_numbers.json so that they cannot drift:

- tests/test_readme.py: every quoted text, written from the record, stands in the README (and
  docs/run_all.md), and the record's method numbers (from the demo's report_numbers.json) are the
  means of its runs';
- tests/test_run_all.py: the runs the suite's run_all chain repeats (meanP zero-shot, seqTransf and
  mlpScore seed 0, trained with the demo's settings) give the record's numbers exactly.

After a change that moves them: `bash run_all.sh && .venv/bin/python -m tests.demo_numbers work_demo`,
then put the texts it prints in the README and docs/run_all.md.
"""

import json
import sys
from pathlib import Path

from evaluation.conventions import convention_numbers
from evaluation.results import read_result
from infra.file_io import atomic_write_json

RECORD = Path(__file__).resolve().parents[1] / "docs" / "demo_numbers.json"
DATASET = "RTime test"
RUNS_OF = {  # method -> its result files in the demo's results folder
    "meanP zero-shot": ["meanP"],
    **{head: [f"{head}_seed{seed}" for seed in range(3)] for head in ("seqTransf", "tightTransf", "mlpScore")},
}


def run_numbers(run) -> dict:
    """What the README quotes, for one result file: Binary ours and CaReBench's, Hard t2v R@1 ours,
    CaReBench's bounds and CLIP4Clip's."""
    annotation_format = run.provenance["annotation_format"]
    carebench = convention_numbers("carebench", run.load_array, annotation_format)
    clip4clip = convention_numbers("clip4clip", run.load_array, annotation_format)
    return {
        **{f"binary {d}": run.data["binary"][d]["accuracy"] for d in ("t2v", "v2t")},
        **{f"carebench binary {d}": carebench["binary"][d]["accuracy"] for d in ("t2v", "v2t")},
        "hard t2v R@1": run.data["hard"]["t2v"]["expected"]["R@1"],
        "carebench hard t2v R@1 bounds": [
            carebench["hard"]["t2v"]["pessimistic"]["R@1"],
            carebench["hard"]["t2v"]["optimistic"]["R@1"],
        ],
        "clip4clip hard t2v R@1": clip4clip["hard"]["t2v"]["R@1"],
    }


def method_numbers(report: dict, method: str) -> dict:
    """The same as the demo's report_numbers.json gives them for a method (means over its seeds)."""
    carebench = report["conventions"]["carebench"][method]
    return {
        **{f"binary {d}": report["binary"][method][d]["mean"] for d in ("t2v", "v2t")},
        **{f"carebench binary {d}": carebench[f"binary/{d}"]["accuracy"]["mean"] for d in ("t2v", "v2t")},
        "hard t2v R@1": report["tables"]["hard/t2v"][method]["R@1"]["mean"],
    }


def report_numbers(report: dict) -> dict:
    """What docs/run_all.md quotes of the demo's report: Hard t2v R@1 cells, one test, the design."""
    hard = report["tables"]["hard/t2v"]
    test = next(c for c in report["pairwise"] if (c["setting"], c["a"], c["b"]) == ("hard", "seqTransf", "tightTransf"))
    return {
        "hard t2v R@1": {method: {key: hard[method]["R@1"][key] for key in ("mean", "std", "ci")} for method in hard},
        "hard seqTransf - tightTransf": {key: test[key] for key in ("difference", "p_holm")},
        "family": {key: report["family"][key] for key in ("n_tests",)},
        "hard design": report["family"]["design"]["hard"]["difference"],
    }


def record(work: Path) -> dict:
    report = json.loads((work / "report" / "report_numbers.json").read_text())["datasets"][DATASET]
    runs = {
        name: run_numbers(read_result(work / "results" / f"{name}.json"))
        for names in RUNS_OF.values()
        for name in names
    }
    return {
        "made_by": "bash run_all.sh; .venv/bin/python -m tests.demo_numbers work_demo",
        "methods": {method: method_numbers(report, method) for method in RUNS_OF},
        "report": report_numbers(report),
        "runs": runs,
    }


def signed(value: float) -> str:
    return f"{value:+.1f}".replace("-", "−")


def quoted_texts(numbers: dict) -> list[str]:
    """The README's texts, written from a record."""
    methods, runs = numbers["methods"], numbers["runs"]
    ours_to_peer = {
        d: ", ".join(
            f"{head} {methods[head][f'binary {d}']:.2f} → {methods[head][f'carebench binary {d}']:.2f}"
            for head in ("seqTransf", "tightTransf")
        )
        for d in ("t2v", "v2t")
    }
    per_run = [
        runs[name]["carebench binary t2v"] - runs[name]["binary t2v"]
        for head in ("seqTransf", "tightTransf")
        for name in RUNS_OF[head]
    ]
    blind = {
        key: " / ".join(sorted({f"{methods[m][key]:.2f}" for m in ("meanP zero-shot", "mlpScore")}))
        for key in ("binary t2v", "carebench binary t2v")
    }  # one value where the two heads agree
    meanp = runs["meanP"]
    low, high = meanp["carebench hard t2v R@1 bounds"]
    return [
        f"t2v {ours_to_peer['t2v']} (per run {signed(min(per_run))} to {signed(max(per_run))}); "
        f"v2t {ours_to_peer['v2t']}",
        f"every t2v pair tied: {blind['binary t2v']} → {blind['carebench binary t2v']}",
        f"meanP Hard t2v R@1: {meanp['hard t2v R@1']:.2f}",
        f"bounds {low:.2f}–{high:.2f}; clip4clip {meanp['clip4clip hard t2v R@1']:.2f}",
    ]


def run_all_texts(numbers: dict) -> list[str]:
    """docs/run_all.md's texts, written from a record."""
    report = numbers["report"]
    cells = {
        method: f"{cell['mean']:.1f} ± {cell['std']:.1f} [{cell['ci'][0]:.0f}, {cell['ci'][1]:.0f}]"
        for method, cell in report["hard t2v R@1"].items()
    }
    test = report["hard seqTransf - tightTransf"]
    return [
        f"came out at {cells['seqTransf']} for seqTransf and {cells['tightTransf']} for tightTransf",
        f"against {report['hard t2v R@1']['meanP zero-shot']['mean']:.1f} for meanP",
        f"difference of {test['difference']:.1f} has Holm p {test['p_holm']:.2f}",
        f"family of {report['family']['n_tests']} tests",
        f"detect a difference of {report['hard design']:.1f} points",
    ]


def main(argv=None):
    (work,) = argv if argv is not None else sys.argv[1:]
    numbers = record(Path(work))
    atomic_write_json(RECORD, numbers)
    print(f"wrote {RECORD}; the README's texts:")
    for text in quoted_texts(numbers):
        print(f"  {text}")
    print("docs/run_all.md's:")
    for text in run_all_texts(numbers):
        print(f"  {text}")


if __name__ == "__main__":
    main()
