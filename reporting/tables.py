"""The report's markdown tables: how a number and a name are written, and each table's layout.

Every text from a result (a method name, a dataset label) goes through `md`, so a `|` or a line
break in it cannot break a row, and markup in it (HTML, a link, emphasis) is shown, not rendered;
in results.csv through `spreadsheet_text`, so it is never read as a formula. Numbers are written
the one way `number` says: a learning rate as 3e-4, not 0.0003000000000000001.
"""

import re

from evaluation.results import PERTURBATIONS
from reporting.published import PUBLISHED_COLUMNS
from reporting.seeds import CLUSTER_UNITS
from reporting.stats import p_text

METRIC_NAMES = ("R@1", "R@5", "R@10", "MdR", "MnR")
DIRECTION_TITLES = {"t2v": "text→video", "v2t": "video→text"}
POSTPROCESS_TITLES = {"dsl": "With dual softmax (DSL)", "qbnorm": "With querybank normalisation (QB-Norm)"}
POSTPROCESS_NOTES = {
    "dsl": "**Transductive**: DSL reads every test query at once to rescale each score. Compare these numbers "
    "with each other, and report the raw ones beside them. Binary leaves each record's other captions out of "
    "the normaliser of its pair (they are the alternative Binary weighs the caption against).",
    "qbnorm": "**Post-processed**: QB-Norm rescales the scores of a query whose best candidate is a hub of the "
    "training captions (the querybank: the train split's captions); it reads the whole test gallery, never "
    "another test query. Text→video only.",
}
POSTPROCESS_SETTING_NAMES = {"temperature": "temperature", "beta": "β", "querybank": "querybank", "bank_size": "bank"}
# Decimals of a CI end that stay put between resampling seeds at N_RESAMPLES draws (measured with
# bench/report_stats.py, docs/report.md): a rank's median moves in steps of one half, the others by
# a few hundredths on RTime's test split, which would change a first decimal half the time.
CI_DIGITS = {"R@1": 0, "R@5": 0, "R@10": 0, "MdR": 1, "MnR": 0}
DIFFERENCE_CI_DIGITS = CI_DIGITS["R@1"]  # the tests compare R@1


MARKDOWN_SPECIALS = "\\|<[]*_`&"  # what can start markup in a name: HTML, entities, links, emphasis, code


def md(text) -> str:
    """A text shown as itself in markdown, in a table cell or a heading: the characters that start
    markup are backslash-escaped (CommonMark shows an escaped punctuation mark as itself), line
    breaks of any kind made spaces."""
    line = " ".join(str(text).splitlines())
    return "".join("\\" + ch if ch in MARKDOWN_SPECIALS else ch for ch in line)


def code(text) -> str:
    """A text as a markdown code span (a file name, a digest), shown as itself: its fence is one
    backtick longer than the longest run of backticks in it (no escape works inside a code span)."""
    line = " ".join(str(text).splitlines())
    fence = "`" * (max((len(run) for run in re.findall("`+", line)), default=0) + 1)
    padding = " " if line.startswith("`") or line.endswith("`") else ""
    return f"{fence}{padding}{line}{padding}{fence}"


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # what makes a spreadsheet read a cell as a formula


def spreadsheet_text(text: str) -> str:
    """A text cell of results.csv that a spreadsheet shows as text: one starting a formula gets a
    leading quote (the usual neutralisation; numbers are written as numbers, never through this)."""
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def number(value) -> str:
    """A setting's value in short form: 3e-4 or 4.4e-4 for small or large floats, 0.2 for others;
    non-numbers as they are."""
    if isinstance(value, bool) or not isinstance(value, int | float) or isinstance(value, int) or value == 0:
        return str(value)
    if abs(value) < 1e-2 or abs(value) >= 1e4:
        mantissa, exponent = f"{value:.1e}".split("e")
        return f"{float(mantissa):g}e{int(exponent)}"
    return f"{value:.3g}"


def facts(value) -> str:
    """A record's fields as a reader takes them, not as JSON: "size 32, mean 0.481 / 0.458 / 0.408",
    nested fields in parentheses, a missing value as "—" (never `null`); markdown-safe."""
    if isinstance(value, dict):
        return ", ".join(
            f"{md(key)} {facts(item)}" if not isinstance(item, dict) else f"{md(key)} ({facts(item)})"
            for key, item in value.items()
        )
    if isinstance(value, list | tuple):
        return " / ".join(facts(item) for item in value) if value else "—"
    if value is None:
        return "—"
    return md(number(value) if isinstance(value, float) else value)


def trivial_metrics(n_candidates: int | None) -> list[str]:
    """The R@K that is 100 for any method where each query ranks `n_candidates`: K at least that many."""
    return [f"R@{k}" for k in (5, 10) if n_candidates is not None and k >= n_candidates]


def count(value: float, total: int) -> str:
    """A count over seeds of a total, e.g. tied queries: "8/8", or the mean to one decimal where
    seeds differ ("1.3/4", not "1.33333/4")."""
    return f"{value:.0f}/{total}" if float(value).is_integer() else f"{value:.1f}/{total}"


def interval(low_high, digits: int) -> str:
    """A CI with the decimals its resampling supports."""
    low, high = low_high
    return f"[{low:.{digits}f}, {high:.{digits}f}]"


def mean_std_text(value: dict, n_seeds: int, digits: int = 2, plus: str = " ± ") -> str:
    """mean ± std over seeds; a one-seed method's value alone (it has no spread to show, and
    "± 0.00" would claim seeds that agree)."""
    if n_seeds == 1:
        return f"{value['mean']:.{digits}f}"
    return f"{value['mean']:.{digits}f}{plus}{value['std']:.{digits}f}"


def cell(value: dict, metric: str, n_seeds: int) -> str:
    """mean ± std [95% CI over seeds and clusters]."""
    return f"{mean_std_text(value, n_seeds)} {interval(value['ci'], CI_DIGITS[metric])}"


def table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(item) for item in row) + " |" for row in rows] + [""]


def metric_table(title: str, rows: dict, footnote: str = "") -> list[str]:
    header = ["Method", *METRIC_NAMES, "tied queries", "seeds"]
    body = [
        [
            md(method),
            *(cell(row[metric], metric, row["n_seeds"]) for metric in METRIC_NAMES),
            count(row["n_tied"], row["n_queries"]),
            row["n_seeds"],
        ]
        for method, row in rows.items()
    ]
    return [f"### {title}", "", *table(header, body)] + ([footnote, ""] if footnote else [])


def backbone_table(title: str, columns: dict, cells: dict, cell_text) -> list[str]:
    """Heads (rows) by backbones (columns: {dataset label: backbone name}); cells {method: {label:
    row}} as the dataset tables give them, each shown by cell_text(row), "—" where a head was not
    evaluated on a backbone."""
    header = ["Method", *(md(name) for name in columns.values())]
    body = [
        [md(method), *(cell_text(by_label[label]) if label in by_label else "—" for label in columns)]
        for method, by_label in cells.items()
    ]
    return [f"### {title}", "", *table(header, body)]


def binary_table(rows: dict, directions=("t2v", "v2t")) -> list[str]:
    names = DIRECTION_TITLES
    header = ["Method", *(name for d in directions for name in (f"{names[d]} accuracy", "tied"))]
    body = [
        [
            md(method),
            *(
                cell
                for d in directions
                for cell in (mean_std_text(row[d], row["n_seeds"]), count(row[d]["n_tied"], row[d]["n_pairs"]))
            ),
        ]
        for method, row in rows.items()
    ]
    return ["### Binary: original vs its reversal", "", *table(header, body), "An exact tie counts one half.", ""]


def convention_range(value: dict, metric: str) -> tuple[float, float]:
    """(low, high) of a convention's metric, means over seeds: one value unless ties leave the peer's
    rank open between its bounds (reporting/seeds.py `convention_row`)."""
    if "optimistic" in value:
        return value["pessimistic"][metric]["mean"], value["optimistic"][metric]["mean"]
    return value[metric]["mean"], value[metric]["mean"]


def range_text(low: float, high: float) -> str:
    return f"{low:.2f}" if low == high else f"{low:.2f}–{high:.2f}"


def convention_text(row: dict, key: str, metric: str) -> str:
    """A method's value under a convention, or why it has none."""
    setting = key.split("/")[0]
    if key not in row:
        return "— (unavailable)" if setting in row else "—"
    return range_text(*convention_range(row[key], metric))


def convention_table(name: str, description: str, columns: list, ours: dict, theirs: dict) -> list[str]:
    """columns: [(key "setting/direction", title, metric)]; ours {method: {key: our mean}}; theirs
    {method: the convention's row}. Each cell: ours / theirs."""
    # the columns the convention defines (clip4clip has no Binary)
    columns = [
        column
        for column in columns
        if any(column[0] in row or column[0].split("/")[0] in row for row in theirs.values())
    ]
    header = ["Method", *(title for _, title, _ in columns)]
    body = [
        [md(method), *(f"{ours[method][key]:.2f} / {convention_text(row, key, metric)}" for key, _, metric in columns)]
        for method, row in theirs.items()
    ]
    reasons = sorted(
        {value["unavailable"] for row in theirs.values() for value in row.values() if "unavailable" in value}
    )
    return [
        f"### Beside the {name} convention",
        "",
        f"Each cell: ours / {name}, means over seeds. {name}: {description}.",
        "",
        *table(header, body),
        *(line for reason in reasons for line in (f"Unavailable: {reason}.", "")),
    ]


def published_table(entries: tuple, ours: dict, videos: int) -> list[str]:
    """The literature's figures on this test file (reporting/published.py), then ours under each
    figure's convention. ours: {convention: {method: its convention row}}."""
    header = ["Model", *(title for _, title in PUBLISHED_COLUMNS), "convention", "test videos", "source"]
    body = [
        [
            md(entry.model),
            *(f"{entry.numbers[key]:.2f}" if key in entry.numbers else "" for key, _ in PUBLISHED_COLUMNS),
            entry.convention,
            entry.videos,
            entry.source,
        ]
        for entry in entries
    ]
    for convention, rows in ours.items():
        for method, row in rows.items():
            cells = [
                convention_text(row, key, "accuracy" if key.startswith("binary") else "R@1")
                for key, _ in PUBLISHED_COLUMNS
            ]
            body.append([f"{md(method)} (this report)", *cells, convention, str(videos), "this report's result files"])
    return [
        "### Published figures on this test set",
        "",
        *table(header, body),
        "The literature's figures as their sources give them, rounded to two decimals; a cell a source does not "
        "give is empty. This report's methods are computed under the same convention from their score matrices "
        "(means over seeds; a range where ties leave the peer's unstable sort open). Figures over another number "
        "of test videos are not strictly comparable.",
        "",
    ]


def postprocess_note(post: str, settings: dict) -> str:
    """The section note of a post-processing: what it reads, and what each method ran it with."""
    ran = "; ".join(
        f"{md(method)}: "
        + (
            ", ".join(f"{POSTPROCESS_SETTING_NAMES.get(k, k)} {md(number(v))}" for k, v in values.items())
            if values
            else "not recorded (a result from before they were)"
        )
        for method, values in settings.items()
    )
    return f"{POSTPROCESS_NOTES[post]} Run with: {ran}."


def family_note(family: dict) -> list[str]:
    """What every test of a dataset shares: its family, the level, the draws and the unit."""
    kinds = ", ".join(f"{kind} {n}" for kind, n in family["kinds"].items() if n)
    if not family["n_tests"]:
        return []
    return [
        f"**Tests.** One family of m = {family['n_tests']} tests ({kinds}), Holm–Bonferroni at 5%: a test is "
        f"significant where p (Holm) < 0.05. Each CI beside a Holm p is simultaneous: the "
        f"{100 * (1 - family['level']):.2f}% percentile interval (Bonferroni, 5% / m), so all m cover together. "
        f"Resampling unit: {CLUSTER_UNITS[family['unit']]}. Where a method has seeds, its seeds are drawn too "
        f"(two-level bootstrap, {family['resamples']} draws, p = twice the share of draws beyond 0); where both sides "
        "hold one checkpoint each (one seed), the test holds the checkpoints fixed: an exact paired sign-flip test "
        "over the clusters (or drawn sign patterns, past 2^20). '< x': no draw beyond 0, p below the floor x.",
        "",
    ]


def held_fixed(seeds: list[int]) -> str:
    """Which side's checkpoint a pairwise test holds fixed (one seed), or "—" where both draw seeds."""
    fixed = [side for side, n in zip(("A", "B"), seeds, strict=True) if n == 1]
    if len(fixed) == 2:
        return "both (one seed each)"
    return f"{fixed[0]} (one seed)" if fixed else "—"


def test_cells(c: dict) -> list[str]:
    return [f"{c['difference']:.2f}", interval(c["ci_family"], DIFFERENCE_CI_DIGITS), p_text(c), p_text(c, "p_holm")]


def pairwise_table(comparisons: list[dict], family: dict) -> list[str]:
    header = ["Setting", "A", "B", "A − B", "simultaneous CI", "p", "p (Holm)", "checkpoint held fixed"]
    body = [[c["setting"], md(c["a"]), md(c["b"]), *test_cells(c), held_fixed(c["seeds"])] for c in comparisons]
    return [
        "### Pairwise comparisons (text→video R@1, expected)",
        "",
        *table(header, body),
        *design_lines(family),
    ]


def design_lines(family: dict) -> list[str]:
    """The design statement under the pairwise table: per setting, the smallest difference these
    clusters and seeds detect with 80% power at the family's level, or why there is none."""
    lines = []
    for setting, design in family["design"].items():
        if design["difference"] is None:
            lines.append(
                f"- {setting}: no detectable difference to state: the comparisons do not vary, or "
                f"{design['n_clusters']} clusters cannot reach p < 5% / {family['n_tests']}."
            )
        else:
            lines.append(
                f"- {setting}: with these {design['n_clusters']} clusters and these seeds, a difference of "
                f"{design['difference']:.1f} points is detected with 80% power at 5% / {family['n_tests']}."
            )
    if not lines:
        return []
    note = (
        "Design: from the pooled (root mean square) bootstrap SD of the setting's pairwise differences, "
        "(z(1 − 0.05 / 2m) + z(0.8)) SDs. It describes the design, not one pair: a smaller difference can still "
        "be significant, and a larger one missed."
    )
    return [note, "", *lines, ""]


def methods_table(info: dict, columns: list[str]) -> list[str]:
    header = ["Method", "head", *columns, "selected epoch per seed"]
    body = [
        [
            md(method),
            entry["head"],
            *(md(number(entry["settings"][name])) for name in columns),
            selected_epochs_text(entry["selected_epochs"], entry["backbones"]) or "— (zero-shot)",
        ]
        for method, entry in info.items()
    ]
    return table(header, body)


def selected_epochs_text(epochs: list[int], backbones: list[str]) -> str:
    """ "3, 4, 4"; a method trained on several backbones' caches: "clip (hf): 3, 4; ViT-B-32.pt (openai): 4"."""
    if len(set(backbones)) < 2:
        return ", ".join(map(str, epochs))
    by_backbone = {}
    for epoch, backbone in zip(epochs, backbones, strict=True):
        by_backbone.setdefault(backbone, []).append(str(epoch))
    return "; ".join(f"{md(backbone)}: {', '.join(seeds)}" for backbone, seeds in by_backbone.items())


def cost_table(rows: list[tuple[str, str, str, float | None, float | None]]) -> list[str]:
    """rows: (stage, what, device, seconds, of which start-up; None where not recorded)."""

    def seconds_text(seconds):
        return "—" if seconds is None else f"{seconds:,.1f}"

    body = [
        [md(stage), md(what), md(device), seconds_text(seconds), seconds_text(startup)]
        for stage, what, device, seconds, startup in rows
    ]
    total = sum(seconds for _, _, _, seconds, _ in rows if seconds is not None)
    return [
        "## Cost",
        "",
        *table(["Stage", "what", "device", "seconds", "of which start-up"], body),
        f"In all {total:,.1f} s. Start-up: a process's start (the interpreter, imports, the model) and what it "
        "reads before its work; it is part of each stage's seconds.",
        "",
    ]


def direction_table(rows: dict) -> list[str]:
    header = ["Method", "forward captions R@1", "reverse captions R@1", "forward − reverse", "simultaneous CI", "p"]
    header += ["p (Holm)", "Binary forward", "Binary reverse", "original ranked first"]
    body = [
        [
            md(method),
            f"{row['forward']['R@1']:.2f}",
            f"{row['reverse']['R@1']:.2f}",
            *test_cells(row),
            f"{row['binary_forward']:.2f}",
            f"{row['binary_reverse']:.2f}",
            f"{row['bias_original_first']:.2f}",
        ]
        for method, row in rows.items()
    ]
    return [
        "### Direction: Table B and Binary by the query's side",
        "",
        *table(header, body),
        "Text→video, expected R@1 over seeds. A forward caption's video is the original, a reverse caption's the "
        "reversal; the difference is paired by record, each record a cluster (its test is one of the family's). "
        "'original ranked first': the share of Binary pairs where the head scores the original above the reversal "
        "whatever the caption (a tie counts ½): 50 is unbiased, 100 always prefers the natural direction.",
        "",
    ]


def paraphrase_table(rows: dict) -> list[str]:
    header = ["Method", "human captions R@1", "rewrites R@1", "drop", "simultaneous CI", "p", "p (Holm)"]
    header += ["candidates"]
    body = [
        [
            md(method),
            f"{row['human_R@1']:.2f}",
            f"{row['rewrites_R@1']:.2f}",
            *test_cells(row),
            row["n_candidates"],
        ]
        for method, row in rows.items()
    ]
    return [
        "### Paraphrase robustness: RTime's rewrites as queries",
        "",
        *table(header, body),
        "Hard, text→video expected R@1 with the human captions and with their rewrites as queries; the drop is "
        "paired by candidate (each original and reversal: the mean over its human queries minus the mean over its "
        "rewrites), the candidates clustered as the family says. A head that learned word cues rather than the "
        "video's direction drops here.",
        "",
    ]


def order_table(rows: dict, setting_title: str) -> list[str]:
    """Order sensitivity on the setting evaluation checks it on (`setting_title`: the format's title
    of its selection setting, RTime's Hard, a caption-set format's all captions)."""
    changes = [change for change in PERTURBATIONS if change in next(iter(rows.values()))]
    header = ["Method", *(f"{change.replace('_', ' ')}: dropped (%) / mean margin" for change in changes)]
    body = [
        [
            md(method),
            *(
                f"{row[change]['share_dropped']['mean']:.1f} / {row[change]['mean_margin']['mean']:.4g}"
                for change in changes
            ),
        ]
        for method, row in rows.items()
    ]
    return [
        "### Order sensitivity: each query against its own video, its frames changed",
        "",
        *table(header, body),
        f"Queries of {md(setting_title)}; mean over seeds. 'dropped': the share of queries whose score falls; "
        "the margin is the score as cached minus the score changed. Reversed, shuffled and halves swapped are "
        "permutations: an order-blind head (meanP, mlpScore) scores exactly 0 there, which evaluation checks; the "
        "repeated middle frame also changes what is shown.",
        "",
    ]


CSV_HEADER = (
    "dataset",
    "method",
    "postprocess",
    "setting",
    "direction",
    "metric",
    "mean",
    "std",
    "ci_low",
    "ci_high",
    "ci_over",
    "n_seeds",
    "seeds",
    "n_queries",
    "n_tied",
    "trivial",
)


def csv_rows(dataset: str, postprocess: str | None, numbers: dict, seeds: dict, candidates: dict) -> list[list]:
    """results.csv's rows of one group of methods (raw, or one post-processing): one per method x
    setting x direction x metric with the CI the tables show and what it resamples, Binary accuracy
    per direction, and the rewrites' R@1 where the paraphrase analysis ran. Empty where a value does
    not exist (a one-seed method's std, Binary's CI); `trivial` marks R@K that is 100 for any method
    (K at least the candidates a query ranks: `candidates`, per setting)."""
    rows = []

    def row(method, setting, direction, metric, value, n_seeds, ci=("", ""), over="", counts=("", ""), trivial=False):
        std = value.get("std", "") if n_seeds > 1 else ""
        names = [spreadsheet_text(dataset), spreadsheet_text(method), postprocess or "none", setting, direction]
        seed_list = ";".join(str(seed) for seed in seeds[method] if seed is not None)
        rows.append([*names, metric, value["mean"], std, *ci, over, n_seeds, seed_list, *counts, trivial])

    for key, methods in numbers["tables"].items():
        setting, direction = key.split("/")
        for method, cells in methods.items():
            over = "seeds and clusters" if cells["n_seeds"] > 1 else "clusters (one seed)"
            for metric in METRIC_NAMES:
                trivial = metric in trivial_metrics(candidates[setting])
                counts = (cells["n_queries"], cells["n_tied"])
                row(
                    method,
                    setting,
                    direction,
                    metric,
                    cells[metric],
                    cells["n_seeds"],
                    cells[metric]["ci"],
                    over,
                    counts,
                    trivial,
                )
    for method, binary in numbers.get("binary", {}).items():
        for direction in ("t2v", "v2t"):
            if direction in binary:
                counts = (binary[direction]["n_pairs"], binary[direction]["n_tied"])
                row(method, "binary", direction, "accuracy", binary[direction], binary["n_seeds"], counts=counts)
    for method, paraphrase in numbers.get("paraphrase", {}).items():
        row(method, "rewrites", "t2v", "R@1", {"mean": paraphrase["rewrites_R@1"]}, len(seeds[method]))
    return rows
