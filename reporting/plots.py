"""The report's figures, drawn from the numbers report.py computed, each saved as a PNG named for what it shows.

Matplotlib's object API (Figure, no pyplot): nothing needs a display, and no global state leaks
between figures. Every figure has labelled axes with units, a legend outside the axes (it covers
no data), and series that stay distinguishable where they overlap (markers and line styles, and
small offsets for points with error bars). Each `*_figure` function returns the Figure, so tests
read its labels, legends and ticks; `save_figure` writes it.
"""

import io
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

from infra.file_io import atomic_write_bytes

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINE_STYLES = ("-", "--", ":", "-.")
RECALL_KS = ("R@1", "R@5", "R@10")


def colours() -> list[str]:
    return matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]


def panels(n_columns: int, height: float = 3.6, width: float = 4.6) -> tuple[Figure, list]:
    figure = Figure(figsize=(width * n_columns + 1.8, height), layout="constrained")
    return figure, list(figure.subplots(1, n_columns, squeeze=False)[0])


def outside_legend(figure: Figure, axes: list) -> None:
    """One legend for the figure, right of the axes, so it covers no data."""
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside right upper", fontsize=8)


def save_figure(figure: Figure, path: Path, dpi: int = 110) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    atomic_write_bytes(path, buffer.getvalue())
    return path.name


def recall_figure(tables: dict, methods: list[str], settings: list[str], titles: dict) -> Figure:
    """Text->video R@1, R@5 and R@10 per method, bars with 95% CIs; each bar's value written above
    its CI, so a bar of height 0 is seen."""
    figure, axes = panels(len(settings), width=max(4.6, 1.3 * len(methods) + 1.5))
    width = 0.8 / len(RECALL_KS)
    for ax, setting in zip(axes, settings, strict=True):
        rows = tables[f"{setting}/t2v"]
        for index, metric in enumerate(RECALL_KS):
            means = np.array([rows[m][metric]["mean"] for m in methods])
            low, high = np.array([rows[m][metric]["ci"] for m in methods]).T
            positions = np.arange(len(methods)) + width * (index - (len(RECALL_KS) - 1) / 2)
            ax.bar(
                positions,
                means,
                width,
                yerr=np.clip([means - low, high - means], 0, None),
                capsize=3,
                edgecolor="black",
                linewidth=0.6,
                label=metric,
            )
            for x, mean, top in zip(positions, means, np.maximum(means, high), strict=True):
                ax.text(x, top + 1.5, f"{mean:.0f}", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(np.arange(len(methods)), methods, rotation=20, ha="right")
        ax.set_ylim(0, 112)
        ax.set_xlabel("method")
        ax.set_ylabel("text→video recall (%)")
        ax.set_title(f"{titles[setting]}: R@K with 95% CI")
    outside_legend(figure, axes)
    return figure


def rank_cdf_figure(ranks: dict, settings: list[str], titles: dict) -> Figure:
    """Share of queries whose expected text->video rank is at most r, per method (`ranks`:
    {setting: {method: per-query expected ranks}}); log r axis with plain-number ticks."""
    figure, axes = panels(len(settings))
    for ax, setting in zip(axes, settings, strict=True):
        for index, (method, values) in enumerate(ranks[setting].items()):
            values = np.sort(values)
            ax.step(
                values,
                100 * np.arange(1, len(values) + 1) / len(values),
                where="post",
                color=colours()[index % len(colours())],
                linestyle=LINE_STYLES[index % len(LINE_STYLES)],
                marker=MARKERS[index % len(MARKERS)],
                markevery=max(1, len(values) // 8),
                markersize=4,
                label=method,
            )
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(0, 102)
        ax.set_xlabel("expected text→video rank r (log scale)")
        ax.set_ylabel("queries with rank ≤ r (%)")
        ax.set_title(f"{titles[setting]}: rank CDF")
    outside_legend(figure, axes)
    return figure


def contrast_figure(tables: dict, methods: list[str], settings: tuple[str, str], titles: dict) -> Figure:
    """Text->video R@1 on two settings per method (the same queries, without and with the reversals
    among the candidates: RTime's Origin and Hard), with 95% CIs; methods offset sideways."""
    figure, (ax,) = panels(1)
    offsets = np.linspace(-0.12, 0.12, len(methods)) if len(methods) > 1 else [0.0]
    for index, method in enumerate(methods):
        cells = [tables[f"{setting}/t2v"][method]["R@1"] for setting in settings]
        means = np.array([cell["mean"] for cell in cells])
        lows, highs = np.array([cell["ci"] for cell in cells]).T
        errors = np.clip([means - lows, highs - means], 0, None)
        ax.errorbar(
            np.arange(2) + offsets[index],
            means,
            yerr=errors,
            capsize=3,
            color=colours()[index % len(colours())],
            linestyle=LINE_STYLES[index % len(LINE_STYLES)],
            marker=MARKERS[index % len(MARKERS)],
            label=method,
        )
    ax.set_xticks([0, 1], [titles[setting] for setting in settings])
    ax.set_xlim(-0.5, 1.5)
    ax.set_ylim(0, 105)
    ax.set_xlabel("setting")
    ax.set_ylabel("text→video R@1 (%), 95% CI")
    ax.set_title(" → ".join(titles[setting] for setting in settings))
    outside_legend(figure, [ax])
    return figure


def training_figure(trained: dict, selection_metric: str) -> Figure:
    """Per epoch, the validation metric that selects the best epoch and the training loss: one
    colour per method, one line style and marker per seed."""
    figure, (valid_ax, loss_ax) = panels(2)
    for index, (method, trainings) in enumerate(trained.items()):
        colour = colours()[index % len(colours())]
        for seed_index, training in enumerate(trainings):
            history = training["history"]
            style = {
                "color": colour,
                "linestyle": LINE_STYLES[seed_index % len(LINE_STYLES)],
                "marker": MARKERS[seed_index % len(MARKERS)],
                "markevery": max(1, len(history) // 6),
                "markersize": 4,
                "label": f"{method}, seed {training['settings'].get('seed')}",
            }
            valid_ax.plot([r["epoch"] for r in history], [r["selection"] for r in history], **style)
            trained_epochs = [r for r in history if r.get("train_loss") is not None]
            loss_ax.plot([r["epoch"] for r in trained_epochs], [r["train_loss"] for r in trained_epochs], **style)
    for ax in (valid_ax, loss_ax):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    valid_ax.set_ylabel("validation R@1 (%)")
    valid_ax.set_title(f"Selection metric: {selection_metric}", fontsize=9)
    loss_ax.set_ylabel("training loss (symmetric InfoNCE)")
    loss_ax.set_title("Training loss", fontsize=9)
    outside_legend(figure, [valid_ax])
    return figure
