"""The report's markdown tables: how a number and a name are written, and each table's layout.

Every text from a result (a method name, a dataset label) goes through `md`, so a `|` or a line
break in it cannot break a row. Numbers are written the one way `number` says: a learning rate as
3e-4, not 0.0003000000000000001.
"""

METRIC_NAMES = ("R@1", "R@5", "R@10", "MdR", "MnR")


def md(text) -> str:
    """A text safe inside a markdown table cell: pipes escaped, line breaks of any kind made spaces."""
    return " ".join(str(text).replace("\\", "\\\\").replace("|", "\\|").splitlines())


def number(value) -> str:
    """A setting's value in short form: 3e-4 or 4.4e-4 for small or large floats, 0.2 for others;
    non-numbers as they are."""
    if isinstance(value, bool) or not isinstance(value, int | float) or isinstance(value, int) or value == 0:
        return str(value)
    if abs(value) < 1e-2 or abs(value) >= 1e4:
        mantissa, exponent = f"{value:.1e}".split("e")
        return f"{float(mantissa):g}e{int(exponent)}"
    return f"{value:.3g}"


def count(value: float, total: int) -> str:
    """A count over seeds of a total, e.g. tied queries: "8/8", or "7.5/8" when seeds differ."""
    return f"{value:g}/{total}"


def cell(value: dict) -> str:
    return f"{value['mean']:.2f} ± {value['std']:.2f} [{value['ci'][0]:.2f}, {value['ci'][1]:.2f}]"


def table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(item) for item in row) + " |" for row in rows] + [""]


def metric_table(title: str, rows: dict, footnote: str = "") -> list[str]:
    header = ["Method", *METRIC_NAMES, "tied queries", "seeds"]
    body = [
        [
            md(method),
            *(cell(row[metric]) for metric in METRIC_NAMES),
            count(row["n_tied"], row["n_queries"]),
            row["n_seeds"],
        ]
        for method, row in rows.items()
    ]
    return [f"### {title}", "", *table(header, body)] + ([footnote, ""] if footnote else [])


def binary_table(rows: dict) -> list[str]:
    header = ["Method", "text→video accuracy", "tied", "video→text accuracy", "tied"]
    body = [
        [
            md(method),
            f"{row['t2v']['mean']:.2f} ± {row['t2v']['std']:.2f}",
            count(row["t2v"]["n_tied"], row["t2v"]["n_pairs"]),
            f"{row['v2t']['mean']:.2f} ± {row['v2t']['std']:.2f}",
            count(row["v2t"]["n_tied"], row["v2t"]["n_pairs"]),
        ]
        for method, row in rows.items()
    ]
    return ["### Binary: original vs its reversal", "", *table(header, body), "An exact tie counts one half.", ""]


def pairwise_table(comparisons: list[dict]) -> list[str]:
    header = ["Setting", "A", "B", "A − B", "95% CI", "p", "p (Holm)"]
    body = [
        [
            c["setting"],
            md(c["a"]),
            md(c["b"]),
            f"{c['difference']:.2f}",
            f"[{c['ci'][0]:.2f}, {c['ci'][1]:.2f}]",
            f"{c['p']:.4f}",
            f"{c['p_holm']:.4f}",
        ]
        for c in comparisons
    ]
    return ["### Pairwise comparisons (text→video R@1, expected)", "", *table(header, body)]


def methods_table(info: dict, columns: list[str]) -> list[str]:
    header = ["Method", "head", *columns, "selected epoch per seed"]
    body = [
        [
            md(method),
            entry["head"],
            *(md(number(entry["settings"][name])) for name in columns),
            ", ".join(str(epoch) for epoch in entry["selected_epochs"]) or "— (zero-shot)",
        ]
        for method, entry in info.items()
    ]
    return table(header, body)


def cost_table(rows: list[tuple[str, str, str, float | None]]) -> list[str]:
    """rows: (stage, what, device, seconds or None)."""
    body = [
        [md(stage), md(what), md(device), "—" if seconds is None else f"{seconds:,.1f}"]
        for stage, what, device, seconds in rows
    ]
    return ["## Cost", "", *table(["Stage", "what", "device", "seconds"], body)]
