"""A look at the videos: the queries where the heads part ways, with the frames the cache holds.

For one dataset's Hard setting, the queries are ranked by how much they tell: the number of heads
whose best candidate differs from the others', plus the number of heads that score the wrong
direction of the query's video above the right one (the reversal above the original for a forward
caption, the original above the reversal for a reverse caption). The first N are shown, each with
its caption, its own video's frames exactly as the cache holds them (the sampled frames, decoded
again from the video file with the cache's decoding settings, in reverse order for a reversal), and
each head's top 5 candidates: video id, original or reversed, score, and whether it is the answer.

Writes {dataset}_examples.html (thumbnails in {dataset}_examples/, every path relative) and
{dataset}_examples.png for the markdown report. The page counts its images once they have loaded
(`data-images-loaded` on its body), so a browser test can check that every one of them shows.
"""

import html
import json
from pathlib import Path

import cv2
import numpy as np
from matplotlib.figure import Figure

from corpus.feature_cache import VIDEO_FILES, CacheError, CacheSplit, content_digest, open_split, read_meta
from corpus.video_frames import (
    VideoError,
    decode_sampled_frames,
    fingerprint_difference,
    fingerprint_videos,
    index_video_files,
    spec_from_contract,
)
from infra.cli import StageError
from infra.file_io import atomic_write_bytes
from reporting.plots import save_figure

TOP = 5
THUMB_HEIGHT = 72


def interesting_queries(scores: dict, gold: np.ndarray, columns: list, n: int) -> list[int]:
    """The n Hard queries where the heads (`scores`: each one's first seed) part ways most:
    differing best candidates, and the wrong direction of the query's video scored above the right one."""
    column_of = {(c["video_id"], c["reversed"]): i for i, c in enumerate(columns)}
    interest = []
    for query in range(len(gold)):
        right = int(gold[query].argmax())
        video, flag = columns[right]["video_id"], columns[right]["reversed"]
        wrong = column_of.get((video, 1 - flag))
        best = {int(s[query].argmax()) for s in scores.values()}
        flipped = sum(wrong is not None and s[query, wrong] > s[query, right] for s in scores.values())
        interest.append((len(best) - 1 + flipped, -query))
    return [-query for _, query in sorted(interest, reverse=True)[:n]]


def video_frames(run, path: Path, reversed_flag: int) -> np.ndarray:
    """The frames the cache holds for a video ([n, H, W, 3] BGR), decoded again from its file with
    the cache's decoding settings; in reverse order for the reversal."""
    provenance = run.provenance
    spec = spec_from_contract(provenance["sampling"], provenance["preprocessing"]["size"])
    try:
        frames, _ = decode_sampled_frames(path, spec)
    except VideoError as err:
        raise StageError(f"--examples: {path} cannot be decoded again ({err})") from None
    return frames[::-1] if reversed_flag else frames


def thumbnail(frame: np.ndarray) -> np.ndarray:
    height, width = frame.shape[:2]
    return cv2.resize(frame, (max(1, round(width * THUMB_HEIGHT / height)), THUMB_HEIGHT), interpolation=cv2.INTER_AREA)


def top_candidates(query_scores: np.ndarray, query_gold: np.ndarray, columns: list) -> list[dict]:
    order = np.argsort(-query_scores, kind="stable")[:TOP]
    return [
        {
            "video_id": columns[c]["video_id"],
            "reversed": columns[c]["reversed"],
            "score": float(query_scores[c]),
            "gold": bool(query_gold[c]),
        }
        for c in order
    ]


def evaluated_cache(run) -> CacheSplit:
    """The cache split a result was evaluated on, refused unless it still holds the same bytes: the
    page shows its captions, and the frames of the video files it was extracted from."""
    provenance = run.provenance
    cache_dir = Path(provenance["cache"])
    try:
        meta = read_meta(cache_dir)
    except CacheError as err:
        raise StageError(
            f"--examples: {run.path} was evaluated on the cache at {cache_dir}, which cannot be read ({err})"
        ) from None
    if content_digest(meta) != provenance["cache_content_sha256"]:
        raise StageError(
            f"--examples: the cache at {cache_dir} is not the one {run.path} was evaluated on (its content sha256 "
            "differs: extracted again since?); the page would show other captions than the scores were computed "
            "from: evaluate again, or report without --examples"
        )
    return open_split(cache_dir, provenance["split"])


def checked_video_file(cache: CacheSplit, video_id: str, videos: dict, videos_dir: Path) -> Path:
    """The file of a video in --videos, refused unless it is the one the cache was extracted from."""
    recorded = json.loads((cache.folder / VIDEO_FILES).read_text())
    difference = fingerprint_difference(
        {video_id: recorded.get(video_id)}, fingerprint_videos([video_id], videos, videos_dir)
    )
    if difference:
        raise StageError(
            f"--videos {videos_dir}: video {video_id!r} is not the file the cache was extracted from ({difference}); "
            "the page would show other frames than the cache holds: give the folder the cache was extracted from"
        )
    return videos[video_id]


def write_examples(
    label: str, methods: dict, setting: str, videos_dir: Path, out_dir: Path, n: int, stem: str
) -> tuple[str, str]:
    """Write {stem}examples.html (its thumbnails in {stem}examples/) and {stem}examples.png for one
    dataset's `setting` (one whose candidates hold originals and reversals); returns their names."""
    first = next(iter(methods.values()))[0]
    cache = evaluated_cache(first)
    videos = index_video_files(videos_dir).files
    # one dataset is one cache's content (report.py refuses a mix): its queries and candidates are every method's
    ids, gold = first.load_array(f"{setting}_ids"), first.load_array(f"{setting}_gold")
    rows, columns = ids["rows"], ids["columns"]
    scores = {method: runs[0].load_array(f"{setting}_scores") for method, runs in methods.items()}  # read once
    queries = interesting_queries(scores, gold, columns, n)
    captions = {record["caption_id"]: record["text"] for record in cache.captions}
    thumbs_dir = out_dir / f"{stem}examples"
    thumbs_dir.mkdir(parents=True, exist_ok=True)
    blocks, figure_rows = [], []
    for query in queries:
        own = columns[int(gold[query].argmax())]
        path = checked_video_file(cache, own["video_id"], videos, videos_dir)
        frames = [thumbnail(frame) for frame in video_frames(first, path, own["reversed"])]
        names = []
        for index, frame in enumerate(frames):
            name = f"q{query}_f{index}.png"
            atomic_write_bytes(thumbs_dir / name, cv2.imencode(".png", frame)[1].tobytes())
            names.append(name)
        tops = {
            method: top_candidates(method_scores[query], gold[query], columns)
            for method, method_scores in scores.items()
        }
        blocks.append(
            query_block(
                rows[query], captions.get(rows[query], ""), own, [f"{thumbs_dir.name}/{n}" for n in names], tops
            )
        )
        figure_rows.append((captions.get(rows[query], rows[query]), own, frames, tops))
    page = PAGE.format(title=html.escape(f"{label}: Hard queries where the heads part ways"), blocks="\n".join(blocks))
    atomic_write_bytes(out_dir / f"{stem}examples.html", page.encode("utf-8"))
    save_figure(examples_figure(figure_rows), out_dir / f"{stem}examples.png", dpi=100)
    return f"{stem}examples.html", f"{stem}examples.png"


def direction(flag: int) -> str:
    return "reversed" if flag else "original"


def query_block(caption_id: str, caption: str, own: dict, thumbs: list[str], tops: dict) -> str:
    images = "".join(f'<img src="{html.escape(path)}" alt="frame {i}">' for i, path in enumerate(thumbs))
    tables = []
    for method, top in tops.items():
        cells = "".join(
            f'<tr class="{"gold" if c["gold"] else ""}"><td>{rank}</td><td>{html.escape(c["video_id"])}</td>'
            f"<td>{direction(c['reversed'])}</td><td>{c['score']:.4f}</td><td>{'✓' if c['gold'] else ''}</td></tr>"
            for rank, c in enumerate(top, 1)
        )
        tables.append(f'<div class="head"><h3>{html.escape(method)}</h3><table>{cells}</table></div>')
    return (
        f'<section><h2>{html.escape(caption)}</h2><p class="id">{html.escape(caption_id)} → '
        f'{html.escape(own["video_id"])} ({direction(own["reversed"])})</p><div class="frames">{images}</div>'
        f'<div class="heads">{"".join(tables)}</div></section>'
    )


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }} section {{ border-top: 1px solid #999; padding: 0.5em 0; }}
.frames img {{ margin-right: 3px; border: 1px solid #555; }} .heads {{ display: flex; gap: 2em; flex-wrap: wrap; }}
table {{ border-collapse: collapse; font-size: 0.9em; }} td {{ padding: 1px 6px; }} tr.gold {{ background: #cfc; }}
.id {{ color: #555; font-size: 0.85em; }}
</style></head>
<body data-images-loaded="0">
<h1>{title}</h1>
<p>Each query's own video shows the frames the cache holds, decoded again with the cache's settings
(a reversal's in reverse order); each head lists its top 5 (green: the answer).</p>
{blocks}
<script>
window.addEventListener("load", () => {{
  const images = Array.from(document.images);
  document.body.dataset.imagesTotal = images.length;
  document.body.dataset.imagesLoaded = images.filter(img => img.complete && img.naturalWidth > 0).length;
}});
</script>
</body></html>
"""


def examples_figure(rows: list) -> Figure:
    """One panel per query: its frames, its caption as the title, each head's top 3 below."""
    figure = Figure(figsize=(10, 1.7 * len(rows)), layout="constrained")
    for ax, (caption, own, frames, tops) in zip(figure.subplots(len(rows), 1, squeeze=False)[:, 0], rows, strict=True):
        strip = np.concatenate([np.pad(f, ((0, 0), (0, 3), (0, 0)), constant_values=255) for f in frames], axis=1)
        ax.imshow(cv2.cvtColor(strip, cv2.COLOR_BGR2RGB))
        ax.set_axis_off()
        ax.set_title(f"“{caption}” → {own['video_id']} ({direction(own['reversed'])})", fontsize=9)
        lines = [
            f"{method}: "
            + ", ".join(
                f"{c['video_id']} {direction(c['reversed'])[:3]}. {c['score']:.3f}{' ✓' if c['gold'] else ''}"
                for c in top[:3]
            )
            for method, top in tops.items()
        ]
        ax.text(0, -0.08, "\n".join(lines), transform=ax.transAxes, va="top", fontsize=7, family="monospace")
    return figure
