"""The README's demo numbers stay the demo's: each text it quotes is written from the record of a
`bash run_all.sh` (docs/demo_numbers.json, tests/demo_numbers.py), and the record holds together.
tests/test_run_all.py checks the record against the runs the suite repeats."""

import json
import re

import numpy as np
import pytest

from tests.demo_numbers import RECORD, RUNS_OF, quoted_texts, run_all_texts
from tests.helpers import PROJECT


def test_the_readme_and_docs_quote_the_recorded_demo_numbers():
    """The statistics review (finding 9): the README said tightTransf 15.3 ± 3.2, difference 13.9,
    detectable above 22.3, where a fresh clone gave 14.58 ± 4.17, 14.58 and 24.10."""
    numbers = json.loads(RECORD.read_text())
    for page, texts in (("README.md", quoted_texts(numbers)), ("docs/run_all.md", run_all_texts(numbers))):
        words = " ".join((PROJECT / page).read_text().split())  # as read, whatever the line breaks
        for text in texts:
            assert text in words, f"{page} does not say {text!r}: run `python -m tests.demo_numbers work_demo`"


def test_the_recorded_method_numbers_are_the_means_of_their_runs():
    numbers = json.loads(RECORD.read_text())
    for method, names in RUNS_OF.items():
        for key, value in numbers["methods"][method].items():
            assert value == pytest.approx(np.mean([numbers["runs"][name][key] for name in names]), abs=1e-9), key


def test_every_test_the_docs_cite_exists():
    """docs/faults.md names, for each fault, the test that shows what happens: a renamed or deleted
    test must not leave the page citing it ("name_..." cites tests whose names start so; a test
    file is cited by its name)."""
    defined = set(
        re.findall(r"^def (test_\w+)", "".join(p.read_text() for p in (PROJECT / "tests").glob("*.py")), re.M)
    )
    for page in sorted((PROJECT / "docs").glob("*.md")):
        for cited in re.findall(r"`(test_\w+?)(?:_?\.\.\.)?(?:\[[^\]]*\])?`", page.read_text()):
            exists = (PROJECT / "tests" / f"{cited}.py").exists() or any(name.startswith(cited) for name in defined)
            assert exists, f"{page.name} cites {cited}, which no test is"
