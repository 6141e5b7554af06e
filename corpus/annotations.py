"""Annotation files -> videos, captions and the pair lists every later stage uses.

Two formats, told apart by their records:
- RTime: `{video_id: {"forward_captions": [..], "reverse_captions": [..], "forward_rewrites": [..],
  "reverse_rewrites": [..], "reverse": bool, "temporal": ..., "url": ...}}`. The reversed video has
  no file and no id: it is the original's frames in reverse order.
- generic (MSR-VTT / ActivityNet / DiDeMo style): `{video_name: {"sentences": [..]}}`, optionally
  with ActivityNet's "timestamps" and "duration" (read past, not used).

A field outside its format's known fields is refused, not ignored: a typo such as
`reverse_rewrite` would otherwise drop captions silently. A video id in two splits is refused
too: it would leak between training and evaluation.

A pair links a caption to a video row; `reversed=1` means "the flipped frames of that row".
"""

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

RTIME_CAPTION_FIELDS = {  # field -> (direction, kind)
    "forward_captions": ("forward", "human"),
    "reverse_captions": ("reverse", "human"),
    "forward_rewrites": ("forward", "rewrite"),
    "reverse_rewrites": ("reverse", "rewrite"),
}
KNOWN_FIELDS = {
    "rtime": {*RTIME_CAPTION_FIELDS, "reverse", "temporal", "url"},
    "generic": {"sentences", "timestamps", "duration"},
}


class AnnotationError(ValueError):
    """A malformed annotation file; the message names the file and the record."""


@dataclass(frozen=True)
class Caption:
    caption_id: str  # "{video_id}#{direction}#{kind}#{index}"
    video_id: str
    direction: str  # "forward" (describes the file as it plays) or "reverse" (its time reversal)
    kind: str  # "human" or "rewrite" (RTime's generated paraphrases)
    text: str


def make_caption(video_id: str, direction: str, kind: str, index: int, text: str) -> Caption:
    """The `index`-th caption of its (direction, kind) in the video's record, with its id."""
    return Caption(f"{video_id}#{direction}#{kind}#{index}", video_id, direction, kind, text)


@dataclass(frozen=True)
class VideoRecord:
    video_id: str
    has_reverse: bool  # RTime: the reversed video is a valid sample with its own captions
    captions: tuple  # of Caption, in file order: forward human, reverse human, rewrites


def reject_duplicate_keys(path):
    def build(pairs):
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise AnnotationError(f"{path}: duplicate id {key!r}")
            seen.add(key)
        return dict(pairs)

    return build


def read_annotation_file(path: Path) -> dict:
    """Parse one file into an ordered {video_id: record dict}, rejecting duplicate ids."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=reject_duplicate_keys(path))
    except json.JSONDecodeError as err:
        raise AnnotationError(f"{path}: not valid JSON ({err})") from None
    except UnicodeDecodeError as err:
        raise AnnotationError(
            f"{path}: not UTF-8 text (byte {err.start} is {err.object[err.start : err.start + 1]!r}); JSON annotation "
            "files must be UTF-8: convert it (e.g. iconv -f latin1 -t utf-8)"
        ) from None
    except FileNotFoundError:
        raise AnnotationError(f"{path}: annotation file not found") from None
    except OSError as err:
        raise AnnotationError(f"{path}: cannot be read ({err.strerror})") from None
    if not isinstance(data, dict) or not data:
        raise AnnotationError(f"{path}: expected a non-empty JSON object keyed by video id")
    return data


def detect_format(path: Path, data: dict) -> str:
    first_id, first = next(iter(data.items()))
    if isinstance(first, dict) and first.keys() & {*RTIME_CAPTION_FIELDS, "reverse"}:
        return "rtime"
    if isinstance(first, dict) and "sentences" in first:
        return "generic"
    raise AnnotationError(
        f"{path}: record {first_id!r} has neither 'forward_captions' (RTime) "
        "nor 'sentences' (generic); cannot tell the format"
    )


def string_list(path, video_id, record, field, required, allow_empty):
    if field not in record:
        if required:
            raise AnnotationError(f"{path}: record {video_id!r} is missing field {field!r}")
        return []
    value = record[field]
    if not isinstance(value, list) or not all(isinstance(text, str) for text in value):
        raise AnnotationError(f"{path}: record {video_id!r} field {field!r} must be a list of strings")
    if not value and not allow_empty:
        raise AnnotationError(f"{path}: record {video_id!r} field {field!r} is empty")
    if any(not text.strip() for text in value):
        raise AnnotationError(f"{path}: record {video_id!r} field {field!r} holds an empty caption")
    return value


def check_no_unknown_fields(path, video_id, record, annotation_format):
    known = KNOWN_FIELDS[annotation_format]
    unknown = sorted(set(record) - known)
    if unknown:
        raise AnnotationError(
            f"{path}: record {video_id!r} has an unknown field {unknown[0]!r} ({annotation_format} "
            f"records know {', '.join(sorted(known))}); a misspelt field would drop its captions"
        )


def parse_rtime_record(path, video_id, record):
    if not isinstance(record, dict):
        raise AnnotationError(f"{path}: record {video_id!r} must be an object")
    if "reverse" not in record:
        raise AnnotationError(f"{path}: record {video_id!r} is missing field 'reverse'")
    if not isinstance(record["reverse"], bool):
        raise AnnotationError(f"{path}: record {video_id!r} field 'reverse' must be true or false")
    has_reverse = record["reverse"]
    captions = []
    for field, (direction, kind) in RTIME_CAPTION_FIELDS.items():
        required = field == "forward_captions" or (field == "reverse_captions" and has_reverse)
        texts = string_list(path, video_id, record, field, required, allow_empty=not required)
        if direction == "reverse" and not has_reverse:
            continue  # the reversed video is not a valid sample: its captions describe nothing we use
        captions += [make_caption(video_id, direction, kind, i, text) for i, text in enumerate(texts)]
    check_no_unknown_fields(path, video_id, record, "rtime")
    return VideoRecord(video_id, has_reverse, tuple(captions))


def parse_generic_record(path, video_id, record):
    if not isinstance(record, dict):
        raise AnnotationError(f"{path}: record {video_id!r} must be an object")
    texts = string_list(path, video_id, record, "sentences", required=True, allow_empty=False)
    check_no_unknown_fields(path, video_id, record, "generic")
    captions = tuple(make_caption(video_id, "forward", "human", i, text) for i, text in enumerate(texts))
    return VideoRecord(video_id, False, captions)


def load_split(path: Path, annotation_format: str = "auto", paragraphs: bool = False) -> tuple[str, list[VideoRecord]]:
    """Read an annotation file -> (format, [VideoRecord] in file order). With `paragraphs` (generic
    files only: ActivityNet, DiDeMo), each video's sentences, joined with spaces in file order,
    are its one caption: video-paragraph retrieval, as CLIP4Clip and AdaCLIP evaluate those sets."""
    data = read_annotation_file(path)
    if annotation_format == "auto":
        annotation_format = detect_format(path, data)
    if paragraphs and annotation_format != "generic":
        raise AnnotationError(f"{path}: paragraphs join a generic file's sentences; this file is {annotation_format}")
    parse = {"rtime": parse_rtime_record, "generic": parse_generic_record}[annotation_format]
    records = [parse(path, video_id, record) for video_id, record in data.items()]
    return annotation_format, [as_paragraph(record) for record in records] if paragraphs else records


def as_paragraph(record: VideoRecord) -> VideoRecord:
    text = " ".join(caption.text for caption in record.captions)
    paragraph = make_caption(record.video_id, "forward", "human", 0, text)
    return VideoRecord(record.video_id, False, (paragraph,))


def check_disjoint_splits(splits: dict[str, tuple[Path, list[VideoRecord]]]) -> None:
    """Refuse a video id that appears in two splits' files (a train/test leak), naming both files."""
    first_file = {}
    for path, records in splits.values():
        for record in records:
            if record.video_id in first_file:
                raise AnnotationError(
                    f"video id {record.video_id!r} is in both {first_file[record.video_id]} and "
                    f"{path}: a video must belong to one split"
                )
            first_file[record.video_id] = path


def split_captions(records: list[VideoRecord]) -> list[Caption]:
    """Every caption of every record, in record order: the row order of the cached text features."""
    return [caption for record in records for caption in record.captions]


def pair_rows(captions: list[Caption], video_row_of: dict[str, int], include: Callable[[Caption], bool]) -> list[tuple]:
    """(caption_row, caption_id, video_row, video_id, reversed) for each caption that `include`
    keeps and whose video was extracted (`video_row_of` lacks failed videos)."""
    rows = []
    for caption_row, caption in enumerate(captions):
        if caption.video_id not in video_row_of or not include(caption):
            continue
        reversed_video = int(caption.direction == "reverse")
        rows.append((caption_row, caption.caption_id, video_row_of[caption.video_id], caption.video_id, reversed_video))
    return rows


# The evaluation settings of each format, and the one training selects its best epoch on. `rewrites`
# (RTime's paraphrases as queries against Hard's candidates) is evaluated on request only: it has
# nine times Hard's queries.
EVALUATION_SETTINGS = {"rtime": ("origin", "hard"), "generic": ("all",)}
PARAPHRASE_SETTINGS = {"rtime": ("rewrites",), "generic": ()}
SELECTION_SETTING = {"rtime": "hard", "generic": "all"}


def every_caption(caption: Caption) -> bool:
    return True


def is_human(caption: Caption) -> bool:
    return caption.kind == "human"


def is_forward_human(caption: Caption) -> bool:
    return caption.kind == "human" and caption.direction == "forward"


def is_rewrite(caption: Caption) -> bool:
    return caption.kind == "rewrite"


# Which captions each pair list holds. train: every caption (human and rewrite, forward and
# reverse). RTime valid/test: `hard`, the human captions of originals and of reversed videos,
# `origin`, the human forward captions of the originals, and `rewrites`, the rewrites of originals
# and of reversed videos. Generic valid/test: `all` human captions.
PAIR_RULES = {
    "train": every_caption,
    "hard": is_human,
    "origin": is_forward_human,
    "rewrites": is_rewrite,
    "all": is_human,
}


def pair_settings(split: str, annotation_format: str) -> tuple[str, ...]:
    """The pair lists a split has (feature_cache.pair_file names their files)."""
    if split == "train":
        return ("train",)
    return EVALUATION_SETTINGS[annotation_format] + PARAPHRASE_SETTINGS[annotation_format]


def pair_lists(split: str, annotation_format: str, captions: list[Caption], video_row_of: dict[str, int]) -> dict:
    """The pair lists of a split, {setting: rows}."""
    return {
        setting: pair_rows(captions, video_row_of, PAIR_RULES[setting])
        for setting in pair_settings(split, annotation_format)
    }
