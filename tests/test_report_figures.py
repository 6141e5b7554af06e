"""The report as a reader sees it: every figure has labelled axes with units, a legend that covers
no data, readable ticks and series that stay apart where they overlap (read through matplotlib's
objects); tables write numbers the short way and say when a metric cannot fail."""

import itertools
import json
import re
from dataclasses import asdict

import matplotlib
import matplotlib.image
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.container import BarContainer, ErrorbarContainer

import clip_vendor
import evaluate
import report
from fixtures.synthetic_cache import write_order_only_cache
from make_demo_data import write_tiny_clip
from reporting import plots
from reporting.tables import cell as table_cell
from reporting.tables import count, md, number

METHODS = ["meanP zero-shot", "seqTransf", "seqTransf copy"]  # the last two identical: they overlap exactly
SETTINGS = ["origin", "hard"]
TITLES = {"origin": "RTime-Origin", "hard": "RTime-Hard"}


def cell(mean, low, high):
    return {"mean": mean, "std": 0.0, "ci": [low, high]}


def tables():
    rows = {
        "meanP zero-shot": {"R@1": cell(0.0, 0.0, 0.0), "R@5": cell(10.0, 2.0, 20.0), "R@10": cell(30.0, 20.0, 40.0)},
        "seqTransf": {"R@1": cell(40.0, 30.0, 50.0), "R@5": cell(80.0, 70.0, 90.0), "R@10": cell(95.0, 90.0, 100.0)},
    }
    rows["seqTransf copy"] = rows["seqTransf"]
    return {f"{setting}/t2v": rows for setting in SETTINGS}


def drawn(figure):
    FigureCanvasAgg(figure).draw()
    return figure


def assert_legend_covers_no_axes(figure):
    renderer = figure.canvas.get_renderer()
    legends = figure.legends or [ax.get_legend() for ax in figure.axes if ax.get_legend()]
    assert legends, "no legend"
    for legend in legends:
        box = legend.get_window_extent(renderer)
        for ax in figure.axes:
            assert not box.overlaps(ax.get_window_extent(renderer)), "the legend sits on the data"


def assert_labelled(ax, unit_pattern=r"\(.+\)"):
    assert ax.get_xlabel() and ax.get_ylabel(), "an axis has no label"
    assert re.search(unit_pattern, ax.get_ylabel()), f"no unit in {ax.get_ylabel()!r}"


def assert_tick_labels_apart(ax, renderer):
    boxes = [label.get_window_extent(renderer) for label in ax.get_xticklabels() if label.get_text()]
    for left, right in itertools.pairwise(boxes):
        assert left.x1 <= right.x0 + 0.5, "x tick labels overlap"


def test_recall_bars_show_cis_zero_bars_and_a_legend_beside_the_data():
    figure = drawn(plots.recall_figure(tables(), METHODS, SETTINGS, TITLES))
    renderer = figure.canvas.get_renderer()
    assert_legend_covers_no_axes(figure)
    assert [text.get_text() for text in figure.legends[0].get_texts()] == ["R@1", "R@5", "R@10"]
    for ax in figure.axes:
        assert_labelled(ax, r"\(%\)")
        assert "0" in [text.get_text() for text in ax.texts]  # meanP's R@1 of 0 is written, not invisible
        assert len([c for c in ax.containers if isinstance(c, ErrorbarContainer)]) == 3
        assert_tick_labels_apart(ax, renderer)


def error_bar_ends(container):
    """[(low, high)] of each bar of an ErrorbarContainer, as drawn."""
    (segments,) = [collection.get_segments() for collection in container.lines[2]]
    return [tuple(sorted(float(y) for _, y in segment)) for segment in segments]


def test_figures_draw_the_interval_the_table_prints():
    """The statistics review (finding 8): the plots drew the query-only CI ([33.3, 66.7]) where the
    table printed the one over seeds and queries ([16.7, 83.3]) for the same cell. A cell now holds
    one CI, which both draw."""
    rows = tables()
    figure = drawn(plots.recall_figure(rows, ["meanP zero-shot", "seqTransf"], SETTINGS, TITLES))
    bars = [c for c in figure.axes[1].containers if isinstance(c, ErrorbarContainer)]  # R@1, R@5, R@10
    assert [error_bar_ends(bar)[1] for bar in bars] == [(30.0, 50.0), (70.0, 90.0), (90.0, 100.0)]
    assert [error_bar_ends(bar)[0] for bar in bars] == [(0.0, 0.0), (2.0, 20.0), (20.0, 40.0)]
    figure = drawn(plots.contrast_figure(rows, ["seqTransf"], ("origin", "hard"), TITLES))
    (bar,) = [c for c in figure.axes[0].containers if isinstance(c, ErrorbarContainer)]
    assert error_bar_ends(bar) == [(30.0, 50.0), (30.0, 50.0)]
    assert table_cell(rows["hard/t2v"]["seqTransf"]["R@1"], "R@1", 2) == "40.00 ± 0.00 [30, 50]"  # the table's


def test_rank_cdf_has_plain_ticks_and_keeps_identical_curves_apart():
    ranks = {s: {m: np.array([1.0, 2.0, 3.5, 3.5, 9.0]) for m in METHODS} for s in SETTINGS}
    figure = drawn(plots.rank_cdf_figure(ranks, SETTINGS, TITLES))
    renderer = figure.canvas.get_renderer()
    assert_legend_covers_no_axes(figure)
    for ax in figure.axes:
        assert_labelled(ax, r"\(%\)")
        assert "log scale" in ax.get_xlabel()
        majors = [label.get_text() for label in ax.get_xticklabels() if label.get_text()]
        assert majors and all(re.fullmatch(r"\d+(\.\d+)?", text) for text in majors), majors
        assert not [label.get_text() for label in ax.get_xticklabels(minor=True) if label.get_text()]
        assert_tick_labels_apart(ax, renderer)
        styles = {(line.get_linestyle(), line.get_marker()) for line in ax.get_lines()}
        assert len(styles) == len(METHODS)  # identical data, yet every curve has its own line and marker


def test_origin_to_hard_contrast_has_cis_and_offsets_overlapping_methods():
    figure = drawn(plots.contrast_figure(tables(), METHODS, ("origin", "hard"), TITLES))
    assert_legend_covers_no_axes(figure)
    (ax,) = figure.axes
    assert_labelled(ax, r"\(%\)")
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == len(METHODS)
    x_positions = {tuple(np.round(c.lines[0].get_xdata(), 3)) for c in bars}
    assert len(x_positions) == len(METHODS)  # identical methods are set side by side, not on one another


def test_training_curves_show_each_method_as_the_mean_of_its_seeds_with_their_range():
    def history(scale):
        return [{"epoch": e, "selection": scale * e, "train_loss": 5.0 / e} for e in range(1, 8)]

    trained = {
        m: [{"history": history(k + 1 + s), "settings": {"seed": s}} for s in (0, 1)] for k, m in enumerate(METHODS[1:])
    }
    figure = drawn(plots.training_figure(trained, "valid hard text->video R@1"))
    valid_ax, loss_ax = figure.axes
    assert_legend_covers_no_axes(figure)
    assert valid_ax.get_ylabel() == "validation R@1 (%)" and "loss" in loss_ax.get_ylabel()
    for ax in (valid_ax, loss_ax):
        assert ax.get_xlabel() == "epoch"
        assert all(float(tick).is_integer() for tick in ax.get_xticks())
        assert ax.title.get_fontsize() >= plots.MIN_FONT
        styles = [(line.get_color(), line.get_linestyle(), line.get_marker()) for line in ax.get_lines()]
        assert len(styles) == 2 and len(set(styles)) == 2  # one line per method, each its own look
        assert len(ax.collections) == 2  # and its seeds' range as a band
    seq = valid_ax.get_lines()[0]
    np.testing.assert_allclose(seq.get_ydata(), [1.5 * e for e in range(1, 8)])  # seeds 1x and 2x: mean 1.5x
    labels = [text.get_text() for text in figure.legends[0].get_texts()]
    assert labels == ["seqTransf (2 seeds: mean, range)", "seqTransf copy (2 seeds: mean, range)"]


def test_a_method_keeps_its_colour_in_every_figure_and_each_names_its_dataset():
    """The issue: seqTransf was red in one figure and green in the next (colours went by position
    among each figure's methods), and titles did not name the dataset."""
    colour_of = plots.method_colours(["meanP zero-shot", "mlpScore", "seqTransf"])
    ranks = {s: {m: np.array([1.0, 2.0, 4.0]) for m in ("meanP zero-shot", "seqTransf")} for s in SETTINGS}
    trained = {"mlpScore": [{"history": [{"epoch": 1, "selection": 1.0, "train_loss": 2.0}]}], "seqTransf": []}
    trained["seqTransf"] = trained["mlpScore"]
    drawn_figures = [
        plots.rank_cdf_figure(ranks, SETTINGS, TITLES, colour_of, "RTime test"),
        plots.contrast_figure(tables(), ["seqTransf"], ("origin", "hard"), TITLES, colour_of, "RTime test"),
        plots.training_figure(trained, "valid R@1", colour_of),
    ]
    for figure in drawn_figures:
        for line in (line for ax in figure.axes for line in ax.get_lines()):
            method = next((m for m in colour_of if line.get_label().startswith(m)), None)
            if method:
                assert line.get_color() == colour_of[method], (line.get_label(), line.get_color())
    assert colour_of["seqTransf"] != colour_of["mlpScore"]
    recall = plots.recall_figure(tables(), METHODS, SETTINGS, TITLES, "RTime test")
    assert all(figure.get_suptitle() == "RTime test" for figure in (*drawn_figures[:2], recall))
    bar_colours = {bar.get_facecolor()[:3] for ax in recall.axes for bar in ax.patches}
    assert not bar_colours & {matplotlib.colors.to_rgb(c) for c in colour_of.values()}  # greys, not a method's


def every_figure():
    """One of each figure the report draws, on the test tables: (name, figure)."""
    ranks = {s: {m: np.array([1.0, 2.0, 3.5, 3.5, 9.0]) for m in METHODS} for s in SETTINGS}
    history = [{"epoch": e, "selection": 10.0 * e, "train_loss": 5.0 / e} for e in range(1, 5)]
    selection = "valid hard text->video R@1 (tie-aware expected)"  # as long as train_head.py's
    return [
        ("recall", plots.recall_figure(tables(), METHODS, SETTINGS, TITLES, "RTime test", {"origin": 2, "hard": 4})),
        ("rank_cdf", plots.rank_cdf_figure(ranks, SETTINGS, TITLES, None, "RTime test")),
        ("contrast", plots.contrast_figure(tables(), METHODS, ("origin", "hard"), TITLES, None, "RTime test")),
        ("training", plots.training_figure({m: [{"history": history}] * 3 for m in METHODS}, selection)),
    ]


def test_every_figure_reads_at_one_column_width_and_has_a_vector_twin_of_that_size(tmp_path):
    """Issue 29: the recall chart was 5:1 at a fixed size, so its text was about 2pt in one column."""
    for name, figure in every_figure():
        drawn(figure)
        assert figure.get_size_inches()[0] == pytest.approx(plots.COLUMN_WIDTH)
        texts = [t for t in figure.findobj(matplotlib.text.Text) if t.get_visible() and t.get_text().strip()]
        small = [(t.get_text(), t.get_fontsize()) for t in texts if t.get_fontsize() < plots.MIN_FONT]
        assert texts and not small, (name, small)
        assert_legend_covers_no_axes(figure)
        plots.save_figure(figure, tmp_path / f"{name}.png")
        pixels = matplotlib.image.imread(tmp_path / f"{name}.png")[..., :3]
        edges = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
        assert (edges == 1.0).all(), name  # white all round: no title or legend cut at the figure's edge
        pdf = (tmp_path / f"{name}.pdf").read_bytes()
        width = float(re.search(rb"/MediaBox \[\s*0 0 ([\d.]+)", pdf).group(1))
        assert width == pytest.approx(72 * plots.COLUMN_WIDTH)  # points: it goes in a column at 100%
    assert matplotlib.rcParams["font.size"] == matplotlib.rcParamsDefault["font.size"]  # no style leaked


def test_y_ranges_fit_the_data_and_markers_on_an_edge_are_drawn_whole():
    """Issue 29: the y axis ran to 100 for data below 60, and markers at 0 were cut in half."""
    low = {f"{s}/t2v": {m: {k: cell(20.0, 10.0, 40.0) for k in plots.RECALL_KS} for m in METHODS} for s in SETTINGS}
    for ax in plots.recall_figure(low, METHODS, SETTINGS, TITLES).axes:
        assert 40.0 < ax.get_ylim()[1] <= 60.0 and max(ax.get_yticks()) <= 100
    (ax,) = plots.contrast_figure(tables(), ["meanP zero-shot"], ("origin", "hard"), TITLES).axes
    assert ax.get_ylim() == (0.0, 10.0)  # R@1 of 0 with a CI of [0, 0]: the axis fits it, not 0-100
    assert all(not artist.get_clip_on() for artist in ax.get_lines())  # the marker at 0 drawn whole
    assert all(
        not line.get_clip_on()
        for line in plots.rank_cdf_figure({s: {"a": np.array([1.0, 2.0])} for s in SETTINGS}, SETTINGS, TITLES)
        .axes[0]
        .get_lines()
    )


def test_bars_that_cannot_fail_are_hatched_and_the_legend_says_so():
    """Issue 29: R@5/R@10 bars stood at a trivial 100 with no mark."""
    figure = plots.recall_figure(tables(), METHODS, SETTINGS, TITLES, None, {"origin": 5, "hard": 20})
    origin, hard = figure.axes
    hatches = [[bar.get_hatch() for bar in c] for c in origin.containers if isinstance(c, BarContainer)]
    assert hatches == [[None] * 3, [plots.TRIVIAL_HATCH] * 3, [plots.TRIVIAL_HATCH] * 3]  # R@5, R@10 of 5
    assert all(bar.get_hatch() is None for bar in hard.patches)  # 20 candidates: every R@K can fail
    assert "cannot fail (K ≥ candidates)" in [t.get_text() for t in figure.legends[0].get_texts()]
    plain = plots.recall_figure(tables(), METHODS, SETTINGS, TITLES)
    assert [t.get_text() for t in plain.legends[0].get_texts()] == ["R@1", "R@5", "R@10"]


def test_numbers_and_names_are_written_the_short_safe_way():
    assert [number(v) for v in (0.00044303752452182633, 3e-4, 0.2, 100.0, 5, "pooled")] == [
        "4.4e-4",
        "3e-4",
        "0.2",
        "100",
        "5",
        "pooled",
    ]
    assert count(8.0, 8) == "8/8" and count(7.5, 8) == "7.5/8"
    assert md("a|b\nc") == "a\\|b c"


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory):
    """meanP zero-shot on a test split of 2 videos: Hard ranks 4 candidates, Origin 2."""
    root = tmp_path_factory.mktemp("tiny")
    write_tiny_clip(root / "clip.pt", seed=0, matrix_std=0.05)
    config = asdict(clip_vendor.load(root / "clip.pt")[0].config)
    write_order_only_cache(root / "cache", root / "clip.pt", config, n_train=4, n_valid=2, n_test=2, n_frames=4)
    evaluate.main(["--cache", str(root / "cache"), "--head", "meanP", "--out", str(root / "results" / "meanP.json")])
    return root


def test_a_report_of_one_method_says_when_recall_cannot_fail_and_what_each_stage_cost(tiny_results):
    out = tiny_results / "report"
    report.main(["--results", str(tiny_results / "results"), "--out", str(out)])
    markdown = (out / "report.md").read_text()
    assert "### Pairwise comparisons" not in markdown  # one method: nothing to compare
    assert "Each query ranks only 2 candidates here, so R@5 and R@10 are 100 for any method." in markdown
    assert "Each query ranks only 4 candidates here, so R@5 and R@10 are 100 for any method." in markdown
    assert "`../results/meanP.json`" in markdown  # sources relative to the report's own folder
    cost = markdown.split("## Cost\n", 1)[1].split("## Notes", 1)[0]
    assert "| extract | synthetic test's cache | not recorded | — | — |" in cost  # a synthetic cache: no extraction ran
    assert re.search(r"\| evaluate \| meanP zero-shot on synthetic test \(1 seed\(s\)\) \| CPU .* \| \d", cost)
    assert "## Dataset synthetic test: test split" in markdown
    numbers = json.loads((out / "report_numbers.json").read_text())
    assert "pairwise" not in numbers["datasets"]["synthetic test"]
