"""tables.tex as a paper takes it: compiled by pdflatex (Debian's texlive, which tests/run.sh
installs where it runs as root, as in CI) in a two-column article, with no box overflowing, a
label per table, and what the markdown report says about seeds and trivial columns."""

import re
import shutil
import subprocess

import pytest

from reporting.latex import PACKAGES, label, latex
from reporting.tables import count

ARTICLE = (
    "\\documentclass[10pt,twocolumn]{article}\n"
    + "".join(f"\\usepackage{{{package}}}\n" for package in PACKAGES)
    + "\\begin{document}\n\\input{tables}\n\\end{document}\n"
)


def table_of(tex, key):
    """The body of the table labelled `key`."""
    return tex.split(f"\\label{{{key}}}")[1].split("\\end{table")[0]


def test_the_demo_tables_compile_in_a_two_column_article_without_overflow(demo, tmp_path):
    """The issue: each table was 214-232pt too wide for a column and drew over the next one."""
    if not shutil.which("pdflatex"):
        pytest.skip("no pdflatex here: tests/run.sh installs texlive-latex-base/-recommended where it runs as root")
    tex = (demo / "report" / "tables.tex").read_text()
    shutil.copy(demo / "report" / "tables.tex", tmp_path / "tables.tex")
    (tmp_path / "paper.tex").write_text(ARTICLE)
    done = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "paper.tex"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    log = (tmp_path / "paper.log").read_text(errors="replace")
    assert done.returncode == 0, log[-3000:]
    assert "Overfull \\hbox" not in log and (tmp_path / "paper.pdf").stat().st_size > 0
    labels = re.findall(r"\\label\{([^}]+)\}", tex)
    assert len(labels) == len(set(labels)) == tex.count("\\begin{table")
    for key in ("rtime-test-origin-t2v", "rtime-test-hard-v2t", "rtime-test-binary", "rtime-test-pairwise"):
        assert f"tab:{key}" in labels
    assert {"tab:rtime-test-direction", "tab:rtime-test-paraphrase", "tab:rtime-test-dsl-hard-t2v"} <= set(labels)


def test_one_seed_shows_no_spread_and_a_column_that_cannot_fail_is_marked_not_bold(demo):
    tex = (demo / "report" / "tables.tex").read_text()
    origin = table_of(tex, "tab:rtime-test-origin-t2v")  # 4 candidates: R@5 and R@10 are 100 for all
    assert "R@5$\\uparrow$$^\\dagger$" in origin and "R@10$\\uparrow$$^\\dagger$" in origin
    rows = {line.split(" & ")[0]: line.split(" & ") for line in origin.splitlines() if " & " in line}
    assert "$\\pm$" not in rows["meanP zero-shot"][1] and "$\\pm$" in rows["seqTransf"][1]
    assert not any("\\textbf" in row[2] or "\\textbf" in row[3] for row in rows.values())
    caption = tex.split("\\label{tab:rtime-test-origin-t2v}")[0].rsplit("\\caption{", 1)[1]
    assert caption.startswith("RTime test, RTime-Origin, text") and "100 for any method" in caption


def test_names_counts_and_labels_are_written_for_latex():
    assert latex("a_b & 50% → #1") == r"a\_b \& 50\% $\rightarrow$ \#1"
    assert label("RTime test", "", "hard", "t2v") == "tab:rtime-test-hard-t2v"
    assert count(4 / 3, 4) == "1.3/4" and count(8.0, 8) == "8/8"  # a mean over seeds, not 1.33333/4
