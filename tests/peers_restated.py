"""The peers' RTime metrics, restated for the convention tests (evaluation/conventions.py).

Written from reading bpiyush/CaReBench (`tasks/eval_rtime.py`, `utils/general_retrieval_metrics.py`)
and CLIP4Clip's `metrics.py` as laielli/rtime-bench runs it, in their own shapes rather than ours:
CaReBench's Binary on one 2x2 similarity per video (videos original/reversal by captions
forward/reverse), its `itm_eval` ranking each query by its gold's position in a descending
argsort, and CLIP4Clip's `compute_metrics` on a square matrix whose diagonal is the gold. Not used
outside tests.
"""

import numpy as np


def carebench_binary(similarities):
    """compute_rtime_binary_score: {video id: sim}, sim[i, j] = video i (0 original, 1 reversal)
    against caption j (0 forward, 1 reverse). Fractions, as the peer returns them."""
    t2v_acc, v2t_acc = [], []
    for video_id in similarities:
        sim = similarities[video_id]
        t2v_acc.append(sim[0, 0] > sim[1, 0])
        v2t_acc.append(sim[0, 0] > sim[0, 1])
    return {"t2v_acc": np.mean(t2v_acc).item(), "v2t_acc": np.mean(v2t_acc).item()}


def carebench_ranks(scores, gold_of, argsort=np.argsort):
    """itm_eval's ranks (0 = first) of each query: scores[query, candidate], gold_of[query] its one
    gold. `argsort` is the peer's `np.argsort` unless a test pins the order of ties."""
    ranks = np.zeros(len(scores), dtype=np.float32)
    for query in range(len(scores)):
        order = argsort(scores[query])[::-1]
        ranks[query] = np.where(order == gold_of[query])[0][0]
    return ranks


def carebench_recalls(ranks):
    """itm_eval's recall of one direction, in %."""
    return {f"R@{k}": 100.0 * np.sum(ranks < k) / len(ranks) for k in (1, 5, 10)}


def clip4clip_compute_metrics(x):
    """metrics.py compute_metrics: x[query, candidate] with the gold on the diagonal; every column
    tied with the gold adds an entry."""
    sorted_negated = np.sort(-x, axis=1)
    gold = np.diag(-x)[:, np.newaxis]
    entries = np.where(sorted_negated - gold == 0)[1]
    return {
        "R1": float(np.sum(entries == 0)) * 100 / len(entries),
        "R5": float(np.sum(entries < 5)) * 100 / len(entries),
        "R10": float(np.sum(entries < 10)) * 100 / len(entries),
        "MR": np.median(entries) + 1,
        "MeanR": np.mean(entries) + 1,
    }


# ---- the peers' inputs, from the score matrix and ids evaluate.py saves for a setting


def first_caption_matrix(scores, ids):
    """The peers' text x video matrix over one setting: each candidate's first human caption as its
    one text, in the candidates' order (originals, then reversals), so text i's gold is video i."""
    row_of = {}
    for row, caption_id in enumerate(ids["rows"]):
        video_id, direction, kind, index = caption_id.rsplit("#", 3)
        if kind == "human" and index == "0":
            row_of[(video_id, int(direction == "reverse"))] = row
    texts = [row_of[(column["video_id"], column["reversed"])] for column in ids["columns"]]
    return np.asarray(scores)[texts]


def binary_similarities(scores, ids):
    """{video id: sim} for CaReBench's Binary: sim[i, j], video i (0 original, 1 reversal) against
    caption j (0 forward, 1 reverse), for each video that has both candidates."""
    square = first_caption_matrix(scores, ids)
    column_of = {(column["video_id"], column["reversed"]): i for i, column in enumerate(ids["columns"])}
    similarities = {}
    for (video_id, reversed_flag), original in column_of.items():
        reversal = column_of.get((video_id, 1))
        if reversed_flag or reversal is None:
            continue
        items = (original, reversal)
        # square[text, video]: the text of candidate c is row c
        similarities[video_id] = np.array([[square[text, video] for text in items] for video in items])
    return similarities
