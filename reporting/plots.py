"""The report's figures, drawn from the numbers report.py computed, each saved as a PNG named for
what it shows and a PDF twin (vector, for a paper).

Matplotlib's object API (Figure, no pyplot): nothing needs a display, and no global state leaks
between figures (each is drawn in `paper_style`'s rc context). Every figure is one column of a
two-column paper wide (COLUMN_WIDTH; panels stacked), with no text under MIN_FONT points at that
size; labelled axes with units, a legend below the axes (it covers no data), series that stay
distinguishable where they overlap (markers and line styles, and small offsets for points with
error bars), a y range fitted to the data, and markers on an axis's edge drawn whole. A method
keeps one colour in every figure of a report (`method_colours`, given to each); R@1/5/10 bars
are greys, so no metric wears a method's colour, and a bar that cannot fail (R@K with K at least
the candidates) is hatched. Each `*_figure` function returns the Figure, so tests read its labels,
legends, colours, sizes and ticks; `save_figure` writes it.
"""

import functools
import io
import math
import textwrap
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from infra.file_io import atomic_write_bytes
from reporting.tables import trivial_metrics

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINE_STYLES = ("-", "--", ":", "-.")
RECALL_KS = ("R@1", "R@5", "R@10")
RECALL_GREYS = ("0.3", "0.6", "0.85")  # the recall chart's bars: not a method's colour
TRIVIAL_HATCH = "////"  # a bar that cannot fail
COLUMN_WIDTH = 3.5  # inches: one column of a two-column paper (IEEE's 3.5; ACM's 3.33 shrinks it 5%)
PANEL_HEIGHT = 2.0  # inches per stacked panel
LEGEND_LABEL_CHARS = 22  # a longer legend label takes the column's width alone
TITLE_CHARS = 50  # a longer panel title wraps
MIN_FONT = 6.5  # points, at COLUMN_WIDTH: the smallest text a printed column still reads
PAPER_STYLE = {
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "figure.titlesize": 8.5,
    "lines.markersize": 4,
    "lines.linewidth": 1.2,
    "errorbar.capsize": 2,
}


def paper_style(draw):
    """Draw a figure with PAPER_STYLE's sizes, in a context that leaves matplotlib's settings as they were."""

    @functools.wraps(draw)
    def drawn(*args, **kwargs):
        with matplotlib.rc_context(PAPER_STYLE):
            return draw(*args, **kwargs)

    return drawn


def colours() -> list[str]:
    return matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]


def method_colours(methods) -> dict:
    """{method: colour}, one per method in order: a report makes it once for all its figures."""
    palette = colours()
    return {method: palette[index % len(palette)] for index, method in enumerate(methods)}


def panels(n_rows: int, height: float = PANEL_HEIGHT) -> tuple[Figure, list]:
    """A column-wide figure of `n_rows` panels, one above the other (room for a legend and title)."""
    figure = Figure(figsize=(COLUMN_WIDTH, height * n_rows + 0.9), layout="constrained")
    return figure, list(figure.subplots(n_rows, 1, squeeze=False)[:, 0])


def outside_legend(figure: Figure, entries: list[tuple]) -> None:
    """One legend for the figure, below the axes, so it covers no data: (handle, label) `entries`."""
    handles, labels = [handle for handle, _ in entries], [label for _, label in entries]
    longest = max(len(label) for label in labels)
    ncols = 1 if longest > LEGEND_LABEL_CHARS else min(len(labels), 3 if longest <= 10 else 2)
    figure.legend(handles, labels, loc="outside lower center", ncols=ncols)


def series(ax) -> list[tuple]:
    """The (handle, label) of each labelled series of a panel, for the figure's legend."""
    return list(zip(*ax.get_legend_handles_labels(), strict=True))


def percent_axis(ax, highest: float, room: float) -> None:
    """A percentage y axis from 0 to the data's `highest` value and `room` above it (for a value
    written there), in tens, not to 100 for data below 60; ticks at most 100."""
    top = max(10.0, math.ceil((highest + room) / 10) * 10)
    ax.set_ylim(0, top)
    ax.set_yticks(np.arange(0, min(top, 100) + 1, 20 if top > 60 else 10))


def save_figure(figure: Figure, path: Path, dpi: int = 200) -> str:
    """The figure as `path` (PNG, for the markdown report) and its PDF twin beside it (vector, with
    no creation date, so the same figure gives the same bytes). Returns the PNG's name."""
    for suffix, options in ((".png", {"dpi": dpi}), (".pdf", {"metadata": {"CreationDate": None}})):
        buffer = io.BytesIO()
        figure.savefig(buffer, format=suffix[1:], **options)
        atomic_write_bytes(path.with_suffix(suffix), buffer.getvalue())
        figure.set_layout_engine("none")  # laid out once: the twin keeps the PNG's layout (a fifth faster)
    return path.name


def dataset_title(figure: Figure, dataset: str | None) -> None:
    """The dataset a figure shows, above its panels."""
    if dataset:
        figure.suptitle(dataset)


@paper_style
def recall_figure(
    tables: dict, methods: list[str], settings: list[str], titles: dict, dataset=None, candidates=None
) -> Figure:
    """Text->video R@1, R@5 and R@10 per method, bars with 95% CIs; each bar's value written above
    its CI, so a bar of height 0 is seen. `candidates` ({setting: candidates a query ranks}) hatches
    the bars that cannot fail, and the legend says so."""
    figure, axes = panels(len(settings))
    width = 0.8 / len(RECALL_KS)
    hatched = False  # a legend entry for the hatching where a bar has it
    for ax, setting in zip(axes, settings, strict=True):
        rows = tables[f"{setting}/t2v"]
        highest = 0.0
        for index, metric in enumerate(RECALL_KS):
            means = np.array([rows[m][metric]["mean"] for m in methods])
            low, high = np.array([rows[m][metric]["ci"] for m in methods]).T
            trivial = candidates is not None and metric in trivial_metrics(candidates[setting])
            hatched |= trivial
            positions = np.arange(len(methods)) + width * (index - (len(RECALL_KS) - 1) / 2)
            ax.bar(
                positions,
                means,
                width,
                yerr=np.clip([means - low, high - means], 0, None),
                color=RECALL_GREYS[index],
                edgecolor="black",
                linewidth=0.5,
                hatch=TRIVIAL_HATCH if trivial else None,
            )
            for x, mean, top in zip(positions, means, np.maximum(means, high), strict=True):
                ax.text(x, top + 1.5, f"{mean:.0f}", ha="center", va="bottom", fontsize=MIN_FONT, rotation=90)
            highest = max(highest, float(np.max(np.maximum(means, high))))
        ax.set_xticks(np.arange(len(methods)), methods, rotation=20, ha="right")
        percent_axis(ax, highest, room=16)  # the value written above a bar's CI
        ax.set_xlabel("method")
        ax.set_ylabel("text→video recall (%)")
        ax.set_title(f"{titles[setting]}: R@K with 95% CI")
    entries = [(Patch(facecolor=grey, edgecolor="black"), k) for grey, k in zip(RECALL_GREYS, RECALL_KS, strict=True)]
    if hatched:
        trivial_patch = Patch(facecolor="white", edgecolor="black", hatch=TRIVIAL_HATCH)
        entries.append((trivial_patch, "cannot fail (K ≥ candidates)"))
    outside_legend(figure, entries)
    dataset_title(figure, dataset)
    return figure


@paper_style
def rank_cdf_figure(ranks: dict, settings: list[str], titles: dict, colour_of=None, dataset=None) -> Figure:
    """Share of queries whose expected text->video rank is at most r, per method (`ranks`:
    {setting: {method: per-query expected ranks}}); log r axis with plain-number ticks."""
    figure, axes = panels(len(settings))
    colour_of = colour_of or method_colours(ranks[settings[0]])
    for ax, setting in zip(axes, settings, strict=True):
        for index, (method, values) in enumerate(ranks[setting].items()):
            values = np.sort(values)
            ax.step(
                values,
                100 * np.arange(1, len(values) + 1) / len(values),
                where="post",
                color=colour_of[method],
                linestyle=LINE_STYLES[index % len(LINE_STYLES)],
                marker=MARKERS[index % len(MARKERS)],
                markevery=max(1, len(values) // 8),
                label=method,
                clip_on=False,  # a marker at 100% is drawn whole
            )
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(0, 100)
        ax.set_xlabel("expected text→video rank r (log scale)")
        ax.set_ylabel("queries with rank ≤ r (%)")
        ax.set_title(f"{titles[setting]}: rank CDF")
    outside_legend(figure, series(axes[0]))
    dataset_title(figure, dataset)
    return figure


@paper_style
def contrast_figure(
    tables: dict, methods: list[str], settings: tuple[str, str], titles: dict, colour_of=None, dataset=None
) -> Figure:
    """Text->video R@1 on two settings per method (the same queries, without and with the reversals
    among the candidates: RTime's Origin and Hard), with 95% CIs; methods offset sideways."""
    figure, (ax,) = panels(1)
    colour_of = colour_of or method_colours(methods)
    offsets = np.linspace(-0.12, 0.12, len(methods)) if len(methods) > 1 else [0.0]
    highest = 0.0
    for index, method in enumerate(methods):
        cells = [tables[f"{setting}/t2v"][method]["R@1"] for setting in settings]
        means = np.array([cell["mean"] for cell in cells])
        lows, highs = np.array([cell["ci"] for cell in cells]).T
        errors = np.clip([means - lows, highs - means], 0, None)
        ax.errorbar(
            np.arange(2) + offsets[index],
            means,
            yerr=errors,
            color=colour_of[method],
            linestyle=LINE_STYLES[index % len(LINE_STYLES)],
            marker=MARKERS[index % len(MARKERS)],
            label=method,
            clip_on=False,  # a marker at 0 is drawn whole, not cut by the axis
        )
        highest = max(highest, float(np.max(np.maximum(means, highs))))
    ax.set_xticks([0, 1], [titles[setting] for setting in settings])
    ax.set_xlim(-0.5, 1.5)
    percent_axis(ax, highest, room=5)
    ax.set_xlabel("setting")
    ax.set_ylabel("text→video R@1 (%), 95% CI")
    ax.set_title(" → ".join(titles[setting] for setting in settings))
    outside_legend(figure, series(ax))
    dataset_title(figure, dataset)
    return figure


@paper_style
def training_figure(trained: dict, selection_metric: str, colour_of=None) -> Figure:
    """Per epoch, the validation metric that selects the best epoch and the training loss: per
    method, the mean over its seeds as a line in its colour, the seeds' range as a band."""
    figure, (valid_ax, loss_ax) = panels(2)
    colour_of = colour_of or method_colours(trained)
    for index, (method, trainings) in enumerate(trained.items()):
        style = {
            "color": colour_of[method],
            "linestyle": LINE_STYLES[index % len(LINE_STYLES)],
            "marker": MARKERS[index % len(MARKERS)],
        }
        label = f"{method} ({len(trainings)} seed{'s' if len(trainings) > 1 else ''}: mean, range)"
        for ax, key in ((valid_ax, "selection"), (loss_ax, "train_loss")):
            epochs, mean, low, high = over_seeds_by_epoch([training["history"] for training in trainings], key)
            ax.plot(epochs, mean, markevery=max(1, len(epochs) // 6), label=label, **style)
            ax.fill_between(epochs, low, high, color=colour_of[method], alpha=0.2, linewidth=0)
    for ax in (valid_ax, loss_ax):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    valid_ax.set_ylabel("validation R@1 (%)")
    valid_ax.set_title(textwrap.fill(f"Selection metric: {selection_metric}", TITLE_CHARS, break_on_hyphens=False))
    loss_ax.set_ylabel("training loss (symmetric InfoNCE)")
    loss_ax.set_title("Training loss")
    outside_legend(figure, series(valid_ax))
    return figure


def over_seeds_by_epoch(histories: list[list[dict]], key: str):
    """(epochs, mean, min, max) of `key` over the seeds that logged it at each epoch (seeds may run
    different numbers of epochs; an epoch with no value, the loss before training, is left out)."""
    values = {}
    for history in histories:
        for record in history:
            if record.get(key) is not None:
                values.setdefault(record["epoch"], []).append(record[key])
    epochs = sorted(values)
    per_epoch = [np.array(values[epoch], dtype=np.float64) for epoch in epochs]
    return (
        epochs,
        [float(v.mean()) for v in per_epoch],
        [float(v.min()) for v in per_epoch],
        [float(v.max()) for v in per_epoch],
    )
