"""The report's figures, drawn from the numbers report.py computed and written straight to PNG files.

Matplotlib's object API (Figure, no pyplot): nothing needs a display, and no global state leaks
between figures.
"""

import io
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from evaluation.retrieval_stats import METRICS
from infra.file_io import atomic_write_bytes


def subplots(n_columns: int, figsize: tuple[float, float]):
    figure = Figure(figsize=figsize)
    return figure, figure.subplots(1, n_columns, squeeze=False)[0]


def save_figure(figure: Figure, path: Path) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())
    return path.name


def seed_averaged(runs: list, key: str, column: str) -> np.ndarray:
    return np.mean([run["per_query"][key][column] for run in runs], axis=0)


def dataset_plots(methods: dict, tables: dict, settings: list, titles: dict, out_dir: Path, prefix: str) -> list[str]:
    """Recall@K bars with CIs, the rank CDF and (RTime) the Origin -> Hard drop of one dataset."""
    names = list(methods)
    plots = []
    figure, axes = subplots(len(settings), (5 * len(settings), 3.5))
    for ax, setting in zip(axes, settings, strict=True):
        rows = tables[f"{setting}/t2v"]
        for offset, metric in enumerate(("R@1", "R@5", "R@10")):
            means = [rows[m][metric]["mean"] for m in names]
            errors = np.array(
                [
                    [rows[m][metric]["mean"] - rows[m][metric]["ci"][0] for m in names],
                    [rows[m][metric]["ci"][1] - rows[m][metric]["mean"] for m in names],
                ]
            )
            ax.bar(
                np.arange(len(names)) + 0.27 * (offset - 1),
                means,
                0.27,
                yerr=np.clip(errors, 0, None),
                capsize=3,
                label=metric,
            )
        ax.set_xticks(np.arange(len(names)), names, rotation=20)
        ax.set_title(f"{titles[setting]}: text→video (95% CI)")
        ax.set_ylabel("recall (%)")
        ax.legend()
    plots.append(save_figure(figure, out_dir / f"{prefix}recall_at_k.png"))

    figure, axes = subplots(len(settings), (5 * len(settings), 3.5))
    for ax, setting in zip(axes, settings, strict=True):
        for method in names:
            ranks = np.sort(seed_averaged(methods[method], f"{setting}/t2v", METRICS["MnR"][0]))
            ax.step(ranks, np.arange(1, len(ranks) + 1) / len(ranks), where="post", label=method)
        ax.set_xscale("log")
        ax.set_title(f"{titles[setting]}: CDF of expected text→video rank")
        ax.set_xlabel("rank")
        ax.legend()
    plots.append(save_figure(figure, out_dir / f"{prefix}rank_cdf.png"))

    if {"origin", "hard"} <= set(settings):
        figure, (ax,) = subplots(1, (5, 3.5))
        for method in names:
            values = [tables[f"{s}/t2v"][method]["R@1"]["mean"] for s in ("origin", "hard")]
            ax.plot(["Origin", "Hard"], values, marker="o", label=method)
        ax.set_title("Origin → Hard: text→video R@1")
        ax.set_ylabel("R@1 (%)")
        ax.legend()
        plots.append(save_figure(figure, out_dir / f"{prefix}origin_to_hard.png"))
    return plots


def training_curves(trained: dict, out_dir: Path) -> str:
    """One line per seed of each method's validation metric over epochs, one colour per method."""
    figure, (ax,) = subplots(1, (6, 3.5))
    colours = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    metrics = set()
    for index, (method, trainings) in enumerate(trained.items()):
        for seed_index, training in enumerate(trainings):
            history = training["history"]
            metrics.add(training["selection_metric"])
            ax.plot(
                [r["epoch"] for r in history],
                [r["selection"] for r in history],
                alpha=0.7,
                color=colours[index % len(colours)],
                label=method if seed_index == 0 else None,
            )
    ax.set_title("Training: " + " / ".join(sorted(metrics)) + ", one line per seed", fontsize=8)
    ax.set_xlabel("epoch")
    if ax.lines:
        ax.legend(fontsize=7)
    return save_figure(figure, out_dir / "training_curves.png")
