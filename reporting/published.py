"""RTime figures from the literature, each with its source and the convention it was computed under.

Only figures that can be cited to a file are here, rounded to two decimals from it; a figure not
found in its source is left out rather than guessed. The report sets them beside a dataset only
when its test annotations are RTime's released `test.json` (by sha256): any other file, the demo's
included, has other queries, and a number on it is not comparable.

To add a figure: an entry in the tuple of its test file (PUBLISHED), with its model, the file or
table it is read from (a repository at a commit, or a paper with its table), the convention of
evaluation/conventions.py it was computed under, the test videos it covers, and its numbers under
PUBLISHED_COLUMNS' keys.
"""

from dataclasses import dataclass

# sha256 of RTime's released test.json (1,000 videos, every one reversible, one forward and one
# reverse human caption each)
RTIME_TEST_SHA256 = "87c634445ea2fb53ba3415b56497a3361fd0f48d537136d679b3beb169aa3173"

# (key, column title): Binary and R@1 per setting and direction, as the peers report them
PUBLISHED_COLUMNS = (
    ("binary/t2v", "Binary text→video"),
    ("binary/v2t", "Binary video→text"),
    ("origin/t2v", "Origin text→video R@1"),
    ("origin/v2t", "Origin video→text R@1"),
    ("hard/t2v", "Hard text→video R@1"),
    ("hard/v2t", "Hard video→text R@1"),
)

CAREBENCH = "bpiyush/CaReBench@16e335d"


@dataclass(frozen=True)
class Published:
    model: str
    source: str  # where the numbers are read from
    convention: str  # a key of evaluation.conventions.CONVENTIONS
    videos: str  # the test videos the figures cover
    numbers: dict  # {column key: value in %}


def carebench_file(name: str) -> str:
    return f"{CAREBENCH} `results/{name}` (computed by `tasks/eval_rtime.py`)"


ALL_BUT_ONE = "999 of 1,000"  # every figure of these files is a whole number of 999ths
FILTERED = "747 (a filtered subset)"  # testoftime_eval/rtime_non_matching_ids.txt removed; whole 747ths

RTIME_TEST = (
    Published(
        "Tarsier-7B",
        carebench_file("metrics_rtime_tarsier7b.json"),
        "carebench",
        ALL_BUT_ONE,
        {
            "binary/t2v": 64.86,
            "binary/v2t": 64.96,
            "origin/t2v": 63.56,
            "origin/v2t": 61.26,
            "hard/t2v": 36.29,
            "hard/v2t": 35.14,
        },
    ),
    Published(
        "Qwen2-VL-7B",
        carebench_file("metrics_rtime_qwen2vl7b.json"),
        "carebench",
        ALL_BUT_ONE,
        {
            "binary/t2v": 59.96,
            "binary/v2t": 64.76,
            "origin/t2v": 60.06,
            "origin/v2t": 54.05,
            "hard/t2v": 33.43,
            "hard/v2t": 30.53,
        },
    ),
    Published(
        "TARA (Tarsier-7B)",
        carebench_file("metrics_rtime_tara-filtered.json"),
        "carebench",
        FILTERED,
        {
            "binary/t2v": 68.67,
            "binary/v2t": 74.03,
            "origin/t2v": 83.00,
            "origin/v2t": 78.85,
            "hard/t2v": 52.68,
            "hard/v2t": 48.66,
        },
    ),
    Published(
        "Tarsier-7B",
        carebench_file("metrics_rtime-tarsier7b-filtered.json"),
        "carebench",
        FILTERED,
        {
            "binary/t2v": 64.12,
            "binary/v2t": 66.27,
            "origin/t2v": 68.01,
            "origin/v2t": 65.86,
            "hard/t2v": 38.49,
            "hard/v2t": 37.55,
        },
    ),
)

# {sha256 of a test split's annotation file: the figures published on it}
PUBLISHED = {RTIME_TEST_SHA256: RTIME_TEST}
