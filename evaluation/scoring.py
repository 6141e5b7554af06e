"""An evaluation setting (queries, candidates, gold) and a head's score matrix over it.

Candidates are (video_row, reversed) items in this order: originals by video row, then reversed
videos by video row; queries are captions in caption-row order. These orders are the stable-sort
tie order of the metrics. Shared by training (validation) and evaluation.

Video->text follows CLIP4Clip (`tensor_video_to_text_sim`): a video's query ranks the candidates'
caption sets, each scored by its best caption, and is right when its own set ranks first. With
one caption per video this is the transposed score matrix; with several it differs from ranking
single captions (which would let a video's other captions count as wrong answers ranked above).
"""

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from corpus.feature_cache import REBUILD, CacheError, pairs_path, read_pairs
from heads.loaded_split import HostSplit, SplitTensors

TIE_ORDER = "candidates: originals by video row, then reversed videos by video row; queries: captions by caption row"


@dataclass
class Setting:
    """Queries and candidates of one evaluation setting, read from a pair list."""

    caption_rows: np.ndarray  # [n_queries]
    candidates: list  # [(video_row, reversed)]
    gold: np.ndarray  # [n_queries, n_candidates] bool: caption -> its video item
    caption_ids: list  # [n_queries], the rows of a score matrix
    candidate_ids: list  # [n_candidates] {"video_id", "reversed"}, its columns


def setting_from_pairs(pairs: list[dict], candidate_pairs: list[dict] | None = None) -> Setting:
    """The setting of a pair list: its captions as queries, ranking the videos of `candidate_pairs`
    (default: their own videos)."""
    candidate_pairs = pairs if candidate_pairs is None else candidate_pairs
    candidates = sorted({(p["video_row"], p["reversed"]) for p in candidate_pairs}, key=lambda item: (item[1], item[0]))
    column_of = {item: column for column, item in enumerate(candidates)}
    video_id_of = {p["video_row"]: p["video_id"] for p in candidate_pairs}
    pairs = sorted(pairs, key=lambda p: p["caption_row"])
    gold = np.zeros((len(pairs), len(candidates)), dtype=bool)
    for query, pair in enumerate(pairs):
        item = (pair["video_row"], pair["reversed"])
        if item not in column_of:
            raise ValueError(f"caption {pair['caption_id']!r}: its video is not among the candidates")
        gold[query, column_of[item]] = True
    return Setting(
        np.array([p["caption_row"] for p in pairs], dtype=np.int64),
        candidates,
        gold,
        [p["caption_id"] for p in pairs],
        [{"video_id": video_id_of[row], "reversed": flag} for row, flag in candidates],
    )


def caption_set_scores(scores: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """[n_candidates, n_candidates]: entry (v, g) is candidate g's best caption scored against
    video v (CLIP4Clip's video->text similarity); video v's own caption set is column v."""
    set_scores = np.empty((gold.shape[1], gold.shape[1]), dtype=np.float64)
    for column in range(gold.shape[1]):
        set_scores[:, column] = scores[gold[:, column]].max(axis=0)
    return set_scores


def described(scores: np.ndarray, gold: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(scores, gold) of the candidates some query describes: only they have a caption set to find in
    video->text (a paraphrase setting ranks all of another setting's videos, some with no caption)."""
    columns = gold.any(axis=0)
    return scores[:, columns], gold[:, columns]


def directions(scores: np.ndarray, gold: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{direction: (query x candidate scores, gold)}: text->video, and video->text over the caption
    sets of the described candidates."""
    set_scores = caption_set_scores(*described(scores, gold))
    return {"t2v": (scores, gold), "v2t": (set_scores, np.eye(len(set_scores), dtype=bool))}


def read_setting(cache_dir: Path, split: str, setting: str, candidates_of: str | None = None) -> Setting:
    """A split's setting. With `candidates_of` (a setting whose queries this one paraphrases), its
    queries rank that setting's candidates, so the two compare like with like: RTime's rewrites
    against all of Hard's videos, even where only some records have rewrites."""
    pairs = read_pairs(cache_dir, split, setting)
    try:
        return setting_from_pairs(pairs, read_pairs(cache_dir, split, candidates_of) if candidates_of else None)
    except ValueError as err:
        raise CacheError(f"{pairs_path(cache_dir, split, setting)}: {err} of {candidates_of!r}; {REBUILD}") from None


@torch.no_grad()
def candidate_index(head: torch.nn.Module, data: SplitTensors | HostSplit, setting: Setting, video_batch: int = 1024):
    """The head's video index of every candidate of a setting (a tuple of tensors, one row per
    candidate), built `video_batch` videos at a time."""
    device = data.device
    video_rows = torch.tensor([row for row, _ in setting.candidates], device=device)
    reversed_flags = torch.tensor([flag for _, flag in setting.candidates], device=device)
    parts = [
        head.video_index(*data.video_batch(video_rows[i : i + video_batch], reversed_flags[i : i + video_batch]))
        for i in range(0, len(video_rows), video_batch)
    ]
    return [torch.cat(columns) for columns in zip(*parts, strict=True)]


@torch.no_grad()
def score_matrix(head: torch.nn.Module, data: SplitTensors | HostSplit, setting: Setting) -> torch.Tensor:
    """Scores [n_queries, n_candidates] (float32 on the CPU) of `head` over a setting: the
    candidates' video index is built once, then every query is scored."""
    video_index = candidate_index(head, data, setting)
    text, text_mask = data.text_input(torch.from_numpy(setting.caption_rows).to(data.device), head.text_input)
    return head.score_matrix(text, text_mask, *video_index).float().cpu()


def autocast_for(device: str):
    """bf16 autocast on CUDA; on the CPU everything stays fp32."""
    if str(device).startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def queries_by_candidate(setting: Setting) -> dict[tuple, list[int]]:
    """{(video_row, reversed): the queries whose own candidate it is}, in query order."""
    queries_of = {}
    for query, column in enumerate(setting.gold.argmax(axis=1)):
        queries_of.setdefault(setting.candidates[column], []).append(query)
    return queries_of


def other_side_queries(setting: Setting) -> list[np.ndarray]:
    """Per query, the queries whose own candidate is its video in the other direction (a forward
    caption's reverse captions, and back): what Binary weighs the query's pair against."""
    queries_of = queries_by_candidate(setting)
    return [
        np.array(queries_of.get((video_row, 1 - flag), []), dtype=np.int64)
        for video_row, flag in (setting.candidates[column] for column in setting.gold.argmax(axis=1))
    ]


def binary_margins(scores: np.ndarray, setting: Setting) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per record with both an original and a reversed candidate: t2v margins (each caption, its
    video minus the other direction's) and v2t margins (each video, its caption minus the other),
    each with its side: 0 for a forward caption or the original video, 1 for a reverse caption or
    the reversal. {direction: (margins, sides)}."""
    column_of = {item: column for column, item in enumerate(setting.candidates)}
    queries_of = queries_by_candidate(setting)
    t2v, v2t = [], []  # (margin, side)
    for (video_row, flag), forward_queries in sorted(queries_of.items()):
        if flag or (video_row, 1) not in queries_of:
            continue
        original, reversal = column_of[(video_row, 0)], column_of[(video_row, 1)]
        reverse_queries = queries_of[(video_row, 1)]
        t2v += [(scores[q, original] - scores[q, reversal], 0) for q in forward_queries]
        t2v += [(scores[q, reversal] - scores[q, original], 1) for q in reverse_queries]
        for forward_query in forward_queries:
            for reverse_query in reverse_queries:
                v2t.append((scores[forward_query, original] - scores[reverse_query, original], 0))
                v2t.append((scores[reverse_query, reversal] - scores[forward_query, reversal], 1))
    return {
        direction: (np.array([m for m, _ in pairs], dtype=np.float64), np.array([s for _, s in pairs], dtype=np.int64))
        for direction, pairs in (("t2v", t2v), ("v2t", v2t))
    }
