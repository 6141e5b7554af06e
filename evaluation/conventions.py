"""The peers' RTime protocols as named conventions, computed from a result's score matrices.

Our metrics (the default, evaluation/retrieval_metrics.py) take every human caption as a query,
count a Binary tie as one half and a tied rank as its expected value. Published RTime figures come
from two other evaluation codes whose definitions differ; each convention restates one of them, so
that a number can be set beside a paper's. Their effect on the demo: README, "Comparing with
published numbers".

- `carebench`: bpiyush/CaReBench, `tasks/eval_rtime.py` with `utils/general_retrieval_metrics.py`
  (`itm_eval`), the code behind the TARA and CaReBench authors' RTime figures.
  - Queries: each video's first forward caption, and in Hard its first reverse caption too
    (eval_rtime.py L50, L54).
  - Binary: text->video for the forward caption only (original above reversal), video->text for the
    original video only (forward caption above reverse caption), with a strict `>`: a tie is wrong
    (L69-70).
  - Ranks: the gold's position in `np.argsort(scores)[::-1]` (general_retrieval_metrics.py L96,
    L153). That sort is not stable, so a gold tied with others lands anywhere among them, depending
    on numpy's sort path; the convention gives both bounds (`optimistic`, `pessimistic`), one
    number wherever no query is tied.
  - Hard candidates: every video's reversal (eval_rtime.py L92-99). Where a record has none (not
    marked reversible), the convention's Hard is marked unavailable rather than ranked over fewer
    candidates.
- `clip4clip`: CLIP4Clip's `metrics.py` `compute_metrics`, as laielli/rtime-bench runs it on RTime:
  a candidate's first caption is its only query (scripts/prepare_data.py L107-118), and a query
  tied with k wrong candidates adds k + 1 entries, at ranks a+1 ... a+k+1 (metrics.py L10-15),
  which R@K, MdR and MnR all average over. Deterministic.

Both read a setting's score matrix with the row and column ids evaluate.py saves beside it, so the
report computes them for any result; `evaluate.py --convention` records them in the result, where
reading it checks them again like every other number.
"""

from collections.abc import Callable

import numpy as np

from corpus.annotations import FORMATS, caption_position
from evaluation.retrieval_metrics import RECALL_KS, rank_counts

# Each convention's rules: (text, whether it acts on reversals among the candidates: Binary, Hard).
CONVENTION_RULES = {
    "carebench": (
        ("bpiyush/CaReBench's tasks/eval_rtime.py: first captions only", False),
        ("Binary on the forward side only, a tie counting as wrong", True),
        ("a reversal for every video in Hard", True),
        ("ranks from an unstable sort, so where a query ties, a range (the bounds its sort can land on)", False),
    ),
    "clip4clip": (
        ("CLIP4Clip's metrics.py compute_metrics, as laielli/rtime-bench runs it: first captions only", False),
        ("a query tied with k others counted k + 1 times, once at each place it could take", False),
    ),
}
CONVENTIONS = {name: "; ".join(text for text, _ in rules) for name, rules in CONVENTION_RULES.items()}


def convention_description(name: str, reversals: bool) -> str:
    """The rules of a convention that act on a dataset (`reversals`: whether its candidates hold
    reversals), saying so where some have nothing to act on: a report never claims them there."""
    rules = CONVENTION_RULES[name]
    acting = [text for text, needs_reversals in rules if reversals or not needs_reversals]
    if len(acting) < len(rules):
        acting.append("its rules for reversals do not apply here: no video's reversal is among the candidates")
    return "; ".join(acting)


def first_caption_rows(caption_ids: list[str]) -> np.ndarray:
    """[n_rows] bool: the rows whose query is its video's first human caption of its direction
    (`forward_captions[0]`, `reverse_captions[0]`), the only queries both peers take."""
    return np.array([caption_position(caption_id)[1:] == ("human", 0) for caption_id in caption_ids])


def recalls(ranks: np.ndarray) -> dict[str, float]:
    return {f"R@{k}": float(100.0 * np.mean(ranks <= k)) for k in RECALL_KS}


def tied_rank_bounds(above: np.ndarray, tied_wrong: np.ndarray) -> dict:
    """CaReBench's R@K, which lies between the query's best and worst place among its ties."""
    return {
        "optimistic": recalls(above + 1),
        "pessimistic": recalls(above + tied_wrong + 1),
        "n_queries": int(len(above)),
        "n_tied": int((tied_wrong > 0).sum()),
    }


def entry_per_tie(above: np.ndarray, tied_wrong: np.ndarray) -> dict:
    """CLIP4Clip's metrics: every place a tied query could take is one entry."""
    entries = np.concatenate([a + 1 + np.arange(k + 1) for a, k in zip(above, tied_wrong, strict=True)])
    return {
        **recalls(entries),
        "MdR": float(np.median(entries)),
        "MnR": float(np.mean(entries)),
        "n_queries": int(len(above)),
        "n_entries": int(len(entries)),
    }


RANKINGS: dict[str, Callable[[np.ndarray, np.ndarray], dict]] = {
    "carebench": tied_rank_bounds,
    "clip4clip": entry_per_tie,
}


def strict_binary(margins: np.ndarray) -> dict:
    """CaReBench's Binary: the share of pairs whose correct side scores strictly higher."""
    return {
        "accuracy": float(100.0 * np.mean(margins > 0)),
        "n_pairs": int(len(margins)),
        "n_tied": int((margins == 0).sum()),
    }


def forward_side_margins(scores: np.ndarray, gold: np.ndarray, candidate_ids: list[dict]) -> dict[str, np.ndarray]:
    """Per video with an original and a reversal, over first captions only (scores and gold hold
    those rows): text->video, the forward caption's original minus its reversal; video->text, the
    original's forward caption minus its reverse caption (CaReBench's `sim[0, 0]` against `sim[1, 0]`
    and `sim[0, 1]`)."""
    column_of = {(c["video_id"], c["reversed"]): column for column, c in enumerate(candidate_ids)}
    row_of_column = {int(column): row for row, column in enumerate(gold.argmax(axis=1))}
    t2v, v2t = [], []
    for (video_id, reversed_flag), original in column_of.items():
        reversal = column_of.get((video_id, 1))
        if reversed_flag or reversal is None:
            continue
        forward, reverse = row_of_column[original], row_of_column[reversal]
        t2v.append(scores[forward, original] - scores[forward, reversal])
        v2t.append(scores[forward, original] - scores[reverse, original])
    return {"t2v": np.array(t2v, dtype=np.float64), "v2t": np.array(v2t, dtype=np.float64)}


def one_caption_each(scores: np.ndarray, gold: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Video->text over first captions, where each candidate has exactly one: the transposed matrix,
    its columns in the order of the candidates, so the gold is the diagonal."""
    if not (gold.sum(axis=0) == 1).all():
        raise ValueError("a candidate has no first caption, or several: video->text has no single query each")
    return scores[gold.argmax(axis=0)].T, np.eye(gold.shape[1], dtype=bool)


def missing_reversals(candidate_ids: list[dict]) -> int:
    """How many originals among the candidates have no reversal beside them."""
    items = {(c["video_id"], c["reversed"]) for c in candidate_ids}
    return sum(1 for video_id, flag in items if not flag and (video_id, 1) not in items)


def convention_numbers(name: str, load: Callable[[str], object], annotation_format: str) -> dict:
    """One convention's numbers for a result: {setting: {direction: metrics} or {"unavailable":
    why}, "binary": {direction: metrics}}. `load(array name)` gives a saved array of the result
    (`{setting}_scores`, `_ids`, `_gold`); the settings are the format's, but those run on request."""
    numbers = {}
    for setting, rule in FORMATS[annotation_format].settings.items():
        if rule.on_request:
            continue
        ids = load(f"{setting}_ids")
        rows = first_caption_rows(ids["rows"])
        scores, gold = np.asarray(load(f"{setting}_scores"))[rows], np.asarray(load(f"{setting}_gold"))[rows]
        without = missing_reversals(ids["columns"])
        if name == "carebench" and rule.binary and without:
            numbers[setting] = {
                "unavailable": f"{without} of the videos have no reversal (not marked reversible); CaReBench's "
                "Hard adds one for every video"
            }
            continue
        numbers[setting] = {}
        for direction, (direction_scores, direction_gold) in (
            ("t2v", (scores, gold)),
            ("v2t", one_caption_each(scores, gold)),
        ):
            counts = rank_counts(direction_scores, direction_gold)
            numbers[setting][direction] = RANKINGS[name](counts["above"], counts["tied_wrong"])
        if name == "carebench" and rule.binary:
            margins = forward_side_margins(scores, gold, ids["columns"])
            numbers["binary"] = {direction: strict_binary(values) for direction, values in margins.items()}
    return numbers
