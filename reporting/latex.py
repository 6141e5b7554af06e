"""tables.tex: the report's tables as a paper takes them, `\\input` into a two-column article.

Each table has a caption naming the dataset, a `\\label` (tab:dataset-setting-direction), and the
numbers the markdown report prints: mean ± std over seeds (the mean alone for a one-seed method,
which has no spread), the 95% CI with the decimals its draws support, tie counts, Binary, the
direction and paraphrase analyses and the pairwise tests with their Holm p. Wide tables are
`table*` (the page's width), narrow ones `table` (a column's), in \\footnotesize with narrow
column gaps, and shrunk to the line only where a long name would still overflow it
(tests/test_latex.py compiles them in a two-column article). A column that cannot
fail (R@K with K at least the candidates a query ranks) is marked † and never bolded. Needs the
booktabs and graphicx packages (PACKAGES).
"""

import re

from reporting.stats import p_text
from reporting.tables import CI_DIGITS, DIFFERENCE_CI_DIGITS, METRIC_NAMES, count, mean_std_text, trivial_metrics

PACKAGES = ("booktabs", "graphicx")
LOWER_IS_BETTER = ("MdR", "MnR")
LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}
TRIVIAL_MARK = r"$^\dagger$"
PLUS_MINUS = r"$\pm$"
ANALYSES = (  # (numbers key, label word, columns before the test's, their values, title)
    (
        "direction_split",
        "direction",
        ("forward captions R@1", "reverse captions R@1"),
        lambda row: (row["forward"]["R@1"], row["reverse"]["R@1"]),
        "text→video R@1 by the query's side (forward − reverse, paired by record)",
    ),
    (
        "paraphrase",
        "paraphrase",
        ("human captions R@1", "rewrites R@1"),
        lambda row: (row["human_R@1"], row["rewrites_R@1"]),
        "paraphrase robustness (human − rewrites, paired by candidate)",
    ),
)


def latex(text) -> str:
    """A text safe in LaTeX: its special characters escaped, line breaks made spaces, arrows in math."""
    escaped = "".join(LATEX_SPECIALS.get(ch, ch) for ch in " ".join(str(text).splitlines()))
    return escaped.replace("→", r"$\rightarrow$").replace("−", "--")


def label(*parts) -> str:
    """A \\label key from a table's parts: tab:rtime-test-hard-t2v."""
    words = (re.sub(r"[^a-z0-9]+", "-", str(part).lower()).strip("-") for part in parts)
    return "tab:" + "-".join(word for word in words if word)


def signed(value: float, digits: int) -> str:
    """A number whose minus is a minus sign, not a hyphen."""
    return f"{value:.{digits}f}".replace("-", "$-$")


def interval(low_high, digits: int) -> str:
    low, high = low_high
    return f"[{signed(low, digits)}, {signed(high, digits)}]"


def wrapped(environment: str, caption: str, key: str, columns: str, header: list[str], body: list[list[str]]):
    """A booktabs table; shrunk to the line's width only where it would overflow it (long method
    names), never enlarged."""
    return [
        rf"\begin{{{environment}}}[t]",
        r"\centering\footnotesize\setlength{\tabcolsep}{2pt}",
        rf"\caption{{{caption}}}",
        rf"\label{{{key}}}",
        r"\resizebox{\ifdim\width>\linewidth\linewidth\else\width\fi}{!}{%",
        rf"\begin{{tabular}}{{{columns}}}",
        r"\toprule",
        " & ".join(header) + r" \\",
        r"\midrule",
        *(" & ".join(row) + r" \\" for row in body),
        r"\bottomrule",
        r"\end{tabular}}",
        rf"\end{{{environment}}}",
        "",
    ]


def metric_table(title: str, key: str, rows: dict, trivial: list[str]) -> list[str]:
    """A setting and direction: each metric's mean (± std) and its 95% CI, the best of a column in
    bold unless the column cannot fail; tied queries; seeds."""
    best = {
        metric: (min if metric in LOWER_IS_BETTER else max)(row[metric]["mean"] for row in rows.values())
        for metric in METRIC_NAMES
    }
    arrows = {metric: r"$\downarrow$" if metric in LOWER_IS_BETTER else r"$\uparrow$" for metric in METRIC_NAMES}
    header = ["Method"] + [
        f"{metric}{arrows[metric]}{TRIVIAL_MARK if metric in trivial else ''}" for metric in METRIC_NAMES
    ]
    header += ["tied", "seeds"]
    body = []
    for method, row in rows.items():
        cells = []
        for metric in METRIC_NAMES:
            text = mean_std_text(row[metric], row["n_seeds"], 1, PLUS_MINUS)
            if row[metric]["mean"] == best[metric] and metric not in trivial:
                text = rf"\textbf{{{text}}}"
            cells.append(f"{text} {{\\scriptsize {interval(row[metric]['ci'], CI_DIGITS[metric])}}}")
        body.append([latex(method), *cells, count(row["n_tied"], row["n_queries"]), str(row["n_seeds"])])
    note = "mean $\\pm$ std over seeds (one seed: its value) [95\\% CI over seeds and clusters]; best in bold"
    if trivial:
        note += f"; {TRIVIAL_MARK} each query ranks so few candidates that this metric is 100 for any method"
    return wrapped("table*", f"{latex(title)}: {note}.", key, "l" + "c" * (len(METRIC_NAMES) + 2), header, body)


def binary_table(title: str, key: str, rows: dict, directions: dict) -> list[str]:
    """Binary accuracy per direction ({direction: its title}) and tied pairs."""
    header = ["Method", *(f"{latex(name)} & tied" for name in directions.values())]
    body = [
        [
            latex(method),
            *(
                f"{mean_std_text(row[d], row['n_seeds'], 1, PLUS_MINUS)} & {count(row[d]['n_tied'], row[d]['n_pairs'])}"
                for d in directions
            ),
        ]
        for method, row in rows.items()
    ]
    caption = f"{latex(title)}: Binary accuracy (\\%), original against its reversal; a tie counts one half."
    return wrapped("table", caption, key, "l" + "cc" * len(directions), header, body)


def test_cells(test: dict) -> list[str]:
    """A test of the report's family: the difference, its simultaneous CI, p and Holm's p."""
    return [
        signed(test["difference"], 2),
        interval(test["ci_family"], DIFFERENCE_CI_DIGITS),
        *(latex(p_text(test, key)).replace("<", "$<$").replace("≤", "$\\leq$") for key in ("p", "p_holm")),
    ]


def tests_table(title: str, key: str, first_columns: list[str], rows: list[tuple[list[str], dict]], family: dict):
    """Tests of the family: each row's own columns, then the difference, simultaneous CI, p, Holm p."""
    header = [*first_columns, "difference", "simultaneous CI", "$p$", "$p$ (Holm)"]
    body = [[*(latex(cell) for cell in cells), *test_cells(test)] for cells, test in rows]
    caption = (
        f"{latex(title)}: one Holm family of $m = {family['n_tests']}$ tests; CIs simultaneous at "
        f"{100 * (1 - family['level']):.2f}\\%."
    )
    columns = "l" * len(first_columns) + "cccc"
    return wrapped("table*" if len(first_columns) > 2 else "table", caption, key, columns, header, body)


def dataset_tables(name: str, dataset: dict, settings: dict, candidates: dict, post_titles: dict) -> list[str]:
    """Every table of one dataset's numbers (report_numbers.json's): metrics per setting and
    direction (each post-processing apart, titled by post_titles), Binary, direction, paraphrase
    and the pairwise tests. settings: {setting: its short title}; candidates: {setting: the
    candidates a query ranks}."""
    directions = {"t2v": "text→video", "v2t": "video→text"}
    groups = [("", "", dataset)] + [
        (post, f"{post_titles[post]}, ", group) for post, group in dataset.get("postprocessed", {}).items()
    ]
    lines = []
    for post, post_title, group in groups:
        for key, rows in group["tables"].items():
            setting, direction = key.split("/")
            trivial = trivial_metrics(candidates[setting])
            title = f"{name}, {post_title}{settings[setting]}, {directions[direction]}"
            lines += metric_table(title, label(name, post, setting, direction), rows, trivial)
        if group.get("binary"):
            shown = {d: title for d, title in directions.items() if d in next(iter(group["binary"].values()))}
            lines += binary_table(f"{name}, {post_title}Binary", label(name, post, "binary"), group["binary"], shown)
        if group.get("pairwise"):
            rows = [([settings[c["setting"]], c["a"], c["b"]], c) for c in group["pairwise"]]
            title = f"{name}, {post_title}pairwise text→video R@1 (A − B)"
            lines += tests_table(title, label(name, post, "pairwise"), ["setting", "A", "B"], rows, dataset["family"])
    for key, word, columns, values, title in ANALYSES:
        if key in dataset:
            rows = [([method, *(f"{v:.2f}" for v in values(row))], row) for method, row in dataset[key].items()]
            lines += tests_table(f"{name}, {title}", label(name, word), ["Method", *columns], rows, dataset["family"])
    return lines
